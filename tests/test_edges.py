"""What a user meets around the edges: numbers past what covfast handles, a full disk between epochs, runs that do
not compare, a dataset folder given to predict, a broken install, and the words the terminal ends with."""

import errno

import numpy as np
import pandas as pd
import pytest
import torch

from covfast.dataset import DATASET_DIR
from tests.helpers import cli, one_line_exit_2

pytestmark = pytest.mark.usefixtures("in_tmp")


def test_synth_with_a_negative_seed_or_a_huge_size_is_refused(tmp_path):
    for flag, value in (("--seed", "-1"), ("--size", "99999999999")):
        result = cli("synth", tmp_path / "s", flag, value)
        assert result.exit_code == 2 and "Invalid value for" in result.output and flag in result.output, result.output
        assert "ValueError" not in result.output and not (tmp_path / "s").exists()
    from covfast.errors import CovfastError
    from covfast.synth import write_synthetic
    with pytest.raises(CovfastError, match="--seed must be between 0 and 4294967295"):
        write_synthetic(tmp_path / "s", per_class=1, size=32, seed=-1)


def test_train_with_a_size_past_4096_is_refused_from_the_flag_the_environment_and_the_library(synth_root):
    result = cli("train", "attention-unet", "--data", synth_root, "--size", "99999999999999999999")
    assert result.exit_code == 2 and "less than or equal to 4096" in result.output and "OverflowError" not in result.output
    one_line_exit_2(cli("train", "attention-unet", "--data", synth_root, env={"COVFAST_IMG_SIZE": "99999"}),
                    "COVFAST_IMG_SIZE", "<= 4096")
    from covfast.errors import CovfastError
    from covfast.spec import RunSpec
    with pytest.raises(CovfastError, match="img_size .* <= 4096"):
        RunSpec("attention-unet", img_size=5000)


@pytest.mark.slow
def test_a_full_disk_while_the_history_row_is_written_is_one_line_and_the_run_resumes(synth_root, tmp_path, monkeypatch):
    import covfast.callbacks as callbacks
    real, calls = callbacks.write_history, []

    def disk_full(run_dir, history):
        calls.append(len(history))
        if len(history) == 2:  # epoch 2's row
            raise OSError(errno.ENOSPC, "No space left on device", str(run_dir / "history.csv"))
        real(run_dir, history)
    monkeypatch.setattr(callbacks, "write_history", disk_full)
    result = cli("train", "attention-unet", "--data", synth_root, "--size", "32", "--bs", "4", "--epochs", "3",
                 "--lr", "3e-3", "--features", "4,8", "--name", "cut")
    one_line_exit_2(result, "history.csv", "No space left on device", "--resume")
    assert "RuntimeError" not in result.output and "Exception occured" not in result.output
    monkeypatch.setattr(callbacks, "write_history", real)
    assert cli("train", "attention-unet", "--resume", "cut").exit_code == 0
    assert pd.read_csv(tmp_path / "runs" / "cut" / "history.csv").epoch.tolist() == [1, 2, 3]


def test_torch_saves_failing_write_on_a_full_disk_is_an_os_error_naming_the_file(tmp_path, monkeypatch):
    "torch.save says 'PytorchStreamWriter failed writing file', a RuntimeError; covfast says what it is."
    from covfast import runs

    def failing(obj, f, *args, **kwargs):
        raise RuntimeError("[enforce fail at inline_container.cc:664] . unexpected pos 64 vs 0\n"
                           "PytorchStreamWriter failed writing file data/0: file write failed")
    monkeypatch.setattr(torch, "save", failing)
    monkeypatch.setattr(runs.shutil, "disk_usage", lambda path: type("usage", (), {"free": 0})())
    with pytest.raises(OSError) as e:
        runs.atomic_save({"a": torch.zeros(1)}, tmp_path / "model.pth")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(tmp_path / "model.pth")
    assert not list(tmp_path.iterdir())  # no half-written file


def test_compare_of_runs_trained_on_different_classes_is_one_line(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "two", infection=True, image_logit=1.0, threshold=0.5)
    three = fake_run(tmp_path, synth_root, "three", infection=True, image_logit=1.0, threshold=0.5)
    import json
    cfg = json.loads((three / "config.json").read_text())
    (three / "config.json").write_text(json.dumps({**cfg, "classes": ["COVID-19", "Non-COVID", "Normal"]}))
    result = cli("compare", "two", "three", "--out", tmp_path / "cmp")
    one_line_exit_2(result, "trained on different classes", "two: COVID-19, Non-COVID", "three: COVID-19, Non-COVID, Normal")
    assert not (tmp_path / "cmp").exists()


def test_predict_on_a_split_folder_skips_its_mask_folders_and_says_so(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "r", infection=True, image_logit=1.0, threshold=0.5)
    split = synth_root / DATASET_DIR / "Test"
    result = cli("predict", "r", split, "--out", tmp_path / "p")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    xrays = sorted(split.glob("*/images/*.png"))
    assert len(table) == len(xrays) == 18 and all("/images/" in f for f in table.file)
    assert "skipped 36 masks under 'infection masks/' and 'lung masks/' folders" in result.stdout
    mask = sorted((split / "COVID-19" / "infection masks").iterdir())[0]  # named on its own: taken, as asked
    result = cli("predict", "r", mask, "--out", tmp_path / "q")
    assert result.exit_code == 0 and len(pd.read_csv(tmp_path / "q" / "predictions.csv")) == 1


def test_a_torchvision_built_for_another_torch_is_named_with_both_versions_and_the_fix(synth_root, monkeypatch):
    import covfast.spec as spec

    def broken(*args, **kwargs):
        raise RuntimeError("operator torchvision::nms does not exist")
    monkeypatch.setattr(spec.RunSpec, "from_flags", broken)
    result = cli("train", "attention-unet", "--data", synth_root)
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 1 and len(lines) == 1, result.output
    from importlib.metadata import version
    assert f"torchvision {version('torchvision')}" in lines[0] and f"torch {version('torch')}" in lines[0]
    assert "pip install" in lines[0] and "torchvision::nms" not in lines[0]


def test_a_run_path_is_not_looked_for_under_runs_again(tmp_path):
    result = cli("evaluate", "runs/nosuch")
    one_line_exit_2(result, "no run directory 'runs/nosuch' (looked for config.json in runs/nosuch)")
    assert "runs/runs" not in result.stderr
    one_line_exit_2(cli("evaluate", "nosuch"), "looked for config.json in nosuch and runs/nosuch")


def test_the_run_commands_say_their_data_defaults_to_the_runs_own():
    import typer

    from covfast.cli import app
    commands = typer.main.get_command(app).commands
    for name in ("evaluate", "calibrate", "report"):
        data = next(p for p in commands[name].params if p.opts and p.opts[0] == "--data")
        assert data.help.endswith("Default: the data the run was trained on (its config.json).") and "covidqu" not in data.help
    train_data = next(p for p in commands["train"].params if p.opts and p.opts[0] == "--data")
    assert "Default:" in train_data.help and "(settings.ini / COVFAST_DATA_PATH)" in train_data.help


def test_a_tie_of_the_model_choice_score_goes_to_the_lower_valid_loss():
    from covfast.train import best_epoch
    history = pd.DataFrame({"epoch": [1, 2, 3], "valid_score": [0.0, 0.0, 0.0], "valid_loss": [3.0, 1.5, 2.0],
                            "valid_dice_mean": [0.5, 0.5, 0.5]})
    assert best_epoch(history).epoch == 2
    history.loc[2, "valid_score"] = 0.1
    assert best_epoch(history).epoch == 3


@pytest.mark.slow
def test_training_keeps_the_tied_epoch_of_lower_loss_and_says_when_nothing_is_outlined(synth_root, tmp_path):
    "A model that outlines nothing scores 0 every epoch: model.pth is the epoch of lowest valid loss, and the Done line says so."
    result = cli("train", "attention-unet", "--data", synth_root, "--size", "32", "--bs", "4", "--epochs", "3",
                 "--lr", "1e-5", "--features", "4,8", "--name", "flat")
    assert result.exit_code == 0, result.output
    history = pd.read_csv(tmp_path / "runs" / "flat" / "history.csv")
    assert (history.valid_score == 0).all()
    lowest = int(history.loc[history.valid_loss.idxmin(), "epoch"])
    assert f"model.pth holds epoch {lowest} of 3" in result.stdout
    assert "This model outlines no COVID-19 infection yet" in result.stdout and "--epochs" in result.stdout
    # model.pth is that epoch's weights: the checkpoint's history agrees, and evaluating it gives its valid loss's model
    from covfast.runs import load_weights
    assert all(torch.isfinite(t).all() for t in load_weights(tmp_path / "runs" / "flat" / "model.pth").values()
               if t.is_floating_point())


def test_the_compare_grid_title_stays_above_the_first_row_of_labels(tmp_path):
    from covfast.figures import plot_cases
    gray = np.zeros((16, 16), np.uint8)
    cases = [{"title": "a.png\nNormal", "gray": gray, "truth": None,
              "preds": [(f"run {i}\nDice 1.000", np.zeros((16, 16), bool), None) for i in range(2)]}] * 2
    fig = plot_cases(cases, "The same images through every model")
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    title_bottom = fig._suptitle.get_window_extent(renderer).y0
    labels_top = max(ax.title.get_window_extent(renderer).y1 for ax in fig.axes[:4])
    assert labels_top <= title_bottom


@pytest.mark.slow
def test_a_log_file_gets_the_epoch_table_not_the_progress_bar_redraws(synth_root, tmp_path):
    "stdout to a file: what a user reads later is the table; the batches' bar redraws stay out (they were 107 KB a demo)."
    import subprocess
    import sys
    log = tmp_path / "train.log"
    with open(log, "w") as f:
        subprocess.run([sys.executable, "-m", "covfast", "train", "attention-unet", "--data", str(synth_root), "--size", "32",
                        "--bs", "2", "--epochs", "2", "--lr", "3e-3", "--features", "4,8", "--name", "logged"],
                       stdout=f, stderr=subprocess.STDOUT, check=True, cwd=tmp_path)
    text = log.read_text()
    assert "%" not in text and "Epoch 1/2" not in text, text  # no bar frame at all, nor the lines that cleared them
    assert "Done: runs/logged" in text and len(text) < 1500
    table = [line for line in text.splitlines() if line.strip("█")]  # fastprogress tries its fill character once a bar
    assert table[0].split()[:2] == ["epoch", "train_loss"] and [line.split()[0] for line in table[1:3]] == ["1", "2"]


def test_a_typo_in_the_architecture_is_refused_before_torch_loads():
    "`covfast train nosucharch` took 5.6-6.6 s to refuse (torch and fastai's import); the name is checked first."
    import subprocess
    import sys
    probe = ("import sys\nfrom covfast.cli import main\nsys.argv = ['covfast', sys.argv[1], 'nosucharch']\n"
             "try:\n    main()\nexcept SystemExit as e:\n    print('exit', e.code, 'torch' in sys.modules)\n")
    for command in ("train", "lr-find"):
        r = subprocess.run([sys.executable, "-c", probe, command], capture_output=True, text=True)
        assert r.stdout.strip() == "exit 2 False", (command, r.stdout, r.stderr)
        assert "unknown architecture 'nosucharch'" in r.stderr
