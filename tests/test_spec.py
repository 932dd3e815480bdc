"""One run spec: lr-find builds the model train fits, --resume refuses every changed setting, old runs still load."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest
import torch

import covfast.train as train_mod
from covfast.config import Config
from covfast.errors import CovfastError
from covfast.learner import build_model
from covfast.runs import load_model_weights, read_json, read_run
from covfast.spec import FLAGS, RunSpec
from tests.helpers import cli, train
from tests.test_train import InterruptAfter

OLD_RUNS = Path(__file__).parent / "data" / "old-runs"
TINY = ["--size", "32", "--bs", "4", "--no-pretrained"]



pytestmark = pytest.mark.usefixtures("in_tmp")


class _Built(Exception):
    "Stops a command once its learner is built."


@pytest.mark.parametrize("flags", [[], ["--cls-weight", "0"], ["--cls-weight", "1.5", "--dice-weight", "3"],
                                   ["--features", "4,8,16"], ["--no-augment", "--precision", "fp32", "--lung-weight", "0"]])
@pytest.mark.slow
@pytest.mark.parametrize("arch", ["attention-unet", "resnet18"])
def test_lr_find_and_train_build_the_same_model_from_the_same_flags(synth_root, monkeypatch, arch, flags):
    if arch != "attention-unet" and "--features" in flags:
        pytest.skip("--features is attention-unet's")
    built = []
    real = train_mod.learner_for_spec

    def record(spec, **kwargs):
        learn, status = real(spec, **kwargs)
        layout = [(n, tuple(p.shape)) for n, p in learn.model.named_parameters()]
        built.append((layout, learn.loss_func.spec, [type(t).__name__ for t in learn.dls.train.after_batch.fs]))
        raise _Built
    monkeypatch.setattr(train_mod, "learner_for_spec", record)
    cli("train", arch, "--data", synth_root, *TINY, "--lr", "3e-3", "--epochs", "2", *flags)
    cli("lr-find", arch, "--data", synth_root, *TINY, *flags)
    assert len(built) == 2
    (train_layout, train_spec, train_tfms), (find_layout, find_spec, find_tfms) = built
    assert train_layout == find_layout and train_tfms == find_tfms
    # the loss too: lr_find searches the loss train fits (with the image head's term when train has it)
    assert train_spec.cls_weight == find_spec.cls_weight and train_spec.dice_weight == find_spec.dice_weight
    assert train_spec.lung_weight == find_spec.lung_weight
    given = dict(zip(flags, flags[1:]))
    assert any(n.startswith("image_head") for n, _ in train_layout) == (given.get("--cls-weight") != "0")
    if arch == "attention-unet":
        assert any(n.startswith("lung_head") for n, _ in train_layout) == (given.get("--lung-weight") != "0")


@pytest.fixture(scope="module")
def interrupted(tmp_path_factory, synth_root):
    "A run interrupted after epoch 1 of 2 (attention-unet 4,8 at 32 px, seed 42), under runs/ of its own folder."
    folder = tmp_path_factory.mktemp("resume")
    config = Config(img_size=32, bs=4, epochs=2, lr="3e-3", runs_dir=str(folder / "runs"))
    with pytest.raises(KeyboardInterrupt):
        train("attention-unet", synth_root, config, name="cut", cbs=[InterruptAfter(1)], features=(4, 8))
    return folder


# every RunSpec setting a flag can set, with a value the interrupted run was not trained with
CHANGED = {"data_root": ["--data", "/elsewhere/covidqu"], "img_size": ["--size", "48"], "bs": ["--bs", "2"],
           "epochs": ["--epochs", "5"], "lr": ["--lr", "1e-2"], "classes": ["--classes", "COVID-19,Non-COVID"],
           "seed": ["--seed", "7"], "precision": ["--precision", "bf16"], "pretrained": ["--no-pretrained"],
           "features": ["--features", "4,8,16"], "dice_weight": ["--dice-weight", "9"], "cls_weight": ["--cls-weight", "5"], "lung_weight": ["--lung-weight", "2"],
           "augment": ["--no-augment"], "keep_checkpoint": ["--keep-checkpoint"]}


def test_every_flag_of_the_spec_is_checked_on_resume():
    assert set(CHANGED) == set(FLAGS) - {"arch"}


@pytest.mark.parametrize("field", sorted(CHANGED))
def test_resume_refuses_each_changed_setting_naming_it(interrupted, monkeypatch, field):
    monkeypatch.chdir(interrupted)
    run = interrupted / "runs" / "cut"
    before = {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()}
    result = cli("train", "attention-unet", "--resume", "cut", *CHANGED[field])
    assert result.exit_code == 2, result.output
    line = result.stderr.strip()
    assert len(line.splitlines()) == 1 and CHANGED[field][0] in line and "own settings" in line
    assert {p.name: p.read_bytes() for p in run.iterdir() if p.is_file()} == before  # nothing written


@pytest.mark.slow
def test_resume_with_the_runs_own_values_and_the_retired_ones(interrupted, synth_root, monkeypatch):
    monkeypatch.chdir(interrupted)
    named = cli("train", "attention-unet", "--resume", "cut", "--name", "other")
    assert named.exit_code == 2 and "--name" in named.stderr
    wrong = cli("train", "resnet34", "--resume", "cut")
    assert wrong.exit_code == 2 and "trained attention-unet, not resnet34" in wrong.stderr
    # the same values as the run's own are no change: the run continues
    same = cli("train", "attention-unet", "--resume", "cut", "--epochs", "2", "--size", "32", "--features", "4,8",
               "--data", synth_root / "Infection Segmentation Data")
    assert same.exit_code == 0, same.output
    assert pd.read_csv(interrupted / "runs" / "cut" / "history.csv").epoch.tolist() == [1, 2]


def test_contradictory_precision_flags_are_refused(synth_root):
    result = cli("train", "attention-unet", "--data", synth_root, "--precision", "bf16", "--no-fp16")
    assert result.exit_code == 2 and "--no-fp16" in result.stderr and "--precision" in result.stderr


def test_the_spec_round_trips_through_config_json():
    spec = RunSpec("attention-unet", data_root="/d", img_size=64, classes="COVID-19,Normal", features="4,8", lr=3e-3,
                   pretrained=False, precision="fp32", cls_weight=0.5)
    assert spec.features == (4, 8) and spec.classes == ("COVID-19", "Normal") and spec.lr == "0.003"
    stored = json.loads(json.dumps(spec.to_json()))
    # what the run was asked for sits beside what it got (config.json's "pretrained" and "precision")
    assert stored["pretrained_requested"] is False and stored["precision_requested"] == "fp32"
    assert RunSpec.from_json(stored) == spec
    assert RunSpec("resnet34").features is None and RunSpec("attention-unet").features == (16, 32, 64, 128, 256)


@pytest.mark.parametrize("field, value, words", [
    ("img_size", "abc", "img_size 'abc' is not an integer"), ("bs", 0, "bs 0 must be an integer >= 1"),
    ("classes", 3, "classes 3 is not a list"), ("cls_weight", float("nan"), "cls_weight nan must be a finite number"),
    ("pretrained_requested", "yes", "pretrained 'yes' is not true or false"), ("seed", 10**20, "<= 4294967295"),
    ("features", [[4]], "two or more positive integers"), ("arch", "vgg", "unknown architecture"),
])
def test_a_malformed_config_json_is_one_line_naming_the_file_and_field(field, value, words):
    cfg = {**RunSpec("attention-unet").to_json(), field: value}
    with pytest.raises(CovfastError, match="config.json") as e:
        RunSpec.from_json(cfg, "runs/r/config.json")
    assert words in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(CovfastError, match="lacks arch"):
        RunSpec.from_json({"img_size": 3})
    with pytest.raises(CovfastError, match="holds list"):
        RunSpec.from_json([1, 2], "runs/r/config.json")


def _old_run(tmp_path, name) -> Path:
    return Path(shutil.copytree(OLD_RUNS / name, tmp_path / "runs" / name))


def _expected_decisions(then: pd.DataFrame, now: pd.DataFrame) -> pd.Series:
    """The fixtures' 'decision' column in today's words: a run without the head wrote none, and its verdict now is
    the outline's (COVID-19 infection) or, with nothing outlined, the gate's (covfast.decision.OUTCOMES)."""
    from covfast.decision import EMPTY, FLAGGED, OUTLINED
    said = then.decision.astype(object).copy()
    unsaid = said.isna()
    said[unsaid & (then.infected_pixels > 0)] = OUTLINED
    said[unsaid & (then.infected_pixels == 0)] = now.decision[unsaid & (then.infected_pixels == 0)]
    assert said[unsaid & (then.infected_pixels == 0)].isin([FLAGGED, EMPTY]).all()
    return said


@pytest.mark.parametrize("name", ["head-run", "gate-run"])
def test_a_run_written_before_the_run_spec_still_evaluates_and_predicts_the_same(synth_root, tmp_path, monkeypatch, name):
    """Runs made by the covfast before named outputs and the run spec (checked in under tests/data: an image-head
    run, and a pixel-evidence-gate run with the retired loss term) give the per-image table and the predictions
    they gave then, on the same synthetic tree, to the last digit: in fp32, the precision they were recorded in
    (bf16 is another arithmetic; the test below bounds what it changes)."""
    monkeypatch.setenv("COVFAST_PRECISION", "fp32")
    run = _old_run(tmp_path, name)
    spec, _ = read_run(run)
    assert spec.cls_weight == (0.3 if name == "head-run" else 0.0) and spec.gate_topk == (0.0 if name == "head-run" else 0.02)
    result = cli("evaluate", name, "--split", "Test", "--data", synth_root)
    assert result.exit_code == 0, result.output
    now, then = pd.read_csv(run / "eval" / "Test" / "per_image.csv"), pd.read_csv(run / "expected_per_image.csv")
    # the same images, masks, probabilities and severity; the retired loss term no longer adds to the gate run's loss
    same = [c for c in then.columns if c not in ("image", "loss")]
    pd.testing.assert_frame_equal(now[same], then[same], check_exact=True)
    if name == "head-run":  # a mean over pixels: its summation order follows the CPU's vector width (1 ulp seen: 1.2e-7)
        assert (now.loss - then.loss).abs().max() <= 1e-6
    monkeypatch.chdir(synth_root)  # the expected table names the files as given, relative to the tree
    images = Path("Infection Segmentation Data") / "Test"
    result = cli("predict", run, images / "COVID-19" / "images", images / "Normal" / "images", "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    # the same values in every column it had (infection % of lung is now infection_pct_of_lung; a run without the
    # lung output, given no lung masks, still has none), written to 4 decimals now
    now = pd.read_csv(tmp_path / "pred" / "predictions.csv").rename(columns={"infection_pct_of_lung": "infection_pct_lung"})
    then = pd.read_csv(run / "expected_predictions.csv").round({"p_covid": 4, "infection_pct_image": 4, "infection_pct_lung": 4})
    then["decision"] = _expected_decisions(then, now).astype(now.decision.dtype)
    pd.testing.assert_frame_equal(now[then.columns], then, check_exact=True)
    assert "has no lung output" in result.stdout
    if name == "gate-run":  # trained with the retired pixel-evidence loss term: it cannot be resumed
        refused = cli("train", "attention-unet", "--resume", run)
        assert refused.exit_code == 2 and "empty_weight=0.5" in refused.stderr and "cannot be resumed" in refused.stderr


# What bf16 autocast may change in the old runs' fp32 figures on these Test images; measured on a CPU with native
# bf16 (AVX512-BF16): p(COVID-19) moved by up to 1.95e-4, the Dice of an image whose decision stayed by up to 3.4e-4;
# a decision flips only where the fp32 score lies that close to the threshold (the head run: 1 of 18 images, its p
# 4e-5 from the threshold; the gate run, whose tiny logits sit near their ties: 4 of 12)
BF16_BOUNDS = {"p_covid": 1e-3, "dice_same_decision": 2e-3, "gate_run_flips": 4}


@pytest.mark.parametrize("name", ["head-run", "gate-run"])
def test_the_old_runs_in_bf16_stay_within_the_measured_bounds_of_their_fp32_figures(synth_root, tmp_path, monkeypatch, name):
    "The same old runs scored in bf16 (emulated where the CPU lacks it) differ from their fp32 figures no more than measured."
    monkeypatch.setenv("COVFAST_PRECISION", "bf16")
    run = _old_run(tmp_path, name)
    result = cli("evaluate", name, "--split", "Test", "--data", synth_root)
    assert result.exit_code == 0, result.output
    stored = read_json(run / "eval" / "Test" / "summary.json")
    assert stored["precision"] == "bf16"
    now, then = pd.read_csv(run / "eval" / "Test" / "per_image.csv"), pd.read_csv(run / "expected_per_image.csv")
    assert list(now.file) == list(then.file)
    same = now.pred_empty == then.pred_empty
    assert (now.dice - then.dice)[same].abs().max() <= BF16_BOUNDS["dice_same_decision"]
    if name == "head-run":
        assert (now.p_covid - then.p_covid).abs().max() <= BF16_BOUNDS["p_covid"]
        # an image may change sides only when its fp32 probability is within that bound of the threshold
        assert ((then.p_covid[~same] - stored["threshold"]).abs() <= BF16_BOUNDS["p_covid"]).all()
    else:
        assert (~same).sum() <= BF16_BOUNDS["gate_run_flips"]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "timm/resnet18", "attention-unet"])
@pytest.mark.parametrize("head", [False, True])
def test_weights_saved_by_the_model_before_named_outputs_load(arch, head):
    "Every state_dict layout of the models before named outputs (tests/data) loads into today's model of the same spec."
    old = json.loads((OLD_RUNS / "state_dict_layouts.json").read_text())[f"{arch} head={head}"]
    spec = RunSpec(arch, img_size=32, features=(4, 8) if arch == "attention-unet" else None, cls_weight=0.3 if head else 0,
                   lung_weight=0)
    model = build_model(spec)
    state = {k: torch.zeros(shape) for k, shape in old.items()}
    load_model_weights(model, state, "old/model.pth")  # raises if a key or a shape does not fit
    assert sum(p.numel() for p in model.state_dict().values()) == sum(t.numel() for t in state.values())
