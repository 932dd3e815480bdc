"""evaluate on fake runs whose predictions are known: all infection, or all background."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from covfast.cli import app
from covfast.dataset import scan_tree
from covfast.inference import inference_learner
from covfast.metrics import severity_band
from covfast.spec import RunSpec

runner = CliRunner()


def truth_stats(data_root, split):
    df = scan_tree(data_root)
    df = df[(df.split == split) & df.label.isin(["COVID-19", "Non-COVID"])]
    out = []
    for row in df.itertuples():
        g = np.asarray(Image.open(row.infection_mask)) > 127
        lung = np.asarray(Image.open(row.lung_mask)) > 127
        out.append((row.label, int(g.sum()), g.size, 100.0 * (g & lung).sum() / lung.sum()))
    return out


pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write runs/ relative to the working directory


def test_all_infection_run(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "everywhere", infection=True)
    result = runner.invoke(app, ["evaluate", "everywhere", "--split", "Test"])
    assert result.exit_code == 0, result.output
    assert "Against the reference study" in result.stdout
    folder = tmp_path / "runs" / "everywhere" / "eval" / "Test"
    per_image = pd.read_csv(folder / "per_image.csv")
    summary = pd.read_csv(folder / "summary.csv").set_index("group")
    truth = truth_stats(synth_root, "Test")
    covid = [(g, n) for label, g, n, _ in truth if label == "COVID-19"]
    # P = every pixel: dice 2|G| / (N + |G|), iou |G| / N; an empty truth scores 0
    assert summary.loc["COVID-19", "dice"] == pytest.approx(np.mean([2 * g / (n + g) for g, n in covid]))
    assert summary.loc["COVID-19", "iou"] == pytest.approx(np.mean([g / n for g, n in covid]))
    assert summary.loc["COVID-19", "dice_pooled"] == pytest.approx(2 * sum(g for g, _ in covid) / sum(n + g for g, n in covid))
    assert summary.loc["Non-COVID", "dice"] == 0 and summary.loc["Non-COVID", "specificity"] == 0
    assert summary.loc["COVID-19", "sensitivity"] == 1 and summary.loc["All", "n"] == 12
    # severity: every lung pixel predicted, so 100 % of lung against the truth's share
    assert summary.loc["All", "severity_mae"] == pytest.approx(np.mean([100 - pct for *_, pct in truth]))
    assert (per_image.pred_pct_lung == 100).all() and not per_image.pred_empty.any()
    ci = summary.loc["COVID-19", ["dice_ci_low", "dice_ci_high"]]
    assert ci.iloc[0] <= summary.loc["COVID-19", "dice"] <= ci.iloc[1]
    saved = json.loads((folder / "summary.json").read_text())
    assert saved["split"] == "Test" and len(saved["reference"]) == 3


def test_all_background_run(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "nowhere", infection=False)
    result = runner.invoke(app, ["evaluate", str(tmp_path / "runs" / "nowhere"), "--split", "val"])
    assert result.exit_code == 0, result.output
    summary = pd.read_csv(tmp_path / "runs" / "nowhere" / "eval" / "Val" / "summary.csv").set_index("group")
    assert summary.loc["COVID-19", "dice"] == 0 and summary.loc["Non-COVID", "dice"] == 1
    assert summary.loc["All", "dice"] == 0.5 and summary.loc["All", "sensitivity"] == 0
    assert summary.loc["All", "specificity"] == 1


def test_severity_bands():
    assert severity_band([0, 0.1, 24.9, 25, 50, 74.9, 75, 100]).tolist() == [0, 1, 1, 2, 3, 3, 4, 4]


def test_unknown_run_and_split(synth_root, tmp_path, fake_run):
    missing = runner.invoke(app, ["evaluate", "nope"])
    assert missing.exit_code == 2 and "no run directory 'nope'" in missing.stderr
    fake_run(tmp_path, synth_root, "r", infection=True)
    bad = runner.invoke(app, ["evaluate", "r", "--split", "Tset"])
    assert bad.exit_code == 2 and "Tset" in bad.stderr


def test_inference_learner_needs_no_data(tmp_path):
    "Evaluate/report/predict build their learner from config.json alone, for DynamicUnet runs too."
    spec = RunSpec("resnet18", data_root=str(tmp_path / "absent"), img_size=32, bs=4, classes=("COVID-19", "Non-COVID"),
                   pretrained=False)
    learn = inference_learner(spec, device="cpu")
    xb, yb = learn.dls.one_batch()
    assert xb.shape[1:] == (3, 32, 32)
    assert learn.model.eval()(xb).infection.shape[1:] == (2, 32, 32)
