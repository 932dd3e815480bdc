"""Shared fixtures: a tiny synthetic tree per session, and the real partial dataset when present."""

import os
import shutil
from pathlib import Path

import pytest
import torch

from covfast.dataset import DATASET_DIR
from covfast.models import AttentionUNet
from covfast.runs import write_json
from covfast.synth import write_synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVFAST_SHARED_DATA", REPO.parent / "shared" / "data" / "covid-qu-ex"))


# what the test run itself is told (the precision every test runs in, where the real data is, what CI checked);
# any other COVFAST_* setting in the shell would change the commands under test
TEST_SETTINGS = {"COVFAST_PRECISION", "COVFAST_SHARED_DATA", "COVFAST_DEMO_CHECKED", "COVFAST_REQUIRE_BROWSER"}


@pytest.fixture(autouse=True)
def no_stray_settings(monkeypatch):
    "Each test sees the packaged settings (and its own): not a COVFAST_RUNS_DIR or COVFAST_BS left in the shell."
    for name in [n for n in os.environ if n.startswith("COVFAST_") and n not in TEST_SETTINGS]:
        monkeypatch.delenv(name)


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    "A synthetic COVID-QU-Ex tree: 6 images per class and split, 64 px. Do not modify it."
    return write_synthetic(tmp_path_factory.mktemp("synth"), per_class=6, size=64, seed=3)


@pytest.fixture
def in_tmp(tmp_path, monkeypatch):
    "Commands write runs/ relative to the working directory: keep it in the test's folder."
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    "A private copy of the synthetic tree that a test may damage."
    return Path(shutil.copytree(synth_root, tmp_path / "copy"))


@pytest.fixture
def real_root() -> Path:
    "The shared partial COVID-QU-Ex copy; the test is skipped where it is absent."
    if not (SHARED_DATA / DATASET_DIR).is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA


def _fake_run(tmp_path, data_root, name, infection: bool, image_logit: float | None = None, threshold: float | None = None,
              lungs: str | None = None, inside_lungs: bool | None = None):
    """A run directory whose model predicts infection everywhere (or nowhere), whatever the image; with
    `image_logit`, an image head that gives every image that logit, and (`threshold`, `inside_lungs`) a
    calibration.json; with `lungs` ('everywhere' or 'nowhere'), a lung output that outlines those lungs. Its config.json is as old covfast versions wrote it: a run without `lungs` is a run from before the
    lung output (and without `image_logit`, from before the image head, with the pixel-evidence gate)."""
    run = tmp_path / "runs" / name
    run.mkdir(parents=True)
    head = image_logit is not None
    cfg = {"arch": "attention-unet", "features": [4, 8], "data_root": str(data_root), "img_size": 32, "bs": 4,
           "classes": ["COVID-19", "Non-COVID"], "seed": 0, "num_workers": 0, "lr": "1e-3", "epochs": 1,
           "gate_topk": 0.0 if head else 0.02, "cls_weight": 1.0 if head else 0.0, "pretrained": False, "device": "cpu"}
    if lungs:
        cfg["lung_weight"] = 1.0
    write_json(run / "config.json", cfg)
    model = AttentionUNet(3, 2, (4, 8), image_head=head, lung_head=bool(lungs))
    with torch.no_grad():
        model.head.weight.zero_()
        model.head.bias.copy_(torch.tensor([-1.0, 1.0] if infection else [1.0, -1.0]))
        if head:
            model.image_head.fc.weight.zero_()
            model.image_head.fc.bias.fill_(image_logit)
        if lungs:
            model.lung_head.weight.zero_()
            model.lung_head.bias.copy_(torch.tensor([-1.0, 1.0] if lungs != "nowhere" else [1.0, -1.0]))
    torch.save(model.state_dict(), run / "model.pth")
    if threshold is not None or inside_lungs is not None:
        write_json(run / "calibration.json", {"kind": "image_probability", "threshold": 0.5 if threshold is None else threshold,
                                              "split": "Val", "data_root": str(Path(data_root).resolve()),
                                              **({} if inside_lungs is None else {"inside_lungs": inside_lungs})})
    return run


@pytest.fixture
def fake_run():
    "`fake_run(tmp_path, data_root, name, infection, image_logit=None, threshold=None)`: see `_fake_run`."
    return _fake_run
