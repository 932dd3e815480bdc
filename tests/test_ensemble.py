"""covfast ensemble: a run made of trained runs, the mean of their probabilities, taken by every command."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from covfast.dataset import DATASET_DIR
from covfast.ensemble import make_ensemble
from covfast.inference import iter_outputs, load_run
from covfast.models import AttentionUNet
from covfast.runs import read_json, write_json

from .helpers import cli, one_line_exit_2

FP32 = {"COVFAST_PRECISION": "fp32"}  # outputs compared exactly: one precision on every CPU


def member(runs: Path, data_root, name: str, size: int, seed: int, classes=("COVID-19", "Non-COVID", "Normal"),
           **cfg) -> Path:
    "A finished run of a tiny Attention U-Net with the image head and lungs, its weights random (seeded)."
    run = runs / name
    run.mkdir(parents=True)
    write_json(run / "config.json", {"arch": "attention-unet", "features": [4, 8], "data_root": str(data_root),
                                     "img_size": size, "bs": 4, "classes": list(classes), "seed": 0, "lr": "1e-3",
                                     "epochs": 1, "cls_weight": 1.0, "lung_weight": 1.0, "pretrained": False,
                                     "device": "cpu", "status": "complete", **cfg})
    torch.manual_seed(seed)
    model = AttentionUNet(3, 2, (4, 8), image_head=True, lung_head=True)
    with torch.no_grad():  # image probabilities spread over (0, 1), so a threshold keeps some X-rays and not others
        model.image_head.fc.weight.mul_(40)
    torch.save(model.state_dict(), run / "model.pth")
    return run


@pytest.fixture
def members(synth_root, in_tmp):
    runs = in_tmp / "runs"
    return [member(runs, synth_root, "a", 32, 1), member(runs, synth_root, "b", 32, 2), member(runs, synth_root, "c", 48, 3)]


def test_its_masks_are_the_mean_of_its_members_probabilities(synth_root, members, in_tmp):
    assert cli("ensemble", "a", "b", "--name", "ab").exit_code == 0
    assert cli("calibrate", "ab", env=FP32).exit_code == 0
    threshold = read_json(in_tmp / "runs" / "ab" / "calibration.json")["threshold"]
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    assert cli("predict", "ab", images, "--out", "preds", env=FP32).exit_code == 0
    table = pd.read_csv(in_tmp / "preds" / "predictions.csv")

    # by hand: each member's own outputs (its pipeline, fp32), softmax and sigmoid, averaged; the mean goes to the
    # X-ray's size as any run's output does, and the threshold keeps or empties the X-ray
    items = pd.DataFrame({"image": sorted(images.iterdir())})
    outs = [[o for _, o, _ in iter_outputs(load_run(m, precision="fp32")[0], items)] for m in members[:2]]
    outlined = 0
    for i, path in enumerate(items.image):
        infection = torch.stack([F.softmax(o[i].infection, 1) for o in outs]).mean(0)
        p = float(torch.stack([torch.sigmoid(o[i].covid) for o in outs]).mean())
        row = table[table.file.str.endswith(path.name)].iloc[0]
        assert row.p_covid == pytest.approx(p, abs=1e-4)
        logits = F.interpolate(infection.clamp_min(1e-7).log(), size=(64, 64), mode="bilinear", align_corners=False)
        expected = (logits[0, 1] > logits[0, 0]).numpy() & (p > threshold)
        got = np.asarray(Image.open(in_tmp / "preds" / row["mask"])) > 0
        assert (got != expected).sum() == 0, path.name
        outlined += int(got.any())
    assert 0 < outlined < len(items), "the test means something only if the threshold keeps some X-rays and not others"


def test_every_command_takes_it_and_members_of_two_sizes_combine(synth_root, members, in_tmp):
    made = cli("ensemble", "a", "b", "c", "--name", "abc")
    assert made.exit_code == 0, made.output
    assert "mean of 3 runs (a, b, c), input 48 px, outputs infection, image probability, lungs" in made.output
    cfg = json.loads((in_tmp / "runs" / "abc" / "config.json").read_text())
    assert [m["name"] for m in cfg["members"]] == ["a", "b", "c"] and len(cfg["members"][2]["model_sha256"]) == 64
    assert cli("calibrate", "abc", env=FP32).exit_code == 0
    evaluated = cli("evaluate", "abc", "--split", "Test", env=FP32)
    assert evaluated.exit_code == 0, evaluated.output
    per_image = pd.read_csv(in_tmp / "runs" / "abc" / "eval" / "Test" / "per_image.csv")
    assert len(per_image) == 18 and per_image.p_covid.between(0, 1).all()
    # the image probability is the mean of the members' own (each on its own input size; the 32-px members see the
    # X-ray through the ensemble's 48-px grid, so to within the resizing)
    own = []
    for m in "abc":
        assert cli("evaluate", m, "--split", "Test", env=FP32).exit_code == 0
        own.append(pd.read_csv(in_tmp / "runs" / m / "eval" / "Test" / "per_image.csv").set_index("image").p_covid)
    mean = sum(own) / 3
    assert np.abs(per_image.set_index("image").p_covid - mean.loc[per_image.image].values).max() < 0.02
    assert cli("report", "abc", env=FP32).exit_code == 0
    assert (in_tmp / "runs" / "abc" / "report" / "index.html").is_file()
    compared = cli("compare", "abc", "a", "--out", "cmp", env=FP32)
    assert compared.exit_code == 0, compared.output
    assert "abc" in (in_tmp / "cmp" / "index.html").read_text()
    images = synth_root / DATASET_DIR / "Test" / "Normal" / "images"
    assert cli("predict", "abc", images, "--out", "p", env=FP32).exit_code == 0
    assert len(pd.read_csv(in_tmp / "p" / "predictions.csv")) == 6
    # one ONNX graph takes one input size: refused in one line naming them
    one_line_exit_2(cli("export", "abc"), "different input sizes (32 px, 48 px)", "covfast export MEMBER")


def test_an_ensemble_of_one_size_exports_one_graph_that_predicts_as_it_does(synth_root, members, in_tmp):
    pytest.importorskip("onnxruntime")
    assert cli("ensemble", "a", "b", "--name", "ab").exit_code == 0
    exported = cli("export", "ab")
    assert exported.exit_code == 0, exported.output
    sidecar = json.loads((in_tmp / "runs" / "ab" / "export" / "model.json").read_text())
    assert [m["name"] for m in sidecar["ensemble"]["members"]] == ["a", "b"]
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    assert cli("predict", "ab", images, "--out", "t", env=FP32).exit_code == 0
    assert cli("predict", "ab", images, "--out", "o", "--engine", "onnx").exit_code == 0
    for path in sorted((in_tmp / "t" / "masks").iterdir()):
        assert np.array_equal(np.asarray(Image.open(path)), np.asarray(Image.open(in_tmp / "o" / "masks" / path.name)))


def test_a_member_changed_or_gone_after_it_was_made_is_refused(synth_root, members, in_tmp):
    assert cli("ensemble", "a", "b", "--name", "ab").exit_code == 0
    assert cli("ensemble", "b", "c", "--name", "bc").exit_code == 0
    torch.save(AttentionUNet(3, 2, (4, 8), image_head=True, lung_head=True).state_dict(), members[0] / "model.pth")
    one_line_exit_2(cli("evaluate", "ab", "--split", "Test"), "ensemble ab: its member a changed since the ensemble was made")
    (members[2] / "model.pth").unlink()
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    one_line_exit_2(cli("predict", "bc", images, "--out", "p"), "ensemble bc: its member runs/c is gone")
    assert not (in_tmp / "p").exists()


def test_what_cannot_be_an_ensemble_is_refused_in_one_line(synth_root, members, in_tmp):
    one_line_exit_2(cli("ensemble", "a"), "two runs or more")
    one_line_exit_2(cli("ensemble", "a", "runs/a"), "the same run is named twice")
    member(in_tmp / "runs", synth_root, "two", 32, 4, classes=("COVID-19", "Non-COVID"))
    one_line_exit_2(cli("ensemble", "a", "two"), "members must share their classes")
    member(in_tmp / "runs", synth_root, "half", 32, 5, status="running")
    one_line_exit_2(cli("ensemble", "a", "half"), "half is not a finished run")
    assert cli("ensemble", "a", "b", "--name", "ab").exit_code == 0
    one_line_exit_2(cli("ensemble", "a", "c", "--name", "ab"), "already exists")
    one_line_exit_2(cli("ensemble", "ab", "c"), "is an ensemble itself")
    one_line_exit_2(cli("train", "ensemble"), "an ensemble is not trained", "covfast ensemble RUN RUN")
    assert not (in_tmp / "runs" / "ensemble").exists()


def test_show_results_draws_the_ensembles_predictions(synth_root, members, in_tmp):
    import matplotlib
    matplotlib.use("Agg")
    make_ensemble(["a", "b"], "ab", runs_dir="runs", say=lambda _: None)
    learn, run = load_run("ab", with_data=True, precision="fp32")
    table = learn.show_results(max_n=2)
    assert len(table) == 2 and table.p_covid.between(0, 1).all() and run.spec.arch == "ensemble"
