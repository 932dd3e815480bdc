"""One-cycle training into a run directory, lr finding, and resuming an interrupted run."""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Callable, Mapping

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.learner import Learner

from . import distributed
from .callbacks import RunDiverged, RunDirCallback, restore_random_states
from .config import parse_lr
from .dataset import check_tree, resolve_root
from .errors import CovfastError, format_problems
from .learner import learner_for_spec, pick_device
from .metrics import MODEL_CHOICE
from .models import arch_slug
from .precision import learner_precision
from .runs import (RunLock, load_checkpoint, load_model_weights, new_run_dir, read_history, read_run, resolve_run,
                   versions, write_history, write_json)
from .spec import RunSpec
from .synth import is_synthetic

__all__ = ["TrainingDiverged", "TrainingInterrupted", "check_training_data", "train", "ResumeState", "resume", "best_epoch",
           "training_summary", "lr_find_doubt", "find_lr"]

Say = Callable[[str], None]


def _quiet(line: str) -> None:
    "The default `say`: a library call prints nothing of its own (fastai's progress bars aside)."


class TrainingDiverged(CovfastError):
    "The loss or the weights of a run stopped being finite; config.json says 'diverged' and when."


class TrainingInterrupted(KeyboardInterrupt):
    "Ctrl-C (or a callback's KeyboardInterrupt) during `train`: the run directory keeps its last completed epoch."

    def __init__(self, run_dir: Path, arch: str, completed: int, epochs: int):
        super().__init__(f"interrupted after epoch {completed} of {epochs}")
        self.run_dir, self.arch, self.completed, self.epochs = run_dir, arch, completed, epochs


def _tolerant(func):
    "A suggestion function that gives NaN instead of failing on a short curve (lr_find stops early when the loss diverges)."
    @functools.wraps(func)
    def suggest(lrs, losses, num_it):
        try:
            return func(lrs, losses, num_it)
        except (IndexError, ValueError):
            return float("nan"), (float("nan"), float("nan"))
    return suggest


SUGGESTIONS = tuple(_tolerant(f) for f in (valley, slide, minimum, steep))
# lr_find's mini-batches by default (fastai's), and the fewest whose curve covfast trusts
LR_FIND_ITERATIONS, LR_FIND_TRUSTED = 100, 50


def _lr_find(learn: Learner, num_it: int | None = None):
    """fastai lr_find in a scratch folder (it saves the model there), quietly restoring the model; its plot with
    every suggestion marked. `num_it` None: fastai's 100 mini-batches, over as many epochs as that takes (the demo's
    data has 6 a epoch: its 12-batch curve gave a valley of 2.15e-06, the 100-batch one 2.09e-03, beside the 3e-3
    the demo trains at)."""
    num_it = num_it or LR_FIND_ITERATIONS
    path, model_dir = learn.path, learn.model_dir
    with tempfile.TemporaryDirectory() as tmp:
        learn.path, learn.model_dir = Path(tmp), "models"
        try:
            suggestions = learn.lr_find(suggest_funcs=SUGGESTIONS, num_it=num_it, show_plot=False)
        finally:
            learn.path, learn.model_dir = path, model_dir
    return suggestions, lr_find_figure(learn.recorder.lrs, learn.recorder.losses, suggestions._asdict())


def lr_find_figure(lrs, losses, suggestions: dict[str, float]):
    """lr_find's loss against the learning rate (the last 5 points left out, as fastai's plot does), with each
    suggestion a dot at the very learning rate printed for it ('minimum' is fastai's: the loss's minimum / 10);
    a suggestion the curve gave none for is named in the legend as n/a, with no dot."""
    lrs = np.asarray(lrs[:-5] if len(lrs) > 10 else lrs, dtype=float)
    losses = np.asarray([float(v) for v in (losses[:-5] if len(losses) > 10 else losses)], dtype=float)
    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(lrs, losses)
    for (name, value), colour in zip(suggestions.items(), ("C1", "C2", "C3", "C4")):
        if value == value and len(lrs):
            ax.plot([value], [np.interp(np.log(value), np.log(lrs), losses)], "o", color=colour,
                    label=f"{name}: {value:.2e}")
        else:
            ax.plot([], [], "o", color=colour, alpha=0.3, label=f"{name}: n/a (curve too short)")
    ax.set_xscale("log"), ax.set_xlabel("learning rate"), ax.set_ylabel("loss")
    ax.set_title(f"lr_find over {len(lrs)} mini-batches; dots: the suggestions", fontsize=10)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def lr_find_doubt(suggestions: dict[str, float], learn: Learner) -> str | None:
    """Why the valley suggestion should not be trusted, or None: a curve of fewer than `LR_FIND_TRUSTED` mini-batches
    is too short; on a longer one fastai's valley lies below the learning rate of the loss's minimum, within three
    decades of it (the demo's 100-batch curve: 2.6 decades); further below, the curve was too noisy."""
    lrs, losses = np.array(learn.recorder.lrs[:-5], dtype=float), np.array([float(v) for v in learn.recorder.losses[:-5]])
    finite = np.isfinite(losses)
    valley = suggestions.get("valley", float("nan"))
    if not finite.any() or valley != valley:
        return "lr_find's curve was too short for a valley; raise --num-it"
    if len(learn.recorder.lrs) < LR_FIND_TRUSTED:
        return (f"lr_find tried {len(learn.recorder.lrs)} mini-batches, too few to trust its valley {valley:.2e}; "
                f"raise --num-it (fastai's default is {LR_FIND_ITERATIONS})")
    at_minimum = float(lrs[finite][losses[finite].argmin()])
    if not at_minimum / 1000 <= valley <= at_minimum:
        return (f"the valley {valley:.2e} is not within three decades below the loss's minimum at {at_minimum:.2e}: the "
                f"curve is too noisy to trust; raise --num-it, or look at the plot")
    return None


def _precision_fields(learn: Learner, requested: str) -> dict[str, str]:
    "config.json's record of the precision asked for, the one used and why."
    precision = learner_precision(learn)
    return {"precision_requested": requested, "precision": precision.mode, "precision_reason": precision.reason}


def _counts(learn: Learner) -> dict[str, dict[str, int]]:
    return {split: dl.items.label.value_counts().to_dict() for split, dl in (("Train", learn.dls.train), ("Val", learn.dls.valid))}


def train(
    spec: RunSpec,  # every setting of the run (RunSpec.from_flags builds it from flags, environment and settings.ini)
    name: str | None = None,  # run directory name under runs_dir (default <arch>-<YYYYmmdd-HHMMSS>)
    runs_dir: str | Path = "runs",  # folder of the run directories
    device: str | None = None,  # 'cpu', 'cuda' or None for automatic
    num_workers: int = 0,  # DataLoader worker processes (0 keeps the PNG cache in this process; CUDA: up to 8)
    cbs: list | None = None,  # extra fastai callbacks
    say: Say = _quiet,  # where progress lines go (the CLI passes its echo)
) -> Path:
    """Train `spec` with one-cycle into a new run directory (config.json, history.csv, model.pth, checkpoint.pth).

    Ctrl-C raises `TrainingInterrupted` (a KeyboardInterrupt) after marking the run "interrupted"; `resume` continues it."""
    lr = parse_lr(spec.lr)
    if lr is None and distributed.world_size() > 1:  # each process's lr_find would pick its own rate
        raise CovfastError("--lr auto is not available in a distributed run; run `covfast lr-find` first and pass --lr")
    pick_device(device)  # an unknown device fails here, in one line
    root = resolve_root(spec.data_root).resolve()
    spec = spec.replace(data_root=str(root))
    check_training_data(root, spec.classes, spec.bs)  # before any epoch: a bad Val file must not wait for one
    run_device = distributed.start(device)
    learn, status = learner_for_spec(spec, device=run_device or device, num_workers=num_workers)
    run_dir = _new_run_dir(runs_dir, name, arch_slug(spec.arch))
    try:
        return _start(learn, status, run_dir, spec, lr, cbs, say)
    except TrainingDiverged:
        raise  # its run directory says "diverged", and when
    except Exception:
        # a run that failed before its first epoch holds nothing to resume: leave no directory blocking its name
        if distributed.is_main() and read_history(run_dir).empty:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _start(learn: Learner, status, run_dir: Path, spec: RunSpec, lr: float | None, cbs: list | None, say: Say) -> Path:
    "A new run's config.json (the spec and what the run got), its lr_find when --lr auto, then its one-cycle fit."
    learn.path = run_dir
    record = {**spec.to_json(), "run_name": run_dir.name, "created": datetime.now().isoformat(timespec="seconds"),
              "pretrained": status.used, "pretrained_reason": status.reason,
              "freeze_epochs": 1 if status.used and spec.epochs >= 2 else 0,
              "device": str(learn.dls.device), "num_workers": learn.dls.train.fake_l.num_workers,
              **_precision_fields(learn, spec.precision), "synthetic_data": is_synthetic(spec.data_root),
              "counts": _counts(learn), "versions": versions(), "status": "running", "processes": distributed.world_size()}
    if lr is None:
        suggestions, fig = _lr_find(learn)
        fig.savefig(run_dir / "lr_find.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        lr = float(suggestions.valley)
        if not lr > 0:
            raise CovfastError("lr_find's curve was too short for a valley; pass --lr with a number")
        doubt = lr_find_doubt(suggestions._asdict(), learn)
        say(f"lr_find valley: {lr:.2e} (plot: {run_dir / 'lr_find.png'})" + (f"; covfast: warning: {doubt}" if doubt else ""))
    record["lr_used"] = lr
    if distributed.is_main():
        write_json(run_dir / "config.json", record)
    with _lock(run_dir):
        return _fit(learn, run_dir, spec, record, completed=0, cbs=cbs, say=say)


def _lock(run_dir: Path):
    "The run directory's writer lock, in the main process (the only one that writes it)."
    return RunLock(run_dir) if distributed.is_main() else contextlib.nullcontext()


def check_training_data(root: str | Path, classes: tuple[str, ...], bs: int) -> None:
    """Open every Train and Val file of `classes` before the first batch (the checks of `covfast data check`:
    pairing, sizes, mask values, non-empty COVID-19 masks); and a batch size that leaves no full training
    batch is an error (fastai drops the last partial batch, so the run would train nothing)."""
    df, problems = check_tree(root, splits=("Train", "Val"), classes=classes)
    if problems:
        raise CovfastError("the training data has problems (run `covfast data check` for all of them):\n"
                           + format_problems(problems))
    n_train = int((df.split == "Train").sum())
    if n_train < bs:
        raise CovfastError(f"--bs {bs} is larger than the {n_train} training images, so no full batch can be made; "
                           f"use --bs {max(1, n_train // 2)} or less")


def _new_run_dir(runs_dir: str | Path, name: str | None, slug: str) -> Path:
    "`new_run_dir` in the main process; the others get its path (or its error: no process is left waiting)."
    made: Path | str
    if distributed.is_main():
        try:
            made = new_run_dir(runs_dir, name, slug)
        except CovfastError as e:
            made = str(e)
    made = distributed.from_main(made if distributed.is_main() else None)
    if isinstance(made, str):
        raise CovfastError(made)
    return made


@dataclass(frozen=True)
class ResumeState:
    "What a checkpoint gives back beside the weights: the optimizer's state, the random states, the smoothed loss."
    opt: dict[str, Any]
    random: dict[str, Any] | None  # checkpoints of older covfast versions have none
    smooth_loss: float | None


def resume(
    run: str | Path,  # the run directory, or its name under runs_dir
    given: Mapping[str, Any] | None = None,  # the flags given with --resume (RunSpec field names; None: not given): any that differs is refused
    runs_dir: str | Path = "runs",
    name: str | None = None,  # refused: a resumed run keeps its name
    device: str | None = None,  # default: the device the run trained on
    num_workers: int = 0,
    cbs: list | None = None,
    say: Say = _quiet,
) -> Path:
    "Continue an interrupted run from its last completed epoch, exactly where the uninterrupted run would be."
    if name is not None:
        raise CovfastError(f"--name names a new run; --resume continues {run} under its own name: leave --name out")
    run_dir = resolve_run(run, runs_dir)
    with _lock(run_dir):  # before reading anything: another process may be writing this run
        spec, record = read_run(run_dir)
        spec.check_resume(run_dir, given or {})
        ckpt = load_checkpoint(run_dir / "checkpoint.pth") if (run_dir / "checkpoint.pth").is_file() else None
        completed = ckpt["epoch"] if ckpt else 0
        finished = max([completed, *read_history(run_dir).epoch.astype(int).tolist()])
        if finished >= spec.epochs:
            raise CovfastError(f"run {run_dir} already completed its {spec.epochs} epochs; nothing to resume")
        if ckpt is None and finished:
            raise CovfastError(f"{run_dir} has finished epochs but no checkpoint.pth to resume from; train it again "
                               f"under another --name")
        device = device or record.get("device")
        run_device = distributed.start(device)
        # the run's own settings, pretrained status included: the encoder weights come from the checkpoint
        learn, _ = learner_for_spec(spec, device=run_device or device, num_workers=num_workers, pretrained=False, warn=False)
        learn.path = run_dir
        record.update(spec.to_json(), device=str(learn.dls.device), **_precision_fields(learn, spec.precision))
        state = None
        if ckpt:
            load_model_weights(learn.model, ckpt["model"], run_dir / "checkpoint.pth")
            if "history" in ckpt and distributed.is_main():
                # the checkpoint's rows are the truth: a kill between writing it and history.csv left the csv behind
                write_history(run_dir, pd.DataFrame(ckpt["history"]))
            state = ResumeState(ckpt["opt"], ckpt.get("random"), ckpt.get("smooth_loss"))
        if distributed.is_main():
            say(f"Resuming {run_dir} after epoch {completed} of {spec.epochs}")
        return _fit(learn, run_dir, spec, record, completed=completed, cbs=cbs, say=say, resumed=state)



def _fit(learn: Learner, run_dir: Path, spec: RunSpec, cfg: dict[str, Any], completed: int, cbs: list | None,
         say: Say, resumed: ResumeState | None = None) -> Path:
    """The one-cycle phases (a frozen epoch first for a pretrained encoder), resumable after any epoch; `cfg` is
    config.json's record; `resumed`: a checkpoint's state, restored just before the first batch it belongs to."""
    lr, epochs, frozen = cfg["lr_used"], spec.epochs, cfg.get("freeze_epochs", 0)
    # (first global epoch, epochs, learning rate, train the encoder?)
    phases = ([(0, frozen, lr, False)] if frozen else []) + [(frozen, epochs - frozen, slice(lr / 200, lr / 2) if frozen else lr, True)]
    main = distributed.is_main()
    if distributed.world_size() > 1:
        # fastai wraps the model in DDP and each loader in a DistributedDL for each fit; SyncBatchNorm needs CUDA
        cuda = torch.device(learn.dls.device).type == "cuda"
        context = functools.partial(learn.distrib_ctx, sync_bn=cuda, cpu=not cuda)
    else:
        context = contextlib.nullcontext
    try:
        for start, n, lr_max, unfrozen in phases:
            if completed >= start + n:
                continue
            if unfrozen and frozen:
                learn.unfreeze()
            elif frozen:
                learn.freeze()
            learn.create_opt()
            smooth = None
            if resumed is not None and completed > start:  # resuming inside this phase
                learn.opt.load_state_dict(resumed.opt)
                smooth = resumed.smooth_loss
            if resumed is not None and resumed.random is not None:
                restore_random_states(learn, resumed.random)  # last, just before the first batch it feeds
            resumed = None  # once: a later phase starts afresh
            with context():
                learn.fit_one_cycle(n, lr_max, start_epoch=max(0, completed - start),
                                    cbs=[*([RunDirCallback(run_dir, epoch_offset=start, smooth_loss=smooth)] if main else []),
                                         *(cbs or [])])
            completed = start + n
    except KeyboardInterrupt:
        if not main:
            raise
        cfg["status"] = "interrupted"
        write_json(run_dir / "config.json", cfg)
        raise TrainingInterrupted(run_dir, spec.arch, len(read_history(run_dir)), epochs) from None
    except RunDiverged as e:
        history = read_history(run_dir)
        cfg.update(status="diverged", diverged_epoch=e.epoch, diverged=e.what)
        if main:
            write_json(run_dir / "config.json", cfg)
        kept = (f"model.pth keeps epoch {int(best_epoch(history).epoch)}'s weights, the best finite ones"
                if len(history) and (run_dir / "model.pth").is_file() else "no epoch finished, so there is no model.pth")
        raise TrainingDiverged(f"training diverged ({e.what} in epoch {e.epoch}): the learning rate {cfg['lr_used']:g} is too high for this run; "
                               f"{kept}; train again with a lower --lr, e.g. {cfg['lr_used'] / 10:g}") from None
    if distributed.world_size() > 1:
        cfg["weights_agree"] = distributed.weights_agree(learn.model)  # every process takes part
        if main and not cfg["weights_agree"]:
            say("covfast: warning: the processes ended with different weights, so they did not train as one "
                "model (DDP); model.pth holds the main process's")
    if not main:
        return run_dir
    cfg["status"] = "complete"
    write_json(run_dir / "config.json", cfg)
    if not spec.keep_checkpoint:
        # a complete run cannot be resumed: its optimizer state (3x the weights with Adam) is dead weight on disk
        (run_dir / "checkpoint.pth").unlink(missing_ok=True)
    return run_dir


def best_epoch(history: pd.DataFrame) -> pd.Series:
    """The history row of the epoch whose weights model.pth holds: the best `metrics.MODEL_CHOICE`; of epochs tied
    on it, the one of lowest valid loss (then the first)."""
    scores = history[MODEL_CHOICE]
    if scores.isna().all():  # a run from before the model-choice score: it chose by valid mean Dice
        scores = history.valid_dice_mean
    tied = history[scores == scores.max()]
    return tied.loc[tied.valid_loss.idxmin()] if tied.valid_loss.notna().any() else history.loc[scores.idxmax()]


def training_summary(run_dir: str | Path) -> str:
    "The line `covfast train` ends with: where the run is, and which epoch model.pth holds, with its figures."
    history = read_history(run_dir)
    if history.empty:
        return f"Done: {run_dir} (no epoch completed)"
    best = best_epoch(history)
    figures = (f"valid COVID-19 Dice {best.valid_dice_covid:.4f}, empty-truth images left empty {best.valid_empty_left:.4f}, "
               f"score {best[MODEL_CHOICE]:.4f}" if best[MODEL_CHOICE] == best[MODEL_CHOICE] else
               f"valid mean Dice {best.valid_dice_mean:.4f}")
    done = f"Done: {run_dir} (model.pth holds epoch {int(best.epoch)} of {int(history.epoch.max())}: {figures})"
    if best.get("valid_dice_covid") == 0:  # said plainly: a user would otherwise read on as if it outlined something
        done += ("\nThis model outlines no COVID-19 infection yet (valid COVID-19 Dice 0 at the epoch it kept): train "
                 "longer (more --epochs), or try another --lr (covfast lr-find)")
    return done


def find_lr(
    spec: RunSpec,  # the settings `covfast train` would train with: lr_find runs on the model it would build
    out: str | Path | None = None,  # folder for lr_find.png (default: runs_dir/lr-find-<arch>-<time>)
    runs_dir: str | Path = "runs",
    device: str | None = None,
    num_workers: int = 0,
    num_it: int | None = None,  # mini-batches to try (default: two epochs of the training set, at most 100)
) -> tuple[dict[str, float], Path, str | None]:
    "fastai lr_find: the valley/slide/minimum/steep suggestions, the saved plot with them marked, and any doubt about the valley."
    spec = spec.replace(data_root=str(resolve_root(spec.data_root).resolve()))
    check_training_data(spec.data_root, spec.classes, spec.bs)  # as train does: a damaged file is named before any batch
    learn, _ = learner_for_spec(spec, device=device, num_workers=num_workers)
    out = Path(out) if out else Path(runs_dir) / f"lr-find-{arch_slug(spec.arch)}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    suggestions, fig = _lr_find(learn, num_it=num_it)
    path = out / "lr_find.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    values = {k: float(v) for k, v in suggestions._asdict().items()}
    pd.DataFrame([values]).to_csv(out / "lr_find.csv", index=False)
    return values, path, lr_find_doubt(values, learn)
