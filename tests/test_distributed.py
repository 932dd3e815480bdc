"""Two CPU processes (gloo) train one run through fastai's distributed support, launched as a user would."""

import json
import os
import socket
import subprocess
import sys

import pandas as pd
import pytest
import torch

pytest.importorskip("accelerate")

from covfast import distributed
from covfast.models import AttentionUNet
from covfast.runs import load_weights
from covfast.synth import write_synthetic
from covfast.learner import learner_for_spec
from covfast.spec import RunSpec


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_train_one_whole_run(tmp_path):
    # 3 classes x 5 Val images = 15: two processes read 8 each, one padded, which the metrics must drop
    tree = write_synthetic(tmp_path / "tree", per_class=5, size=64, seed=2)
    env = {**os.environ, "COVFAST_RUNS_DIR": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(free_port()),
           "-m", "covfast", "train", "attention-unet", "--data", str(tree), "--size", "32", "--epochs", "2",
           "--bs", "4", "--classes", "all", "--device", "cpu", "--lr", "3e-3", "--name", "ddp",
           # fp32, so the single-process validation below can match the logged metrics to 1e-6
           "--precision", "fp32", "--keep-checkpoint"]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]

    runs = list((tmp_path / "runs").iterdir())
    assert [r.name for r in runs] == ["ddp"]  # one run directory, written by the main process
    run = runs[0]
    assert sorted(p.name for p in run.iterdir()) == [".lock", "checkpoint.pth", "config.json", "history.csv", "model.pth"]
    cfg = json.loads((run / "config.json").read_text())
    assert cfg["processes"] == 2 and cfg["status"] == "complete"
    assert cfg["weights_agree"] is True  # DDP averaged the gradients: both processes hold the same weights
    history = pd.read_csv(run / "history.csv")
    assert history.epoch.tolist() == [1, 2]
    assert history.notna().all().all()
    # weights saved without DDP's 'module.' prefix: they load into the bare model
    AttentionUNet(3, 2, tuple(cfg["features"]), image_head=True, lung_head=cfg["lung_weight"] > 0).load_state_dict(load_weights(run / "model.pth"))

    # the logged validation metrics are those of all 15 Val images once: one process validating
    # the last epoch's weights on the whole Val set gets the same values
    learn, _ = learner_for_spec(RunSpec.from_json(cfg), device="cpu", pretrained=False, warn=False)
    learn.model.load_state_dict(load_weights(run / "checkpoint.pth")["model"])
    with learn.no_bar(), learn.no_logging():
        values = dict(zip(["valid_loss", *[m.name for m in learn.metrics]], learn.validate()))
    last = history.iloc[-1]
    for key in ("valid_dice_covid", "valid_dice_noncovid", "valid_dice_normal", "valid_dice_mean", "valid_auc", "valid_dice_lung"):
        assert values[key] == pytest.approx(last[key], abs=1e-6), key
    # fastai averages the loss over each process's batches, the padded image included (the metrics drop it):
    # 16 images' mean against 15's; with the image head's BCE in the loss that is 0.12% here
    assert values["valid_loss"] == pytest.approx(last["valid_loss"], rel=5e-3)
    assert len(learn.dls.valid.items) == 15 and torch.distributed.is_available()


def test_finish_leaves_the_process_group(tmp_path):
    # a group left to the interpreter's shutdown aborted a finished run (SIGABRT); finish() leaves it first
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path / 'store'}", rank=0, world_size=1)
    assert torch.distributed.is_initialized()
    distributed.finish()
    assert not torch.distributed.is_initialized()
    distributed.finish()  # the exit hook after an explicit call: nothing left to leave, no error
