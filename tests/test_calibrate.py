"""covfast calibrate: the gate threshold set on Train at a chosen specificity, and used by evaluate."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from covfast.calibrate import margin_for_specificity
from covfast.cli import app
from covfast.errors import CovfastError
from covfast.metrics import gate_empty

runner = CliRunner()


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)


def test_gate_margin_raises_the_evidence_needed():
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 1] = -5.0
    logits[0, 1, :4, :4] = 3.0  # a 16-pixel blob: the top 5 pixels' mean margin is 3
    assert gate_empty(logits, 0.02, margin=2.9).argmax(1).sum() == 16
    assert gate_empty(logits, 0.02, margin=3.0).argmax(1).sum() == 0  # 'above the margin' is strict


def test_margin_for_specificity_hand_cases():
    scores = np.array([0.5, -1.0, 2.0, 3.0])  # sorted: -1, 0.5, 2, 3
    assert margin_for_specificity(scores, 0.25) == -1.0  # empties 1 of 4
    assert margin_for_specificity(scores, 0.3) == 0.5  # 1.2 images -> 2 must be emptied
    assert margin_for_specificity(scores, 0.5) == 0.5
    assert margin_for_specificity(scores, 1.0) == 3.0
    with pytest.raises(CovfastError, match="specificity"):
        margin_for_specificity(scores, 0.0)
    with pytest.raises(CovfastError, match="no images with an empty"):
        margin_for_specificity(np.array([]), 0.3)


def test_calibrate_writes_the_threshold_and_evaluate_uses_it(synth_root, tmp_path, fake_run):
    # every pixel of every image has margin logit1 - logit0 = 2, so every image's evidence is 2:
    # emptying half the empty-truth Train images needs threshold 2, which empties every image
    run = fake_run(tmp_path, synth_root, "everywhere", infection=True)
    result = runner.invoke(app, ["calibrate", "everywhere", "--specificity", "0.5"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["gate_margin"] == pytest.approx(2.0) and saved["split"] == "Train"
    assert saved["n_empty"] == 6 and saved["n_infected"] == 6
    assert saved["specificity_reached"] == 1.0 and saved["sensitivity"] == 0.0
    assert "6 empty-truth images" in result.stdout

    assert runner.invoke(app, ["evaluate", "everywhere", "--split", "Val"]).exit_code == 0
    folder = run / "eval" / "Val"
    summary = pd.read_csv(folder / "summary.csv").set_index("group")
    # without the calibration this run scores Non-COVID 0 (tests/test_evaluate.py); with it, all are empty
    assert summary.loc["Non-COVID", "dice"] == 1 and summary.loc["COVID-19", "sensitivity"] == 0
    assert json.loads((folder / "summary.json").read_text())["gate_margin"] == pytest.approx(2.0)

    again = runner.invoke(app, ["calibrate", "everywhere", "--specificity", "0.2"])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert json.loads((run / "calibration.json").read_text())["specificity"] == 0.5  # untouched
    forced = runner.invoke(app, ["calibrate", "everywhere", "--specificity", "0.2", "--force"])
    assert forced.exit_code == 0 and json.loads((run / "calibration.json").read_text())["specificity"] == 0.2


def test_report_after_calibrate_shows_the_new_thresholds_numbers(synth_root, tmp_path, fake_run):
    "Stored evaluation results are reused only while the weights, threshold and data root they came from hold."
    run = fake_run(tmp_path, synth_root, "everywhere", infection=True)
    assert runner.invoke(app, ["evaluate", "everywhere", "--split", "Val"]).exit_code == 0
    stored = json.loads((run / "eval" / "Val" / "summary.json").read_text())
    assert stored["gate_margin"] == 0.0 and len(stored["weights_sha256"]) == 64
    assert stored["data_root"] == str(synth_root.resolve())
    before = pd.read_csv(run / "eval" / "Val" / "summary.csv").set_index("group")
    assert before.loc["Non-COVID", "dice"] == 0  # uncalibrated: infection painted everywhere
    # a report now reuses the stored results: same per_image.csv, byte for byte
    csv_before = (run / "eval" / "Val" / "per_image.csv").read_bytes()
    assert runner.invoke(app, ["report", "everywhere", "--split", "Val"]).exit_code == 0
    assert (run / "eval" / "Val" / "per_image.csv").read_bytes() == csv_before

    assert runner.invoke(app, ["calibrate", "everywhere", "--specificity", "0.5"]).exit_code == 0
    result = runner.invoke(app, ["report", "everywhere", "--split", "Val"])
    assert result.exit_code == 0, result.output
    after = pd.read_csv(run / "eval" / "Val" / "summary.csv").set_index("group")
    assert after.loc["Non-COVID", "dice"] == 1 and after.loc["COVID-19", "sensitivity"] == 0
    assert json.loads((run / "eval" / "Val" / "summary.json").read_text())["gate_margin"] == pytest.approx(2.0)
    page = (run / "report" / "index.html").read_text()
    assert "2.0" in page.split("gate_margin", 1)[1][:80]  # the settings table shows the calibrated threshold
