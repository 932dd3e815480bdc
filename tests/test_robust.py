"""Nothing lost, nothing silently wrong: files covfast reads back are checked, writes stay inside a run, the
calibration split is recognised however its root is written, environment failures are one line, and a run
whose disk filled up resumes to the run it would have been."""

import errno
import hashlib
import json
import os
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covfast.config import Config
from covfast.dataset import DATASET_DIR
from tests.helpers import cli, one_line_exit_2, train




def hashes(folder):
    "Every file under `folder` by its contents (links followed), to show what a command left alone."
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}



pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.slow
def test_the_calibration_split_is_refused_however_its_root_is_written(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "h", infection=True, image_logit=1.0, threshold=0.5)
    # the data root as the folder that holds the tree, and as the tree itself: the same Val images
    for data in (synth_root, synth_root / DATASET_DIR, f"{synth_root}/../{synth_root.name}"):
        one_line_exit_2(cli("evaluate", "h", "--split", "Val", "--data", data), "calibrated on Val", "--allow-calibration-split")
    fake_run(tmp_path, synth_root, "h2", infection=False, image_logit=1.0, threshold=0.5)
    one_line_exit_2(cli("report", "h", "--split", "val"), "calibrated on Val")
    one_line_exit_2(cli("compare", "h", "h2", "--split", "Val", "--out", "cmp"), "calibrated on Val")
    assert not (tmp_path / "cmp").exists() and not (tmp_path / "runs" / "h" / "report").exists()
    assert cli("report", "h", "--split", "Val", "--allow-calibration-split").exit_code == 0


def test_predict_never_reads_its_own_output_as_xrays(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "r", infection=True)
    folder = tmp_path / "xrays"
    shutil.copytree(synth_root / DATASET_DIR / "Test" / "COVID-19" / "images", folder)
    before = hashes(folder)
    one_line_exit_2(cli("predict", "r", folder, "--out", folder / "out"), "inside the input folder", str(folder))
    assert hashes(folder) == before and not (folder / "out").exists()


@pytest.mark.parametrize("folder", ["eval", "report"])
def test_writes_into_a_run_stay_inside_it(synth_root, tmp_path, fake_run, folder):
    run = fake_run(tmp_path, synth_root, "r", infection=True)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "index.html").write_text("someone else's page")
    (run / folder).symlink_to(elsewhere, target_is_directory=True)
    command = "evaluate" if folder == "eval" else "report"
    one_line_exit_2(cli(command, "r", "--split", "Test"), "symbolic link", f"runs/r/{folder}")
    assert hashes(elsewhere) == {"index.html": hashlib.sha256(b"someone else's page").hexdigest()}


@pytest.mark.slow
def test_an_empty_name_is_refused_and_a_stillborn_run_folder_trained_again(synth_root, tmp_path):
    one_line_exit_2(cli("train", "attention-unet", "--data", synth_root, "--name", " "), "--name is empty")
    assert not (tmp_path / "runs").exists()
    stillborn = tmp_path / "runs" / "k"  # killed just after its folder appeared: only its lock
    stillborn.mkdir(parents=True)
    (stillborn / ".lock").write_text("12345")
    one_line_exit_2(cli("train", "attention-unet", "--resume", "k"), "holds no run", "--name k")
    result = cli("train", "attention-unet", "--data", synth_root, "--size", "32", "--bs", "4", "--epochs", "1",
                 "--features", "4,8", "--name", "k")
    assert result.exit_code == 0, result.output
    assert (stillborn / "config.json").is_file() and (stillborn / "model.pth").is_file()


@pytest.mark.parametrize("content, words", [
    ("", "is not a table covfast wrote"), ("epoch,train_loss\n1,abc\n", "train_loss holds values that are not numbers"),
    ("\x00\x01\x02\xff\xfe", "is not a table covfast wrote"), ("a,b\n1,2\n", "has no epoch column")])
def test_a_damaged_history_csv_is_one_line_naming_it(synth_root, tmp_path, fake_run, content, words):
    run = fake_run(tmp_path, synth_root, "r", infection=True)
    (run / "history.csv").write_bytes(content.encode("latin-1"))
    one_line_exit_2(cli("report", "r", "--split", "Test"), "history.csv", words)


@pytest.mark.parametrize("field, value", [("img_size", "big"), ("classes", 3), ("features", [[4, 8]]), ("bs", -2)])
def test_a_config_json_with_wrong_types_is_one_line_naming_the_field(synth_root, tmp_path, fake_run, field, value):
    run = fake_run(tmp_path, synth_root, "r", infection=True)
    cfg = json.loads((run / "config.json").read_text())
    (run / "config.json").write_text(json.dumps({**cfg, field: value}))
    one_line_exit_2(cli("evaluate", "r", "--split", "Test"), "config.json", field)
    (run / "config.json").write_bytes(b"\x00\xff binary")
    one_line_exit_2(cli("evaluate", "r", "--split", "Test"), "config.json")


@pytest.mark.slow
def test_weights_and_checkpoints_that_are_not_covfasts_are_one_line(synth_root, tmp_path, fake_run):
    run = fake_run(tmp_path, synth_root, "r", infection=True)
    text = tmp_path / "notes.txt"
    text.write_text("not weights")
    (run / "model.pth").unlink()
    (run / "model.pth").symlink_to(text)
    one_line_exit_2(cli("evaluate", "r", "--split", "Test"), "model.pth", "not a weights file")
    with pytest.raises(KeyboardInterrupt):
        from tests.test_train import InterruptAfter
        train("attention-unet", synth_root, Config(img_size=32, bs=4, epochs=2, lr="3e-3", runs_dir="runs"), name="c",
              cbs=[InterruptAfter(1)], features=(4, 8))
    ckpt = torch.load(tmp_path / "runs" / "c" / "checkpoint.pth", weights_only=True)
    del ckpt["epoch"]
    torch.save(ckpt, tmp_path / "runs" / "c" / "checkpoint.pth")
    one_line_exit_2(cli("train", "attention-unet", "--resume", "c"), "checkpoint.pth lacks epoch")


def test_a_truncated_png_is_named_by_evaluate_and_lr_find(synth_copy, tmp_path, fake_run):
    fake_run(tmp_path, synth_copy, "r", infection=True)
    bad = sorted((synth_copy / DATASET_DIR / "Test" / "COVID-19" / "images").iterdir())[0]
    bad.write_bytes(bad.read_bytes()[:60])
    result = cli("evaluate", "r", "--split", "Test")
    assert result.exit_code == 2 and str(bad) in result.stderr and "Traceback" not in result.output
    train_bad = sorted((synth_copy / DATASET_DIR / "Train" / "Normal" / "images").iterdir())[0]
    train_bad.write_bytes(train_bad.read_bytes()[:60])
    result = cli("lr-find", "attention-unet", "--data", synth_copy, "--size", "32", "--bs", "4", "--out", "lrf")
    assert result.exit_code == 2 and str(train_bad) in result.stderr and not (tmp_path / "lrf").exists()


def test_seeds_and_images_beyond_what_covfast_handles(synth_root, tmp_path, fake_run):
    one_line_exit_2(cli("train", "attention-unet", "--data", synth_root, "--seed", "99999999999999999999"), "seed")
    fake_run(tmp_path, synth_root, "r", infection=True)
    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("L", (8000, 8000)).save(folder / "huge.png")
    shutil.copy(sorted((synth_root / DATASET_DIR / "Test" / "COVID-19" / "images").iterdir())[0], folder / "ok.png")
    result = cli("predict", "r", folder, "--out", "p")
    assert result.exit_code == 1 and "huge.png" in result.stderr and "megapixels" in result.stderr
    assert len(pd.read_csv(tmp_path / "p" / "predictions.csv")) == 1  # the other X-ray went on


def test_paths_the_machine_refuses_are_one_line(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "r", infection=True)
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    one_line_exit_2(cli("predict", "r", images, "--out", loop / "out"), str(loop))
    (tmp_path / "afile").write_text("x")
    one_line_exit_2(cli("predict", "r", images, "--out", tmp_path / "afile" / "out"), "afile")
    if os.geteuid() != 0:  # root writes anywhere
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o500)
        one_line_exit_2(cli("predict", "r", images, "--out", locked / "out"), "locked")


@pytest.mark.slow
def test_compare_scores_again_a_per_image_table_it_cannot_trust(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "a", infection=True)
    fake_run(tmp_path, synth_root, "b", infection=False)
    assert cli("evaluate", "a", "--split", "Test").exit_code == 0
    table = tmp_path / "runs" / "a" / "eval" / "Test" / "per_image.csv"
    damaged = pd.read_csv(table)
    damaged.loc[0, "dice"] = np.nan
    damaged.to_csv(table, index=False)
    result = cli("compare", "a", "b", "--split", "Test", "--out", "cmp")
    assert result.exit_code == 0, result.output
    assert not pd.read_csv(table).dice.isna().any()  # evaluated afresh


def test_a_refused_demo_leaves_nothing_behind(tmp_path):
    one_line_exit_2(cli("demo", "--device", "foo", "--out", "d"), "foo")
    assert not (tmp_path / "d").exists()


@pytest.mark.slow
def test_a_full_disk_while_saving_keeps_the_last_weights_and_the_run_resumes(synth_root, tmp_path, monkeypatch):
    "ENOSPC while writing epoch 2's checkpoint: one line, epoch 1's files intact, and --resume gives the uninterrupted run."
    import covfast.callbacks as callbacks
    config = Config(img_size=32, bs=4, epochs=3, lr="3e-3", runs_dir="runs")
    full = train("attention-unet", synth_root, config, name="full", features=(4, 8))
    real, calls = callbacks.atomic_save, []

    def disk_full(obj, path):
        calls.append(path.name)
        if calls.count("checkpoint.pth") == 2:  # epoch 2's checkpoint: the disk is full
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(obj, path)
    monkeypatch.setattr(callbacks, "atomic_save", disk_full)
    result = cli("train", "attention-unet", "--data", synth_root, "--size", "32", "--bs", "4", "--epochs", "3",
                 "--lr", "3e-3", "--features", "4,8", "--name", "cut")
    one_line_exit_2(result, "checkpoint.pth", "No space left on device", "--resume")
    cut = tmp_path / "runs" / "cut"
    assert torch.load(cut / "checkpoint.pth", weights_only=True)["epoch"] == 1
    assert pd.read_csv(cut / "history.csv").epoch.tolist() == [1]
    assert not [p for p in cut.iterdir() if p.name.endswith(".tmp")]  # no half-written file left
    monkeypatch.setattr(callbacks, "atomic_save", real)  # space is back
    assert cli("train", "attention-unet", "--resume", "cut").exit_code == 0
    a, b = pd.read_csv(full / "history.csv"), pd.read_csv(cut / "history.csv")
    cols = ["train_loss", "valid_loss", "train_dice", "valid_dice_mean", "lr"]
    assert b.epoch.tolist() == [1, 2, 3] and b[cols].to_numpy().tolist() == a[cols].to_numpy().tolist()


def test_a_config_json_nested_past_what_json_reads_is_one_line(synth_root, tmp_path, fake_run):
    run = fake_run(tmp_path, synth_root, "r", infection=True)
    (run / "config.json").write_text("[" * 100000 + "]" * 100000)
    one_line_exit_2(cli("evaluate", "r", "--split", "Test"), "config.json", "not the JSON covfast writes")


def test_a_report_on_other_data_names_that_data(synth_root, synth_copy, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "r", infection=True)
    assert cli("report", "r", "--split", "Test", "--data", synth_copy).exit_code == 0
    page = (tmp_path / "runs" / "r" / "report" / "index.html").read_text()
    assert str(synth_copy / DATASET_DIR) in page and "not the data the run was trained on" in page
