"""What a user reads: the model choice an empty model cannot win, lr-find that suits the data, predict's counts
and captions, --help with values."""

import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covfast.dataset import DATASET_DIR
from covfast.metrics import SegmentationStats, model_choice_score
from tests.helpers import cli

pytestmark = pytest.mark.usefixtures("in_tmp")


def test_an_all_empty_prediction_scores_0_on_the_model_choice():
    "On a mixed batch, leaving everything empty scores 0 (the mean of class Dice gave it 0.667); outlining everything too."
    assert model_choice_score(0.0, 1.0) == 0 and model_choice_score(0.7, 0.0) == 0
    assert model_choice_score(0.6, 0.8) == pytest.approx(2 * 0.6 * 0.8 / 1.4)
    assert model_choice_score(0.6, float("nan")) == 0.6  # no empty-truth images: the COVID-19 Dice alone
    stats = SegmentationStats()
    # 2 COVID-19 images (infection missed: all FN) and 2 Non-COVID, 2 Normal (nothing predicted, nothing true)
    stats.valid_counts = [torch.tensor([[0, 0, 30], [0, 0, 12], [0, 0, 0], [0, 0, 0], [0, 0, 0], [0, 0, 0]])]
    stats.valid_labels = ["COVID-19", "COVID-19", "Non-COVID", "Non-COVID", "Normal", "Normal"]
    assert stats.dice() == pytest.approx(4 / 6) and stats.empty_left() == 1.0 and stats.score() == 0.0


@pytest.mark.slow
def test_the_done_line_says_which_epoch_model_pth_holds_and_its_covid_dice(synth_root, tmp_path):
    result = cli("train", "attention-unet", "--data", synth_root, "--size", "32", "--bs", "4", "--epochs", "1",
                 "--features", "4,8", "--lr", "3e-3", "--name", "one")
    assert result.exit_code == 0, result.output
    history = pd.read_csv(tmp_path / "runs" / "one" / "history.csv")
    lines = result.stdout.strip().splitlines()
    done = next(line for line in lines if line.startswith("Done:"))
    assert "model.pth holds epoch 1 of 1" in done
    # a model that outlines nothing yet is told so on the line after, and only then
    said = "This model outlines no COVID-19 infection yet" in lines[-1]
    assert said == (history.valid_dice_covid[0] == 0) and (lines[-1] == done) == (not said)
    assert f"valid COVID-19 Dice {history.valid_dice_covid[0]:.4f}" in done
    assert f"empty-truth images left empty {history.valid_empty_left[0]:.4f}" in done
    assert "nan" not in result.stdout.lower().replace("non", "")  # figures a run does not have read '–'
    # epochs counted from 1 in the table, as history.csv and the report count them
    rows = re.findall(r"(?:^|[\r\n])(\d+)\s+\d+\.\d{6}", result.stdout)
    assert rows == ["1"], rows


@pytest.mark.slow
def test_lr_find_tries_fastais_100_batches_and_marks_each_suggestion_where_it_is_printed(synth_root):
    from covfast.learner import learner_for_spec
    from covfast.spec import RunSpec
    from covfast.train import _lr_find

    learn, _ = learner_for_spec(RunSpec("attention-unet", data_root=str(synth_root), img_size=32, bs=4, features=(4, 8)))
    suggestions, fig = _lr_find(learn)
    # 4 mini-batches an epoch: lr_find goes on over epochs until its 100 (or until the loss diverges)
    assert len(learn.dls.train) == 4 and 50 <= len(learn.recorder.lrs) <= 100
    ax = fig.axes[0]
    labels = ax.get_legend_handles_labels()[1]
    values = suggestions._asdict()
    assert [label.split(":")[0] for label in labels] == ["valley", "slide", "minimum", "steep"]
    for label, line in zip(labels, ax.get_lines()[1:]):  # each dot at the very learning rate printed for it
        name = label.split(":")[0]
        if values[name] == values[name]:
            assert label == f"{name}: {values[name]:.2e}" and np.isclose(line.get_xdata()[0], values[name])
        else:
            assert "n/a" in label and len(line.get_xdata()) == 0
    result = cli("lr-find", "attention-unet", "--data", synth_root, "--size", "32", "--bs", "4", "--features", "4,8",
                 "--num-it", "50", "--out", "lrf")
    assert result.exit_code == 0, result.output
    assert "plot (the suggestions marked)" in result.stdout


def test_lr_find_says_when_its_valley_cannot_be_trusted():
    from types import SimpleNamespace

    from covfast.train import lr_find_doubt
    lrs = list(np.logspace(-7, 1, 100))
    losses = [2.0] * 50 + [1.0] * 25 + [3.0] * 25  # the minimum near 1e-3
    learn = SimpleNamespace(recorder=SimpleNamespace(lrs=lrs, losses=losses))
    at_min = lrs[int(np.argmin(losses[:-5]))]
    assert lr_find_doubt({"valley": at_min / 10}, learn) is None and lr_find_doubt({"valley": at_min / 500}, learn) is None
    doubt = lr_find_doubt({"valley": at_min / 10000}, learn)
    assert doubt and "not within three decades" in doubt and "--num-it" in doubt
    # the demo's data with a cap of two epochs: 12 mini-batches, too few whatever the valley
    short = SimpleNamespace(recorder=SimpleNamespace(lrs=lrs[::9][:12], losses=losses[::9][:12]))
    doubt = lr_find_doubt({"valley": 2.15e-06}, short)
    assert doubt and "tried 12 mini-batches, too few" in doubt


def test_predict_ends_with_its_counts_and_captions_its_overlays(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "h", infection=True, image_logit=1.0, threshold=0.9)  # p 0.73: every mask empty
    folder = tmp_path / "in"
    folder.mkdir()
    src = sorted((synth_root / DATASET_DIR / "Test" / "COVID-19" / "images").iterdir())[:2]
    for p in src:
        (folder / p.name).write_bytes(p.read_bytes())
    (folder / "broken.png").write_text("not an image")
    result = cli("predict", "h", folder, "--out", "p")
    assert result.exit_code == 1
    assert ("3 X-rays: 0 outlined (COVID-19 infection), 2 left empty (no COVID-19 infection), 1 could not be read. "
            "Masks, overlays and predictions.csv are in p") in result.stdout
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert table.p_covid.tolist() == [0.7311, 0.7311]  # 4 decimals
    assert (np.asarray(Image.open(tmp_path / "p" / table["mask"][0])).shape == (64, 64))  # masks at the X-ray's size
    overlay = np.asarray(Image.open(tmp_path / "p" / table.overlay[0]))
    # the 64-px X-ray enlarged 4 times (pixels as blocks) so its caption reads as lines, the caption below it
    assert overlay.shape[1] == 256 and overlay.shape[0] > 256
    assert (overlay[:256:4, :256:4] == overlay[1:256:4, 1:256:4]).all()
    band = overlay[256:]
    assert band.mean() < 60 and (band > 200).any()  # light letters on a dark band
    lines = (band.max(axis=(1, 2)) > 200)  # the caption's rows of text: a few lines, not a column of single words
    starts = np.flatnonzero(lines[1:] & ~lines[:-1])
    assert 1 <= len(starts) <= 3, len(starts)


def _train_help(folder: Path, **env: str) -> str:
    "`covfast train --help` as a user working in `folder` sees it, with no COVFAST_* settings but `env`'s; one line."
    clean = {k: v for k, v in os.environ.items() if not k.startswith("COVFAST_")}
    done = subprocess.run([sys.executable, "-m", "covfast", "train", "--help"], cwd=folder, capture_output=True,
                          text=True, env={**clean, "COLUMNS": "400", **env}, check=True)
    return " ".join(done.stdout.split())


def test_help_shows_the_values_in_force_where_it_runs(tmp_path):
    plain = _train_help(tmp_path)  # no settings.ini here: the packaged defaults
    assert "Default: 8 (settings.ini / COVFAST_BS)." in plain and "Default: 1e-3 (settings.ini / COVFAST_LR)." in plain
    assert "Default: 0.3." in plain  # --cls-weight
    assert not any(f"Default: {name}." in plain for name in ("bs", "lr", "precision"))
    assert "--fp16" not in plain  # its old name is hidden
    (tmp_path / "team").mkdir()
    (tmp_path / "team" / "settings.ini").write_text("[covfast]\nbs = 16\n")
    team = _train_help(tmp_path / "team", COVFAST_LR="3e-4")
    assert "Default: 16 (settings.ini / COVFAST_BS)." in team and "Default: 3e-4 (settings.ini / COVFAST_LR)." in team
