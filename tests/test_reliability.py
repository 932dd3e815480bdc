"""Nothing silently wrong, nothing lost: diverged runs, one writer per run, crash-safe resume, checks before
training, and one clear line (exit 2) for every bad input."""

import json
import os
import signal
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covfast.config import Config
from covfast.dataset import DATASET_DIR
from covfast.runs import load_weights, read_json
from tests.helpers import cli, one_line_exit_2, train

TINY = ["--size", "32", "--bs", "4", "--features", "4,8", "--lr", "3e-3"]


pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write runs/ relative to the working directory


@pytest.mark.slow
def test_a_diverged_run_stops_says_so_and_keeps_no_nan_weights(synth_root, tmp_path):
    result = cli("train", "attention-unet", "--data", synth_root, "--size", 32, "--bs", 4, "--epochs", 2,
                 "--lr", "1e9", "--name", "nan")
    one_line_exit_2(result, "diverged", "lower --lr")
    run = tmp_path / "runs" / "nan"
    cfg = read_json(run / "config.json")
    assert cfg["status"] == "diverged" and cfg["diverged_epoch"] == 1
    if (run / "model.pth").exists():  # only ever the last finite best weights
        assert all(torch.isfinite(t).all() for t in load_weights(run / "model.pth").values() if t.is_floating_point())
    one_line_exit_2(cli("train", "attention-unet", "--data", synth_root, "--lr", "inf"), "inf", "finite")


def test_weights_with_nan_are_refused_by_evaluate_and_predict(synth_root, tmp_path, fake_run):
    run = fake_run(tmp_path, synth_root, "bad", infection=True)
    weights = torch.load(run / "model.pth", weights_only=True)
    weights["head.bias"][0] = float("nan")
    torch.save(weights, run / "model.pth")
    one_line_exit_2(cli("evaluate", "bad", "--split", "Test"), "non-finite", "model.pth")
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    one_line_exit_2(cli("predict", "bad", images), "non-finite")


HOLD_LOCK = """
import sys, time
from covfast.runs import RunLock
RunLock(sys.argv[1]).acquire()
print("held", flush=True)
time.sleep(60)
"""


@pytest.mark.slow
def test_one_writer_per_run_directory(synth_root, tmp_path):
    run = train("attention-unet", synth_root, Config(img_size=32, bs=4, epochs=2, lr="3e-3", runs_dir="runs"),
                name="r", features=(4, 8), keep_checkpoint=True)
    cfg = read_json(run / "config.json")
    write = cfg | {"epochs": 3}  # one epoch left to resume
    (run / "config.json").write_text(json.dumps(write))
    holder = subprocess.Popen([sys.executable, "-c", HOLD_LOCK, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        before = (run / "history.csv").read_bytes()
        one_line_exit_2(cli("train", "attention-unet", "--resume", "r"), f"process {holder.pid}")
        assert (run / "history.csv").read_bytes() == before  # nothing written by the refused writer
    finally:
        holder.kill()  # SIGKILL: the OS releases the lock, no stale lock file blocks the run
        holder.wait()
    result = cli("train", "attention-unet", "--resume", "r")
    assert result.exit_code == 0, result.output
    assert pd.read_csv(run / "history.csv").epoch.tolist() == [1, 2, 3]


KILL_AT_BOUNDARY = """
import os, signal, sys
import covfast.callbacks as cb
from covfast.spec import RunSpec
from covfast.train import train
calls = []
real = cb.write_history
def write_history(run_dir, history):
    calls.append(1)
    if len(calls) == 2:  # checkpoint.pth of epoch 2 is on disk; its history row is not
        os.kill(os.getpid(), signal.SIGKILL)
    real(run_dir, history)
cb.write_history = write_history
train(RunSpec("attention-unet", data_root=sys.argv[1], img_size=32, bs=4, epochs=3, lr="3e-3", features=(4, 8)),
      name="k", runs_dir="runs")
"""


@pytest.mark.slow
def test_a_kill_between_checkpoint_and_history_still_resumes_to_the_uninterrupted_run(synth_root, tmp_path):
    "SIGKILL right after checkpoint.pth of epoch 2 is replaced, before history.csv: resume continues, bit for bit."
    killed = subprocess.run([sys.executable, "-c", KILL_AT_BOUNDARY, str(synth_root)], capture_output=True, text=True)
    assert killed.returncode == -signal.SIGKILL
    run = tmp_path / "runs" / "k"
    assert pd.read_csv(run / "history.csv").epoch.tolist() == [1]  # the csv is one epoch behind the checkpoint
    result = cli("train", "attention-unet", "--resume", "k")
    assert result.exit_code == 0, result.output
    assert "after epoch 2 of 3" in result.stdout
    resumed = pd.read_csv(run / "history.csv")
    full = train("attention-unet", synth_root, Config(img_size=32, bs=4, epochs=3, lr="3e-3", runs_dir="runs"),
                 name="full", features=(4, 8))
    uninterrupted = pd.read_csv(full / "history.csv")
    assert resumed.epoch.tolist() == [1, 2, 3]
    cols = ["train_loss", "valid_loss", "train_dice", "valid_dice_mean", "lr"]
    assert resumed[cols].to_numpy().tolist() == uninterrupted[cols].to_numpy().tolist()  # float equality


@pytest.mark.slow
def test_resume_refuses_settings_it_cannot_change(synth_root, tmp_path):
    from tests.test_train import InterruptAfter  # noqa: F401 (a tiny interrupted run)
    with pytest.raises(KeyboardInterrupt):
        train("attention-unet", synth_root, Config(img_size=32, bs=4, epochs=2, lr="3e-3", runs_dir="runs"),
              name="i", features=(4, 8), cbs=[InterruptAfter(1)])
    one_line_exit_2(cli("train", "attention-unet", "--resume", "i", "--epochs", "5", "--lr", "1e-2"),
                    "--epochs 5 (the run has 2)", "--lr 1e-2 (the run has 3e-3)", "own settings")


def test_training_checks_its_data_before_the_first_batch(synth_copy, tmp_path):
    bad = sorted((synth_copy / DATASET_DIR / "Val" / "Normal" / "images").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:100])  # truncated
    result = cli("train", "attention-unet", "--data", synth_copy, *TINY, "--epochs", "1", "--name", "t")
    assert result.exit_code == 2 and str(bad) in result.stderr and "covfast data check" in result.stderr
    assert not (tmp_path / "runs" / "t").exists()  # no orphan run directory blocking the name


@pytest.mark.parametrize("damage", ["mask_size", "empty_covid_mask", "text_png"])
def test_training_refuses_what_data_check_refuses(synth_copy, damage):
    folder = synth_copy / DATASET_DIR / "Train" / "COVID-19"
    name = sorted((folder / "images").iterdir())[0].name
    if damage == "mask_size":
        Image.fromarray(np.zeros((48, 48), np.uint8)).save(folder / "lung masks" / name)
    elif damage == "empty_covid_mask":
        Image.fromarray(np.zeros((64, 64), np.uint8)).save(folder / "infection masks" / name)
    else:
        (folder / "images" / name).write_text("not an image")
    result = cli("train", "attention-unet", "--data", synth_copy, *TINY, "--epochs", "1")
    assert result.exit_code == 2 and name in result.stderr, result.output


def test_a_batch_larger_than_the_training_set_is_refused(synth_root):
    one_line_exit_2(cli("train", "attention-unet", "--data", synth_root, "--bs", 100, "--size", 32),
                    "--bs 100", "18 training images")


def test_predict_goes_on_past_bad_lung_masks(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "everywhere", infection=True)
    images = sorted((synth_root / DATASET_DIR / "Test" / "COVID-19" / "images").iterdir())[:3]
    lungs = tmp_path / "lungs"
    lungs.mkdir()
    a = np.zeros((64, 64), np.uint8)
    a[0, 0] = 128
    Image.fromarray(a).save(lungs / images[0].name)  # not 0/255
    (lungs / images[1].name).write_text("not a mask")  # not an image
    Image.fromarray(np.full((64, 64), 255, np.uint8)).save(lungs / images[2].name)  # fine
    result = cli("predict", "everywhere", *images, "--out", "p", "--lung-masks", lungs)
    assert result.exit_code == 1, result.output
    assert images[0].name in result.stderr and images[1].name in result.stderr and "2 lung masks" in result.stderr
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert len(table) == 3 and table.infection_pct_of_lung.isna().sum() == 2  # every mask written; % of lung where it could be
    one_line_exit_2(cli("predict", "everywhere", *images, "--out", "p2", "--lung-masks", tmp_path / "nowhere"),
                    "nowhere", "not a folder")


@pytest.mark.slow
def test_evaluate_scores_a_tree_that_holds_only_its_test_split(synth_root, tmp_path, fake_run):
    import shutil
    external = tmp_path / "hospital"
    shutil.copytree(synth_root / DATASET_DIR / "Test", external / DATASET_DIR / "Test")
    fake_run(tmp_path, synth_root, "r", infection=False)
    result = cli("evaluate", "r", "--split", "Test", "--data", external)
    assert result.exit_code == 0, result.output
    for split in ("Train", "Val"):  # empty split folders beside it do not matter either
        (external / DATASET_DIR / split / "COVID-19").mkdir(parents=True)
    assert cli("evaluate", "r", "--split", "Test", "--data", external).exit_code == 0
    assert cli("report", "r", "--split", "Test", "--data", external).exit_code == 0
    summary = cli("data", "check", "--data", synth_root)
    assert summary.exit_code == 0
    no_test = tmp_path / "no-test"
    shutil.copytree(synth_root / DATASET_DIR / "Train", no_test / DATASET_DIR / "Train")
    shutil.copytree(synth_root / DATASET_DIR / "Val", no_test / DATASET_DIR / "Val")
    checked = cli("data", "check", "--data", no_test)
    assert checked.exit_code == 0 and "no Test folder" in checked.stdout


def test_settings_obey_the_flags_bounds(synth_root):
    one_line_exit_2(cli("train", "attention-unet", "--data", synth_root, env={"COVFAST_IMG_SIZE": "1"}),
                    "COVFAST_IMG_SIZE", ">= 16")


def test_raw_errors_are_one_line_with_exit_2(synth_root, tmp_path, fake_run):
    run = fake_run(tmp_path, synth_root, "r", infection=True)
    (tmp_path / "afile").write_text("x")
    one_line_exit_2(cli("predict", "r", synth_root / DATASET_DIR / "Test", "--out", tmp_path / "afile"), "is a file")
    one_line_exit_2(cli("train", "attention-unet", "--data", synth_root, *TINY, "--epochs", 1,
                        env={"COVFAST_RUNS_DIR": str(tmp_path / "afile")}), "is a file")
    one_line_exit_2(cli("train", "attention-unet", "--data", synth_root, "--device", "tpu"), "tpu")
    one_line_exit_2(cli("train", "attention-unet", "--data", tmp_path / "afile"), "is a file, not a folder")
    cfg = read_json(run / "config.json")
    (run / "config.json").write_text(json.dumps(cfg | {"features": [8, 16]}))  # edited by hand
    one_line_exit_2(cli("evaluate", "r"), "does not fit", "config.json")
    (run / "config.json").write_text("{}")
    one_line_exit_2(cli("evaluate", "r"), "lacks arch")


def test_data_check_refuses_a_jpeg_named_png(synth_copy):
    p = sorted((synth_copy / DATASET_DIR / "Val" / "Normal" / "images").iterdir())[0]
    Image.open(p).convert("RGB").save(p, format="JPEG")
    result = cli("data", "check", "--data", synth_copy)
    assert result.exit_code == 2 and p.name in result.stderr and "JPEG" in result.stderr


@pytest.mark.slow
def test_run_files_follow_the_users_umask(synth_root, tmp_path):
    old = os.umask(0o022)
    try:
        run = train("attention-unet", synth_root, Config(img_size=32, bs=4, epochs=1, lr="3e-3", runs_dir="runs"),
                    name="u", features=(4, 8))
    finally:
        os.umask(old)
    for name in ("config.json", "history.csv", "model.pth"):
        assert (run / name).stat().st_mode & 0o777 == 0o644, name
