"""One verdict per X-ray: the image head keeps an X-ray in which the segmentation outlines nothing, and every file,
page and table says the same of it: 'COVID-19 flagged, nothing outlined' (covfast.decision.FLAGGED)."""

import json
import re

import numpy as np
import pandas as pd
import pytest

from covfast.dataset import DATASET_DIR
from covfast.decision import EMPTY, FLAGGED, OUTCOMES, OUTLINED, Decision, outcome
from covfast.outputs import model_output
from tests.helpers import cli


def test_the_three_outcomes_from_what_the_decision_did():
    assert outcome(kept=True, outlined=True) == OUTLINED
    assert outcome(kept=True, outlined=False) == FLAGGED
    assert outcome(kept=False, outlined=False) == EMPTY
    assert outcome(kept=None, outlined=False) == EMPTY and outcome(kept=None, outlined=True) == OUTLINED  # no head
    # per image of a batch: p = sigmoid(2, -2, 2) against 0.5; the masks as the decision made them
    import torch
    infection = torch.zeros(3, 2, 2, 2)
    infection[0, 1] = 1.0  # image 0: every pixel infected; images 1 and 2: none
    out = model_output(infection=infection, covid=torch.tensor([2.0, -2.0, 2.0]))
    decision = Decision(threshold=0.5)
    assert decision.outcomes(out, decision.apply(out)) == [OUTLINED, EMPTY, FLAGGED]


@pytest.fixture
def flagged_run(synth_root, tmp_path, monkeypatch, fake_run):
    "The demo's Normal (45) case rebuilt: the head keeps every X-ray (p 0.881 > 0.5), no pixel beats the background."
    monkeypatch.chdir(tmp_path)
    return fake_run(tmp_path, synth_root, "flag", infection=False, image_logit=2.0, threshold=0.5, lungs="everywhere",
                    inside_lungs=False)


def test_predict_evaluate_and_report_say_the_same_of_a_kept_xray_with_nothing_outlined(synth_root, tmp_path, flagged_run):
    images = synth_root / DATASET_DIR / "Test" / "Normal" / "images"
    result = cli("predict", "flag", images, "--out", tmp_path / "pred")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "pred" / "predictions.csv")
    assert set(table.decision) == {FLAGGED} and (table.infected_pixels == 0).all()
    assert f"0 outlined ({OUTLINED}), {len(table)} {FLAGGED}, 0 left empty ({EMPTY})" in result.stdout
    # evaluate: per_image.csv's outcome, its own column in the decision table, and its rate
    result = cli("evaluate", "flag", "--split", "Test")
    assert result.exit_code == 0, result.output
    per_image = pd.read_csv(flagged_run / "eval" / "Test" / "per_image.csv")
    assert set(per_image.outcome) == {FLAGGED} and per_image.pred_empty.all()
    summary = json.loads((flagged_run / "eval" / "Test" / "summary.json").read_text())
    assert {g["group"]: g["flagged"] for g in summary["groups"]}["All"] == 1.0
    assert summary["confusion"]["Non-COVID"] == {OUTLINED: 0, FLAGGED: 6, EMPTY: 0}
    assert f"{FLAGGED}: {len(per_image)} of {len(per_image)} X-rays (1.0000)" in result.stdout
    # the report: its decision table, its case captions and its ROC dots read that same outcome
    result = cli("report", "flag", "--split", "Test")
    assert result.exit_code == 0, result.output
    page = (flagged_run / "report" / "index.html").read_text()
    decision_table = page[page.index("<h3>Decision per class</h3>"):]
    decision_table = decision_table[:decision_table.index("</table>")]
    assert all(words in decision_table for words in OUTCOMES)
    assert re.search(r"<td>Non-COVID</td>\s*<td[^>]*>0</td>\s*<td[^>]*>6</td>\s*<td[^>]*>0</td>", decision_table), decision_table
    from covfast.cases import infer_cases, report_case
    from covfast.inference import load_run
    learn, _ = load_run("flag")
    titles = [report_case(e)["title"] for e in infer_cases(learn, per_image.head(3))]
    assert all(title.endswith(f"p(COVID-19) 0.881: {FLAGGED}\nloss " + title.split("loss ")[-1]) for title in titles), titles


def test_the_roc_dots_mark_the_share_the_head_kept(tmp_path, monkeypatch):
    "Read from the outcome column: a kept X-ray with nothing outlined is still one the threshold kept."
    import matplotlib.pyplot as plt
    import covfast.figures as figures
    drawn = []
    real = plt.Axes.plot

    def record(ax, *args, **kwargs):
        if len(args) >= 3 and args[2] == "ko":
            drawn.append((args[0][0], args[1][0]))
        return real(ax, *args, **kwargs)
    monkeypatch.setattr(plt.Axes, "plot", record)
    per_image = pd.DataFrame({"class": ["COVID-19"] * 4 + ["Normal"] * 4,
                              "p_covid": [0.9, 0.8, 0.7, 0.1, 0.9, 0.2, 0.1, 0.05],
                              "outcome": [OUTLINED, OUTLINED, FLAGGED, EMPTY, FLAGGED, EMPTY, EMPTY, EMPTY]})
    figures.roc_figure(per_image, 0.5, tmp_path / "roc.png")
    assert drawn == [(0.25, 0.75)]


@pytest.mark.slow
def test_the_page_says_the_same_outcome(synth_root, tmp_path, flagged_run):
    from tests.test_serve import page_says

    _, text = page_says("flag", sorted((synth_root / DATASET_DIR / "Test" / "Normal" / "images").iterdir())[0])
    assert f"{FLAGGED}: the image head's probability 0.881 is above the run's threshold 0.5" in text
    assert "COVID-19 infection:" not in text and "Infected pixels: 0 of 4096" in text


def test_compare_counts_the_flagged_share_per_run(synth_root, tmp_path, flagged_run, fake_run):
    fake_run(tmp_path, synth_root, "kept", infection=True, image_logit=2.0, threshold=0.5, lungs="everywhere",
             inside_lungs=False)
    result = cli("compare", "flag", "kept", "--split", "Test", "--out", tmp_path / "cmp")
    assert result.exit_code == 0, result.output
    metrics = pd.read_csv(tmp_path / "cmp" / "metrics.csv", index_col=0)
    assert metrics.loc["All", "flag: flagged"] == 1.0 and metrics.loc["All", "kept: flagged"] == 0.0
    assert np.isclose(metrics.loc["All", "kept: sensitivity"], 1.0)
