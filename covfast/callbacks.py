"""The run directory's fastai callback: after every epoch a history row, a checkpoint that resumes bit for
bit, and the best model.pth; a run whose loss or weights stop being finite is stopped at once."""

from __future__ import annotations

import math
import random
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.callback.tracker import TrackerCallback
from fastai.learner import Learner

from . import distributed
from .metrics import MODEL_CHOICE
from .runs import HISTORY_COLUMNS, atomic_save, finite_weights, plain, read_history, write_history

__all__ = ["RunDiverged", "random_states", "restore_random_states", "RunDirCallback", "QuietConsoleBars"]


class RunDiverged(Exception):
    "The loss or the weights stopped being finite in epoch `epoch` (1-based, the run's own numbering)."

    def __init__(self, epoch: int, what: str):
        super().__init__(f"{what} in epoch {epoch}")
        self.epoch, self.what = epoch, what


def random_states(learn: Learner) -> dict[str, Any]:
    """Every random state the next epoch draws from: Python's, NumPy's, torch's (and CUDA's), and each
    loader's own (fastai's DataLoader reshuffles from its `rng`), as plain values a weights-only file holds."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    return {"python": plain(random.getstate()), "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "loaders": [plain(_shuffler(dl).rng.getstate()) for dl in learn.dls.loaders]}


def _shuffler(dl):
    "The loader that holds the shuffling `rng`: the one fastai's DistributedDL wraps, in a distributed run."
    return getattr(dl, "dl", dl)


def _python_state(state: list) -> tuple:
    return (state[0], tuple(state[1]), state[2])


def restore_random_states(learn: Learner, states: dict[str, Any]) -> None:
    "Put back what `random_states` saved, so the resumed epochs draw what the uninterrupted run drew."
    random.setstate(_python_state(states["python"]))
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    torch.set_rng_state(states["torch"])
    if states["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])
    for dl, state in zip(learn.dls.loaders, states["loaders"]):
        _shuffler(dl).rng.setstate(_python_state(state))


class QuietConsoleBars(Callback):
    """Where standard output is not a terminal (a log file, a pipe, CI), the batch progress bars print nothing: their
    hundreds of carriage-return updates per epoch filled a redirected log (107 KB for `covfast demo`) with what a
    reader never sees. The epoch table still prints, one line an epoch. A terminal and a notebook keep their bars."""

    def before_fit(self):
        # fastprogress's printing() tests `sys.stdout.isatty` without calling it, so its console bars print their
        # frames (and clear them with a line of spaces) into any log; NO_BAR stops that, the table still prints
        import fastprogress.fastprogress as fp

        self._no_bar = fp.NO_BAR
        if fp.progress_bar is fp.ConsoleProgressBar and not sys.stdout.isatty():
            fp.NO_BAR = True

    def after_fit(self):
        import fastprogress.fastprogress as fp

        fp.NO_BAR = getattr(self, "_no_bar", fp.NO_BAR)


class RunDirCallback(TrackerCallback):
    """After each completed epoch: model.pth when the monitored value (`metrics.MODEL_CHOICE`) beats the best so
    far (or ties it at a lower valid loss), then checkpoint.pth, then the history.csv row, each written atomically. The terminal's table numbers the
    epochs from 1, as history.csv and the report do, and shows '–' for a figure that is not defined.

    The checkpoint carries what resume needs to continue bit for bit: weights, optimizer, epoch, the history
    rows so far and the random states; a kill at any instant leaves a run that resumes (history.csv is
    rebuilt from the checkpoint when the kill fell between the two). A `TrackerCallback`, so it runs after
    the `Recorder` has the epoch's values; the best value starts from the run's history. A non-finite
    training loss, or non-finite weights at the end of an epoch, raise `RunDiverged` before anything is
    written, so model.pth keeps the last finite best weights.
    """

    def __init__(self, run_dir: Path, epoch_offset: int = 0, monitor: str = MODEL_CHOICE,
                 smooth_loss: dict | None = None):
        super().__init__(monitor=monitor, comp=np.greater, reset_on_fit=False)
        self.run_dir, self.epoch_offset, self.smooth_loss = Path(run_dir), epoch_offset, smooth_loss
        self.history = read_history(run_dir)
        # a run resumed from before this figure was logged has none in its history: its next epoch starts afresh
        best = self.history[monitor].max() if len(self.history) else float("nan")
        self.best = best if best == best else -float("inf")
        # a tie of the score goes to the epoch of lower valid loss (`train.best_epoch` reads history.csv the same way)
        tied = self.history[self.history[monitor] == best] if best == best else self.history.iloc[:0]
        self.best_loss = float(tied.valid_loss.min()) if len(tied) else float("inf")

    def before_fit(self):
        super().before_fit()
        if self.smooth_loss is not None:
            # the train_loss column is fastai's running average over the batches of the whole fit; a resumed
            # fit picks it up where the checkpoint left it (the Recorder has just reset it)
            self.recorder.smooth_loss.count = self.smooth_loss["count"]
            self.recorder.smooth_loss.val = self.smooth_loss["val"]

    def before_epoch(self):
        self._t0, self._trained = time.time(), False
        if not getattr(self.learn.logger, "covfast", False):  # once per fit, over the progress bar's writer
            write = self.learn.logger

            def logger(log):
                if log and isinstance(log[0], int):  # a row of figures, not the header
                    log = [log[0] + 1 + self.epoch_offset,
                           *("–" if isinstance(v, float) and v != v else v for v in log[1:])]
                write(log)
            logger.covfast = True
            self.learn.logger = logger

    def before_train(self):
        self._trained = True  # epochs skipped on resume never reach here

    def after_batch(self):
        if self.training and not math.isfinite(loss := float(self.loss.detach())):
            raise RunDiverged(self.epoch_offset + self.epoch + 1, f"training loss {loss}")

    def after_epoch(self):
        if not self._trained:
            return
        epoch = self.epoch_offset + self.epoch + 1
        model = distributed.unwrap(self.learn.model)
        state = model.state_dict()
        if not finite_weights(state):
            raise RunDiverged(epoch, "non-finite weights")
        super().after_epoch()  # sets self.new_best
        log = dict(zip(self.recorder.metric_names, self.recorder.log))
        loss = float(log.get("valid_loss", float("nan")))
        if not self.new_best and float(log.get(self.monitor, float("nan"))) == self.best and loss < self.best_loss:
            self.new_best = True  # the same score at a lower valid loss: the better model of the two
        if self.new_best:
            self.best_loss = loss
        row = {k: float(log[k]) for k in HISTORY_COLUMNS if k in log and k != "epoch"}
        row.update(epoch=epoch, lr=float(self.opt.hypers[-1]["lr"]), seconds=round(time.time() - self._t0, 2))
        self.history = pd.concat([self.history, pd.DataFrame([row])], ignore_index=True)[HISTORY_COLUMNS]
        self.history["epoch"] = self.history["epoch"].astype(int)
        if self.new_best:
            atomic_save(state, self.run_dir / "model.pth")
        atomic_save({"model": state, "opt": plain(self.opt.state_dict()), "epoch": epoch,
                     "history": plain(self.history.to_dict("list")), "random": random_states(self.learn),
                     "smooth_loss": plain({"count": self.recorder.smooth_loss.count, "val": self.recorder.smooth_loss.val})},
                    self.run_dir / "checkpoint.pth")
        write_history(self.run_dir, self.history)  # last: a row means its checkpoint is on disk
