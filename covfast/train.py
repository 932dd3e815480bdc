"""One-cycle training into a run directory, lr finding, and resuming an interrupted run."""

from __future__ import annotations

import contextlib
import functools
import platform
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.callback.schedule import minimum, slide, steep, valley
from fastai.learner import Learner
from fastai.torch_core import set_seed
from fastprogress.fastprogress import IN_NOTEBOOK

from . import __version__
from . import distributed
from .config import Config, parse_lr
from .data import covid_dataloaders, inference_dataloaders, loader_settings
from .dataset import resolve_root
from .errors import CovfastError
from .learner import covfast_learner, pick_device, use_gpu_speedups
from .models import DEFAULT_FEATURES, arch_slug, check_arch
from .runs import (HISTORY_COLUMNS, atomic_save, load_weights, new_run_dir, plain, read_history,
                   read_json, resolve_run, write_history, write_json)

__all__ = ["RunDirCallback", "train", "find_lr", "learner_for_config", "versions"]


def versions() -> dict[str, str]:
    import fastai
    import timm
    import torchvision
    return {"covfast": __version__, "fastai": fastai.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "python": platform.python_version()}


class RunDirCallback(Callback):
    "After each completed epoch: a history.csv row, checkpoint.pth (atomic) and model.pth when valid mean Dice improves."
    order = 65  # after Recorder (50) has the epoch's values and SegmentationStats (60) its Dice

    def __init__(self, run_dir: Path, epoch_offset: int = 0, monitor: str = "valid_dice_mean"):
        self.run_dir, self.epoch_offset, self.monitor = Path(run_dir), epoch_offset, monitor
        self.history = read_history(run_dir)
        self.best = self.history[monitor].max() if len(self.history) else -float("inf")

    def before_epoch(self):
        self._t0, self._trained = time.time(), False

    def before_train(self):
        self._trained = True  # epochs skipped on resume never reach here

    def after_epoch(self):
        if not self._trained:
            return
        log = dict(zip(self.recorder.metric_names, self.recorder.log))
        row = {k: float(log[k]) for k in HISTORY_COLUMNS if k in log and k != "epoch"}
        row.update(epoch=self.epoch_offset + self.epoch + 1, lr=float(self.opt.hypers[-1]["lr"]),
                   seconds=round(time.time() - self._t0, 2))
        self.history = pd.concat([self.history, pd.DataFrame([row])], ignore_index=True)[HISTORY_COLUMNS]
        self.history["epoch"] = self.history["epoch"].astype(int)
        model = distributed.unwrap(self.learn.model)
        atomic_save({"model": model.state_dict(), "opt": plain(self.opt.state_dict()), "epoch": int(row["epoch"])},
                    self.run_dir / "checkpoint.pth")
        if row[self.monitor] > self.best:
            self.best = row[self.monitor]
            atomic_save(model.state_dict(), self.run_dir / "model.pth")
        write_history(self.run_dir, self.history)  # last: a row means its checkpoint is on disk


def learner_for_config(cfg: dict[str, Any], pretrained: bool | None = None, warn: bool = True,
                       inference: bool = False, device: torch.device | None = None, **dl_kwargs) -> tuple[Learner, Any]:
    """Data and learner for a run's config.json settings (used by train, resume, lr-find and evaluation).

    `inference=True` builds the learner on `inference_dataloaders` (validation transforms only), so
    it needs no training data: evaluate, report, compare and predict work from the run directory alone.
    `device` overrides the config's (a distributed process's own GPU).
    """
    config = Config(**{k: (tuple(v) if k == "classes" else v) for k, v in cfg.items() if k in Config.__dataclass_fields__})
    device = device or pick_device(cfg.get("device"))
    if inference:
        dls = inference_dataloaders(config.img_size, config.bs, device=device)
    else:
        dl_kwargs = {**loader_settings(device, config.num_workers), **dl_kwargs}
        config = config.replace(num_workers=dl_kwargs.pop("num_workers"))
        # cuDNN's deterministic kernels cost GPU speed; on CPU a seed reproduces the run exactly
        set_seed(config.seed, reproducible=device.type != "cuda")
        if device.type == "cuda":
            torch.backends.cudnn.benchmark = True
        dls = covid_dataloaders(cfg["data_root"], config, augment=cfg.get("augment", True), device=device, **dl_kwargs)
    learn, status = covfast_learner(dls, cfg["arch"], pretrained=cfg.get("pretrained", True) if pretrained is None else pretrained,
                                    features=tuple(cfg.get("features") or DEFAULT_FEATURES),
                                    empty_weight=cfg.get("empty_weight", 0.0),
                                    dice_weight=cfg.get("dice_weight", 1.0), gate_topk=cfg.get("gate_topk", 0.0),
                                    gate_margin=cfg.get("gate_margin", 0.0),
                                    warn=warn)
    return learn, status


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
    if not IN_NOTEBOOK:
        # lr_find stops mid-epoch when the loss diverges, leaving the console progress bar's line open;
        # end it, so what the caller prints next (`covfast lr-find`, `train --lr auto`) starts a line
        print()
    fig = plt.figure(figsize=(6, 4))
    learn.recorder.plot_lr_find(suggest_funcs=SUGGESTIONS)
    return suggestions, plt.gcf() if plt.gcf().axes else fig


def _counts(learn: Learner) -> dict[str, dict[str, int]]:
    return {split: dl.items.label.value_counts().to_dict() for split, dl in (("Train", learn.dls.train), ("Val", learn.dls.valid))}


def train(
    arch: str,  # attention-unet, resnet18/34/50/101 or timm/NAME
    data: str | Path | None = None,  # dataset root (default: config.data_path)
    config: Config | None = None,  # img_size, bs, epochs, lr, classes, seed, num_workers, runs_dir
    name: str | None = None,  # run directory name under runs_dir (default <arch>-<YYYYmmdd-HHMMSS>)
    pretrained: bool = True,  # ImageNet encoder weights; falls back to scratch (with a warning) when offline
    device: str | None = None,  # 'cpu', 'cuda' or None for automatic
    fp16: bool = True,  # mixed precision on CUDA (bf16 where supported)
    resume: str | Path | None = None,  # continue this run from its last completed epoch
    features: tuple[int, ...] = DEFAULT_FEATURES,  # attention-unet channel widths
    empty_weight: float = 0.0,  # weight of the loss's image-level term
    dice_weight: float = 1.0,  # weight of the loss's Dice term (cross-entropy has 1)
    gate_topk: float = 0.02,  # inference gate: share of pixels that must, on average, be infection
    augment: bool = True,  # `xray_augmentations` on the training batches
    cbs: list | None = None,  # extra fastai callbacks
) -> Path:
    "Train `arch` with one-cycle into a run directory (config.json, history.csv, model.pth, checkpoint.pth)."
    if resume is not None:
        return _resume(resume, config, device, cbs)
    config = config or Config()
    arch = check_arch(arch)
    lr = parse_lr(config.lr)  # fail on a bad --lr before any work
    if lr is None and distributed.world_size() > 1:  # each process's lr_find would pick its own rate
        raise CovfastError("--lr auto is not available in a distributed run; run `covfast lr-find` first and pass --lr")
    run_device = distributed.start(device)
    cfg = {"arch": arch, **config.to_dict(), "data_root": str(resolve_root(data or config.data_path).resolve()),
           "pretrained": pretrained, "device": device or "auto", "fp16": fp16, "empty_weight": empty_weight,
           "dice_weight": dice_weight, "gate_topk": gate_topk, "augment": augment,
           "features": list(features) if arch == "attention-unet" else None}
    learn, status = learner_for_config(cfg, device=run_device)
    run_dir = _new_run_dir(config.runs_dir, name, arch_slug(arch))
    learn.path = run_dir
    cfg.update(run_name=run_dir.name, created=datetime.now().isoformat(timespec="seconds"),
               pretrained_requested=pretrained, pretrained=status.used, pretrained_reason=status.reason,
               freeze_epochs=1 if status.used and config.epochs >= 2 else 0,
               device=str(learn.dls.device), precision=use_gpu_speedups(learn, fp16),
               counts=_counts(learn), versions=versions(), status="running", processes=distributed.world_size())
    if lr is None:
        suggestions, fig = _lr_find(learn)
        fig.savefig(run_dir / "lr_find.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        lr = float(suggestions.valley)
        if not lr > 0:
            raise CovfastError("lr_find's curve was too short for a valley; pass --lr with a number")
        print(f"lr_find valley: {lr:.2e} (plot: {run_dir / 'lr_find.png'})")
    cfg["lr_used"] = lr
    if distributed.is_main():
        write_json(run_dir / "config.json", cfg)
    return _fit(learn, run_dir, cfg, completed=0, cbs=cbs)


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


def _resume(resume: str | Path, config: Config | None, device: str | None, cbs: list | None) -> Path:
    runs_dir = (config or Config()).runs_dir
    run_dir = resolve_run(resume, runs_dir)
    cfg = read_json(run_dir / "config.json")
    history = read_history(run_dir)
    completed = int(history["epoch"].max()) if len(history) else 0
    if completed >= cfg["epochs"]:
        raise CovfastError(f"run {run_dir} already completed its {cfg['epochs']} epochs; nothing to resume")
    if device is not None:
        cfg["device"] = device
    run_device = distributed.start(cfg.get("device"))
    # the run's own settings, pretrained status included: the encoder weights come from the checkpoint
    learn, _ = learner_for_config(cfg, pretrained=False, warn=False, device=run_device)
    learn.path = run_dir
    use_gpu_speedups(learn, cfg.get("fp16", True))
    if completed:
        ckpt = load_weights(run_dir / "checkpoint.pth")
        if int(ckpt["epoch"]) != completed:
            raise CovfastError(f"{run_dir / 'checkpoint.pth'} holds epoch {ckpt['epoch']} but history.csv ends at "
                               f"epoch {completed}; the run directory was changed by hand")
        learn.model.load_state_dict(ckpt["model"])
        learn._resume_opt = ckpt["opt"]
    if distributed.is_main():
        print(f"Resuming {run_dir} after epoch {completed} of {cfg['epochs']}")
    return _fit(learn, run_dir, cfg, completed=completed, cbs=cbs)


def _fit(learn: Learner, run_dir: Path, cfg: dict[str, Any], completed: int, cbs: list | None) -> Path:
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
            if getattr(learn, "_resume_opt", None) is not None and completed > start:
                learn.opt.load_state_dict(learn._resume_opt)
            learn._resume_opt = None
            with context():
                learn.fit_one_cycle(n, lr_max, start_epoch=max(0, completed - start),
                                    cbs=[*([RunDirCallback(run_dir, epoch_offset=start)] if main else []), *(cbs or [])])
            completed = start + n
    except KeyboardInterrupt:
        if not main:
            raise
        cfg["status"] = "interrupted"
        write_json(run_dir / "config.json", cfg)
        done = len(read_history(run_dir))
        print(f"\nInterrupted after epoch {done} of {epochs}; checkpoint kept. "
              f"Continue with: covfast train {cfg['arch']} --resume {run_dir}", file=sys.stderr)
        raise
    if distributed.world_size() > 1:
        cfg["weights_agree"] = distributed.weights_agree(learn.model)  # every process takes part
        if main and not cfg["weights_agree"]:
            print("covfast: warning: the processes ended with different weights, so they did not train as one "
                  "model (DDP); model.pth holds the main process's", file=sys.stderr)
    if not main:
        return run_dir
    cfg["status"] = "complete"
    write_json(run_dir / "config.json", cfg)
    history = read_history(run_dir)
    best = history.loc[history.valid_dice_mean.idxmax()]
    print(f"Done: {run_dir} (best valid mean Dice {best.valid_dice_mean:.4f} at epoch {int(best.epoch)}; "
          f"model.pth holds those weights)")
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
    out = Path(out) if out else Path(config.runs_dir) / f"lr-find-{arch_slug(arch)}-{datetime.now():%Y%m%d-%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    suggestions, fig = _lr_find(learn, num_it=num_it)
    path = out / "lr_find.png"
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    values = {k: float(v) for k, v in suggestions._asdict().items()}
    pd.DataFrame([values]).to_csv(out / "lr_find.csv", index=False)
    return values, path
