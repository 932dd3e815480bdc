"""One-cycle training into a run directory, lr finding, and resuming an interrupted run."""

from __future__ import annotations

import contextlib
import functools
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any, Callable

import matplotlib.pyplot as plt
import pandas as pd
import torch
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.learner import Learner

from . import distributed
from .callbacks import RunDiverged, RunDirCallback, restore_random_states
from .config import DEFAULT_CLS_WEIGHT, Config, parse_lr
from .dataset import check_tree, resolve_root
from .errors import CovfastError, format_problems
from .learner import learner_for_config, pick_device
from .models import DEFAULT_FEATURES, arch_slug, check_arch
from .precision import resolve_precision, use_precision
from .synth import is_synthetic
from .runs import (RunLock, load_model_weights, load_weights, new_run_dir, read_history, read_run_config, resolve_run,
                   versions, write_history, write_json)

__all__ = ["TrainingDiverged", "TrainingInterrupted", "check_training_data", "train", "find_lr"]

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


def _lr_find(learn: Learner, num_it: int = 100):
    "fastai lr_find in a scratch folder (it saves the model there), quietly restoring the model."
    path, model_dir = learn.path, learn.model_dir
    with tempfile.TemporaryDirectory() as tmp:
        learn.path, learn.model_dir = Path(tmp), "models"
        try:
            suggestions = learn.lr_find(suggest_funcs=SUGGESTIONS, num_it=num_it, show_plot=False)
        finally:
            learn.path, learn.model_dir = path, model_dir
    fig = plt.figure(figsize=(6, 4))
    learn.recorder.plot_lr_find(suggest_funcs=SUGGESTIONS)
    return suggestions, plt.gcf() if plt.gcf().axes else fig


def _precision_fields(learn: Learner, requested: str) -> dict[str, str]:
    "Set the learner's precision on its device; config.json's record of what was asked, used and why."
    precision = use_precision(learn, resolve_precision(requested, learn.dls.device))
    return {"precision_requested": requested, "precision": precision.mode, "precision_reason": precision.reason}


def _counts(learn: Learner) -> dict[str, dict[str, int]]:
    return {split: dl.items.label.value_counts().to_dict() for split, dl in (("Train", learn.dls.train), ("Val", learn.dls.valid))}


def train(
    arch: str,  # attention-unet, resnet18/34/50/101 or timm/NAME
    data: str | Path | None = None,  # dataset root (default: config.data_path)
    config: Config | None = None,  # img_size, bs, epochs, lr, classes, seed, num_workers, runs_dir
    name: str | None = None,  # run directory name under runs_dir (default <arch>-<YYYYmmdd-HHMMSS>)
    pretrained: bool = True,  # ImageNet encoder weights; falls back to scratch (with a warning) when offline
    device: str | None = None,  # 'cpu', 'cuda' or None for automatic
    resume: str | Path | None = None,  # continue this run from its last completed epoch
    features: tuple[int, ...] = DEFAULT_FEATURES,  # attention-unet channel widths
    empty_weight: float = 0.0,  # weight of the loss's image-level term
    dice_weight: float = 1.0,  # weight of the loss's Dice term (cross-entropy has 1)
    cls_weight: float = DEFAULT_CLS_WEIGHT,  # weight of the image head's BCE in the loss; 0: no image head (segmentation alone)
    gate_topk: float = 0.0,  # pixel-evidence gate at inference (before the image head): share of pixels; 0: off
    augment: bool = True,  # `xray_augmentations` on the training batches
    keep_checkpoint: bool = False,  # keep checkpoint.pth (weights + optimizer state) once the run is complete
    cbs: list | None = None,  # extra fastai callbacks
    say: Say = _quiet,  # where progress lines go (the CLI passes its echo)
) -> Path:
    """Train `arch` with one-cycle into a run directory (config.json, history.csv, model.pth, checkpoint.pth).

    Ctrl-C raises `TrainingInterrupted` (a KeyboardInterrupt) after marking the run "interrupted"."""
    if resume is not None:
        return _resume(resume, config, device, cbs, say)
    config = config or Config()
    arch = check_arch(arch)
    lr = parse_lr(config.lr)  # fail on a bad --lr before any work
    if lr is None and distributed.world_size() > 1:  # each process's lr_find would pick its own rate
        raise CovfastError("--lr auto is not available in a distributed run; run `covfast lr-find` first and pass --lr")
    pick_device(device)  # an unknown device fails here, in one line
    root = resolve_root(data or config.data_path).resolve()
    check_training_data(root, config.classes, config.bs)  # before any epoch: a bad Val file must not wait for one
    run_device = distributed.start(device)
    cfg = {"arch": arch, **config.to_dict(), "data_root": str(root),
           "pretrained": pretrained, "device": device or "auto", "empty_weight": empty_weight,
           "dice_weight": dice_weight, "cls_weight": cls_weight, "gate_topk": gate_topk, "augment": augment,
           "features": list(features) if arch == "attention-unet" else None, "synthetic_data": is_synthetic(root),
           "keep_checkpoint": keep_checkpoint}
    learn, status = learner_for_config(cfg, device=run_device)
    run_dir = _new_run_dir(config.runs_dir, name, arch_slug(arch))
    try:
        return _start(learn, status, run_dir, cfg, config, lr, cbs, say)
    except TrainingDiverged:
        raise  # its run directory says "diverged", and when
    except Exception:
        # a run that failed before its first epoch holds nothing to resume: leave no directory blocking its name
        if distributed.is_main() and read_history(run_dir).empty:
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def _start(learn: Learner, status, run_dir: Path, cfg: dict[str, Any], config: Config, lr: float | None,
           cbs: list | None, say: Say) -> Path:
    "A new run's config.json, its lr_find when --lr auto, then its one-cycle fit."
    learn.path = run_dir
    cfg.update(run_name=run_dir.name, created=datetime.now().isoformat(timespec="seconds"),
               pretrained_requested=cfg["pretrained"], pretrained=status.used, pretrained_reason=status.reason,
               freeze_epochs=1 if status.used and config.epochs >= 2 else 0,
               device=str(learn.dls.device), **_precision_fields(learn, config.precision),
               counts=_counts(learn), versions=versions(), status="running", processes=distributed.world_size())
    if lr is None:
        suggestions, fig = _lr_find(learn)
        fig.savefig(run_dir / "lr_find.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        lr = float(suggestions.valley)
        if not lr > 0:
            raise CovfastError("lr_find's curve was too short for a valley; pass --lr with a number")
        say(f"lr_find valley: {lr:.2e} (plot: {run_dir / 'lr_find.png'})")
    cfg["lr_used"] = lr
    if distributed.is_main():
        write_json(run_dir / "config.json", cfg)
    with _lock(run_dir):
        return _fit(learn, run_dir, cfg, completed=0, cbs=cbs, say=say)


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


def _resume(resume: str | Path, config: Config | None, device: str | None, cbs: list | None, say: Say) -> Path:
    runs_dir = (config or Config()).runs_dir
    run_dir = resolve_run(resume, runs_dir)
    with _lock(run_dir):  # before reading anything: another process may be writing this run
        cfg = read_run_config(run_dir)
        ckpt = load_weights(run_dir / "checkpoint.pth") if (run_dir / "checkpoint.pth").is_file() else None
        completed = int(ckpt["epoch"]) if ckpt else 0
        finished = max([completed, *read_history(run_dir).epoch.astype(int).tolist()])
        if finished >= cfg["epochs"]:
            raise CovfastError(f"run {run_dir} already completed its {cfg['epochs']} epochs; nothing to resume")
        if ckpt is None and finished:
            raise CovfastError(f"{run_dir} has finished epochs but no checkpoint.pth to resume from; train it again "
                               f"under another --name")
        if device is not None:
            cfg["device"] = device
        run_device = distributed.start(cfg.get("device"))
        # the run's own settings, pretrained status included: the encoder weights come from the checkpoint
        learn, _ = learner_for_config(cfg, pretrained=False, warn=False, device=run_device)
        learn.path = run_dir
        if cfg.get("precision_requested") is None:  # a run from before --precision: fp32 on CPU, mixed on CUDA
            cfg["precision_requested"] = "auto" if learn.dls.device.type == "cuda" and cfg.get("fp16", True) else "fp32"
        cfg.update(_precision_fields(learn, cfg["precision_requested"]))
        if ckpt:
            load_model_weights(learn.model, ckpt["model"], run_dir / "checkpoint.pth")
            learn._resume_opt = ckpt["opt"]
            if "history" in ckpt and distributed.is_main():
                # the checkpoint's rows are the truth: a kill between writing it and history.csv left the csv behind
                write_history(run_dir, pd.DataFrame(ckpt["history"]))
            if "random" in ckpt:
                learn._resume_random = ckpt["random"]
            learn._resume_smooth = ckpt.get("smooth_loss")
        if distributed.is_main():
            say(f"Resuming {run_dir} after epoch {completed} of {cfg['epochs']}")
        return _fit(learn, run_dir, cfg, completed=completed, cbs=cbs, say=say)


def _fit(learn: Learner, run_dir: Path, cfg: dict[str, Any], completed: int, cbs: list | None, say: Say) -> Path:
    "The one-cycle phases (a frozen epoch first for a pretrained encoder), resumable after any epoch."
    lr, epochs, frozen = cfg["lr_used"], cfg["epochs"], cfg.get("freeze_epochs", 0)
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
            if getattr(learn, "_resume_opt", None) is not None and completed > start:  # resuming inside this phase
                learn.opt.load_state_dict(learn._resume_opt)
                smooth = getattr(learn, "_resume_smooth", None)
            learn._resume_opt = learn._resume_smooth = None
            if getattr(learn, "_resume_random", None) is not None:
                restore_random_states(learn, learn._resume_random)  # last, just before the first batch it feeds
                learn._resume_random = None
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
        raise TrainingInterrupted(run_dir, cfg["arch"], len(read_history(run_dir)), epochs) from None
    except RunDiverged as e:
        history = read_history(run_dir)
        cfg.update(status="diverged", diverged_epoch=e.epoch, diverged=e.what)
        if main:
            write_json(run_dir / "config.json", cfg)
        kept = (f"model.pth keeps epoch {int(history.loc[history.valid_dice_mean.idxmax(), 'epoch'])}'s weights, the best "
                f"finite ones" if len(history) and (run_dir / "model.pth").is_file() else "no epoch finished, so there is no model.pth")
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
    if not cfg.get("keep_checkpoint", True):
        # a complete run cannot be resumed: its optimizer state (3x the weights with Adam) is dead weight on disk
        (run_dir / "checkpoint.pth").unlink(missing_ok=True)
    return run_dir


def find_lr(
    arch: str,
    data: str | Path | None = None,
    config: Config | None = None,
    out: str | Path | None = None,  # folder for lr_find.png (default: runs_dir/lr-find-<arch>-<time>)
    pretrained: bool = True,
    device: str | None = None,
    num_it: int = 100,  # mini-batches to try
) -> tuple[dict[str, float], Path]:
    "fastai lr_find: the valley/slide/minimum/steep suggestions and the saved plot."
    config = config or Config()
    arch = check_arch(arch)
    cfg = {"arch": arch, **config.to_dict(), "data_root": str(resolve_root(data or config.data_path).resolve()),
           "pretrained": pretrained, "device": device or "auto"}
    learn, _ = learner_for_config(cfg)
    _precision_fields(learn, config.precision)
    out = Path(out) if out else Path(config.runs_dir) / f"lr-find-{arch_slug(arch)}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    suggestions, fig = _lr_find(learn, num_it=num_it)
    path = out / "lr_find.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    values = {k: float(v) for k, v in suggestions._asdict().items()}
    pd.DataFrame([values]).to_csv(out / "lr_find.csv", index=False)
    return values, path
