"""The run directory's fastai callback: history.csv, checkpoint.pth and the best model.pth after every epoch."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
from fastai.callback.tracker import TrackerCallback

from . import distributed
from .runs import HISTORY_COLUMNS, atomic_save, plain, read_history, write_history

__all__ = ["RunDirCallback"]


class RunDirCallback(TrackerCallback):
    """After each completed epoch: a history.csv row, checkpoint.pth (atomic) and model.pth when the
    monitored value (valid mean Dice) improves on the best so far, history included.

    A `TrackerCallback`, so it runs after the `Recorder` has the epoch's values; the best value starts
    from the run's history (a resumed run keeps its best model unless it is beaten).
    """

    def __init__(self, run_dir: Path, epoch_offset: int = 0, monitor: str = "valid_dice_mean"):
        super().__init__(monitor=monitor, comp=np.greater, reset_on_fit=False)
        self.run_dir, self.epoch_offset = Path(run_dir), epoch_offset
        self.history = read_history(run_dir)
        self.best = self.history[monitor].max() if len(self.history) else -float("inf")

    def before_epoch(self):
        self._t0, self._trained = time.time(), False

    def before_train(self):
        self._trained = True  # epochs skipped on resume never reach here

    def after_epoch(self):
        if not self._trained:
            return
        super().after_epoch()  # sets self.new_best
        log = dict(zip(self.recorder.metric_names, self.recorder.log))
        row = {k: float(log[k]) for k in HISTORY_COLUMNS if k in log and k != "epoch"}
        row.update(epoch=self.epoch_offset + self.epoch + 1, lr=float(self.opt.hypers[-1]["lr"]),
                   seconds=round(time.time() - self._t0, 2))
        self.history = pd.concat([self.history, pd.DataFrame([row])], ignore_index=True)[HISTORY_COLUMNS]
        self.history["epoch"] = self.history["epoch"].astype(int)
        model = distributed.unwrap(self.learn.model)
        atomic_save({"model": model.state_dict(), "opt": plain(self.opt.state_dict()), "epoch": int(row["epoch"])},
                    self.run_dir / "checkpoint.pth")
        if self.new_best:
            atomic_save(model.state_dict(), self.run_dir / "model.pth")
        write_history(self.run_dir, self.history)  # last: a row means its checkpoint is on disk
