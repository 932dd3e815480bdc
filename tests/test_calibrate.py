"""covfast calibrate: the gate threshold set on Train at a chosen specificity, and used by evaluate."""

import json

import numpy as np
import pandas as pd
import pytest
import torch
from typer.testing import CliRunner

from covfast.calibrate import operating_points, threshold_for_sensitivity, threshold_for_specificity
from covfast import __version__
from covfast.cli import app
from covfast.errors import CovfastError
from covfast.decision import Decision
from covfast.outputs import model_output

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write runs/ relative to the working directory


def test_gate_margin_raises_the_evidence_needed():
    logits = torch.zeros(1, 2, 16, 16)
    logits[:, 1] = -5.0
    logits[0, 1, :4, :4] = 3.0  # a 16-pixel blob: the top 5 pixels' mean margin is 3
    out = model_output(infection=logits)
    assert Decision(gate_topk=0.02, gate_margin=2.9).apply(out).sum() == 16
    assert Decision(gate_topk=0.02, gate_margin=3.0).apply(out).sum() == 0  # 'above the margin' is strict


def test_threshold_for_specificity_hand_cases():
    scores = np.array([0.5, -1.0, 2.0, 3.0])  # sorted: -1, 0.5, 2, 3
    assert threshold_for_specificity(scores, 0.25) == -1.0  # empties 1 of 4
    assert threshold_for_specificity(scores, 0.3) == 0.5  # 1.2 images -> 2 must be emptied
    assert threshold_for_specificity(scores, 0.5) == 0.5
    assert threshold_for_specificity(scores, 1.0) == 3.0
    with pytest.raises(CovfastError, match="specificity"):
        threshold_for_specificity(scores, 0.0)
    with pytest.raises(CovfastError, match="no images with an empty"):
        threshold_for_specificity(np.array([]), 0.3)


def test_threshold_for_sensitivity_hand_cases():
    scores = np.array([0.9, 0.2, 0.6, 0.6, 0.4])  # descending: 0.9, 0.6, 0.6, 0.4, 0.2
    for sensitivity, kept in [(0.2, 1), (0.3, 3), (0.6, 3), (0.8, 4), (1.0, 5)]:
        t = threshold_for_sensitivity(scores, sensitivity)
        assert (scores > t).sum() == kept  # ties at the cut are kept together
        assert t < np.sort(scores)[::-1][kept - 1] and (kept == 5 or t >= np.sort(scores)[::-1][kept])
    with pytest.raises(CovfastError, match="no COVID-19 images"):
        threshold_for_sensitivity(np.array([]), 0.9)


def test_operating_points_hand_case():
    "Each target sensitivity's threshold and the share of each empty-truth class it leaves empty."
    infected_scores = np.arange(1, 11) / 10  # 0.1 .. 1.0
    empty_scores = np.array([0.05, 0.15, 0.5, 0.01, 0.02, 0.3])
    scores = np.concatenate([infected_scores, empty_scores])
    labels = np.array(["COVID-19"] * 10 + ["Non-COVID"] * 3 + ["Normal"] * 3)
    infected = labels == "COVID-19"
    at_90, at_95 = operating_points(scores, labels, infected, (0.90, 0.95))
    # 0.90 of 10 keeps 9: the threshold sits just below 0.2, emptying 0.05 and 0.15, 0.01 and 0.02
    assert 0.19 < at_90["threshold"] < 0.2 and at_90["sensitivity"] == 0.9
    assert at_90["left_empty"] == {"Non-COVID": 2 / 3, "Normal": 2 / 3} and at_90["empty_truth_left_empty"] == 4 / 6
    # 0.95 of 10 needs all 10: just below 0.1, so only 0.05 of Non-COVID and both low Normal scores
    assert 0.09 < at_95["threshold"] < 0.1 and at_95["sensitivity"] == 1.0
    assert at_95["left_empty"] == {"Non-COVID": 1 / 3, "Normal": 2 / 3} and at_95["empty_truth_left_empty"] == 0.5


def test_calibrate_picks_the_threshold_hand_made_scores_say(synth_root, tmp_path, fake_run, monkeypatch):
    "On Val, with the image head's scores replaced by hand-made ones: the threshold and what it reaches."
    import covfast.calibrate as calibrate_mod
    run = fake_run(tmp_path, synth_root, "head", infection=True, image_logit=0.0)
    # Val: 6 COVID-19 then 6 Non-COVID images (scan order); hand-made probabilities
    hand = np.array([0.9, 0.8, 0.7, 0.6, 0.3, 0.95, 0.1, 0.2, 0.4, 0.5, 0.65, 0.05])
    seen = {}

    def fake_scores(learn, items, bs=None, progress=None):
        seen["labels"] = items.label.tolist()
        return hand, "image_probability"
    monkeypatch.setattr(calibrate_mod, "image_scores", fake_scores)
    result = runner.invoke(app, ["calibrate", "head", "--specificity", "0.8"])
    assert result.exit_code == 0, result.output
    assert seen["labels"] == ["COVID-19"] * 6 + ["Non-COVID"] * 6
    saved = json.loads((run / "calibration.json").read_text())
    # empty-truth scores sorted: .05 .1 .2 .4 .5 .65; 80% of 6 -> 5 emptied -> threshold 0.5
    assert saved["threshold"] == 0.5 and saved["split"] == "Val" and saved["kind"] == "image_probability"
    assert saved["specificity_reached"] == pytest.approx(5 / 6) and saved["sensitivity"] == pytest.approx(5 / 6)
    # the trade-off beside it: every listed sensitivity (0.90 and up) of 6 images keeps all 6, so the
    # threshold sits just below 0.3 and leaves the 3 Non-COVID scores under it empty
    points = saved["operating_points"]
    assert [p["target_sensitivity"] for p in points] == [0.90, 0.95, 0.98, 0.99]
    assert all(0.29 < p["threshold"] < 0.3 and p["left_empty"] == {"Non-COVID": 0.5} for p in points)
    assert "Other operating points on Val" in result.stdout and "Non-COVID left empty" in result.stdout
    forced = runner.invoke(app, ["calibrate", "head", "--sensitivity", "1.0", "--force"])
    assert forced.exit_code == 0, forced.output
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["threshold"] < 0.3 and saved["sensitivity"] == 1.0 and saved["specificity_reached"] == pytest.approx(3 / 6)
    both = runner.invoke(app, ["calibrate", "head", "--sensitivity", "0.9", "--specificity", "0.9", "--force"])
    assert both.exit_code == 2 and "one target" in both.stderr


@pytest.mark.slow
def test_calibrate_writes_the_threshold_and_evaluate_uses_it(synth_root, tmp_path, fake_run):
    # every pixel of every image has margin logit1 - logit0 = 2, so every image's evidence is 2:
    # emptying half the empty-truth Train images needs threshold 2, which empties every image
    run = fake_run(tmp_path, synth_root, "everywhere", infection=True)
    result = runner.invoke(app, ["calibrate", "everywhere", "--specificity", "0.5"])
    assert result.exit_code == 0, result.output
    saved = json.loads((run / "calibration.json").read_text())
    assert saved["gate_margin"] == pytest.approx(2.0) and saved["split"] == "Val"
    assert saved["n_empty"] == 6 and saved["n_infected"] == 6
    assert saved["specificity_reached"] == 1.0 and saved["sensitivity"] == 0.0
    assert "6 empty-truth images" in result.stdout

    # the split the threshold was chosen on is refused (its scores flatter the run), unless asked for
    refused = runner.invoke(app, ["evaluate", "everywhere", "--split", "Val"])
    assert refused.exit_code == 2 and "calibrated on Val" in refused.stderr and "--allow-calibration-split" in refused.stderr
    assert runner.invoke(app, ["evaluate", "everywhere", "--split", "Val", "--allow-calibration-split"]).exit_code == 0
    assert runner.invoke(app, ["evaluate", "everywhere", "--split", "Test"]).exit_code == 0
    folder = run / "eval" / "Test"
    summary = pd.read_csv(folder / "summary.csv").set_index("group")
    # without the calibration this run scores Non-COVID 0 (tests/test_evaluate.py); with it, all are empty
    assert summary.loc["Non-COVID", "dice"] == 1 and summary.loc["COVID-19", "sensitivity"] == 0
    assert json.loads((folder / "summary.json").read_text())["gate_margin"] == pytest.approx(2.0)

    again = runner.invoke(app, ["calibrate", "everywhere", "--specificity", "0.2"])
    assert again.exit_code == 2 and "--force" in again.stderr
    assert json.loads((run / "calibration.json").read_text())["target_value"] == 0.5  # untouched
    forced = runner.invoke(app, ["calibrate", "everywhere", "--specificity", "0.2", "--force"])
    assert forced.exit_code == 0 and json.loads((run / "calibration.json").read_text())["target_value"] == 0.2


@pytest.mark.slow
def test_report_after_calibrate_shows_the_new_thresholds_numbers(synth_root, tmp_path, fake_run):
    "Stored evaluation results are reused only while the weights, threshold and data root they came from hold."
    run = fake_run(tmp_path, synth_root, "everywhere", infection=True)
    assert runner.invoke(app, ["evaluate", "everywhere", "--split", "Test"]).exit_code == 0
    stored = json.loads((run / "eval" / "Test" / "summary.json").read_text())
    assert stored["gate_margin"] == 0.0 and len(stored["weights_sha256"]) == 64
    # the data root in one form (the folder holding the splits), and what else the numbers depend on
    assert stored["data_root"] == str((synth_root / "Infection Segmentation Data").resolve())
    assert stored["img_size"] == 32 and stored["covfast_version"] == __version__
    before = pd.read_csv(run / "eval" / "Test" / "summary.csv").set_index("group")
    assert before.loc["Non-COVID", "dice"] == 0  # uncalibrated: infection painted everywhere
    # a report now reuses the stored results: same per_image.csv, byte for byte
    csv_before = (run / "eval" / "Test" / "per_image.csv").read_bytes()
    assert runner.invoke(app, ["report", "everywhere", "--split", "Test"]).exit_code == 0
    assert (run / "eval" / "Test" / "per_image.csv").read_bytes() == csv_before

    assert runner.invoke(app, ["calibrate", "everywhere", "--specificity", "0.5"]).exit_code == 0
    result = runner.invoke(app, ["report", "everywhere", "--split", "Test"])
    assert result.exit_code == 0, result.output
    after = pd.read_csv(run / "eval" / "Test" / "summary.csv").set_index("group")
    assert after.loc["Non-COVID", "dice"] == 1 and after.loc["COVID-19", "sensitivity"] == 0
    assert json.loads((run / "eval" / "Test" / "summary.json").read_text())["gate_margin"] == pytest.approx(2.0)
    page = (run / "report" / "index.html").read_text()
    assert "<td>2</td>" in page.split("gate_margin", 1)[1][:80]  # the settings table shows the calibrated threshold


@pytest.mark.parametrize("value", ["NaN", "5", "-1", "[]", "{}", '"abc"', "true"])
def test_a_calibration_file_with_a_bad_threshold_is_refused_in_one_line(synth_root, tmp_path, fake_run, value):
    "A threshold that is not a finite probability would empty every image, or none: one line naming the file, exit 2."
    run = fake_run(tmp_path, synth_root, "h", infection=True, image_logit=1.0, threshold=0.5)
    path = run / "calibration.json"
    path.write_text(path.read_text().replace('"threshold": 0.5', f'"threshold": {value}'))
    for args in (["evaluate", "h", "--split", "Test"], ["predict", "h", str(synth_root / "Infection Segmentation Data" / "Test")]):
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (value, result.output)
        line = result.stderr.strip()
        assert len(line.splitlines()) == 1 and "calibration.json" in line and "covfast calibrate h --force" in line
