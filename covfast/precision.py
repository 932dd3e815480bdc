"""A learner's numeric precision: fp32, or bf16/fp16 autocast with channels_last where the hardware runs it fast
(what `auto` picks is `device.resolve_precision`). Autocast runs the convolutions and matrix
products in the low precision; the model's weights, the optimizer, the loss, the metrics and the
empty-mask decision stay fp32 (the logits are cast back before any of them sees them).
"""

from __future__ import annotations

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.learner import Learner
from fastcore.foundation import L
from torch.amp import GradScaler

from .device import autocast as _autocast, channels_last as _channels_last
from .device import PRECISIONS, Precision, cpu_runs_bf16, resolve_precision  # noqa: F401  (the precision's names too)

__all__ = ["PRECISIONS", "Precision", "cpu_runs_bf16", "resolve_precision", "RunPrecision", "DeviceMixedPrecision",
           "use_precision", "learner_precision", "memory_format", "autocast"]


class RunPrecision(Callback):
    """What a learner computes in (`precision`) and whether its model and input batches are channels_last: held by
    this callback, where covfast's own prediction path (`learner_precision`, `memory_format`, `autocast`) reads it.
    It makes the model channels_last before each fit (as fastai's `ChannelsLast`) and each input batch before its
    step, as the prediction path feeds them."""
    order = -1  # before any callback that changes the model, as fastai's ChannelsLast

    def __init__(self, precision: Precision, channels_last: bool):
        self.precision, self.channels_last = precision, channels_last

    def before_fit(self):
        if self.channels_last:
            self.learn.model.to(memory_format=torch.channels_last)

    def before_batch(self):
        if self.channels_last:
            self.learn.xb = tuple(x.contiguous(memory_format=torch.channels_last) if x.ndim == 4 else x for x in self.xb)


class DeviceMixedPrecision(MixedPrecision):
    """fastai's `MixedPrecision` with autocast on the batches' own device.

    fastai 2.8 always opens `autocast('cuda')`, which does nothing for a model on the CPU; this one opens
    it on the CPU there (bf16 needs no loss scaling, so fastai's GradScaler stays disabled).
    """

    def before_fit(self):
        device = torch.device(self.dls.device or "cpu").type
        dtype = torch.bfloat16 if self.amp_mode == AMPMode.BF16 else torch.float16
        # loss scaling only for fp16 (bf16 has fp32's range), as fastai does
        self.kwargs["enabled"] = dtype == torch.float16
        self.autocast, self.learn.scaler, self.scales = torch.autocast(device, dtype=dtype), GradScaler(device, **self.kwargs), L()


def use_precision(learn: Learner, precision: Precision) -> Precision:
    """Set `learn` up for `precision`: channels_last model and batches and `DeviceMixedPrecision` for bf16/fp16,
    channels_last alone for fp32 on CUDA (as fast there), nothing for fp32 elsewhere; a `RunPrecision` callback
    holds what was chosen."""
    channels_last = _channels_last(precision, learn.dls.device or "cpu")
    learn.add_cb(RunPrecision(precision, channels_last))
    if precision.dtype is not None:
        learn.add_cb(DeviceMixedPrecision(AMPMode(precision.mode)))
    if channels_last:
        learn.model.to(memory_format=torch.channels_last)  # now, for inference too (the callback acts at fit)
    return precision


def _run_precision(learn: Learner) -> RunPrecision | None:
    return next((cb for cb in learn.cbs if isinstance(cb, RunPrecision)), None)


def learner_precision(learn: Learner) -> Precision:
    "The precision `use_precision` gave `learn`; fp32 for a learner it never saw."
    held = _run_precision(learn)
    return held.precision if held is not None else Precision("fp32", "default")


def memory_format(learn: Learner) -> torch.memory_format:
    "The memory format `use_precision` chose for the model's input batches."
    held = _run_precision(learn)
    return torch.channels_last if held is not None and held.channels_last else torch.contiguous_format


def autocast(learn: Learner):
    "A context that runs `learn.model` in its precision outside fastai's loop (covfast's own prediction path)."
    return _autocast(learner_precision(learn), learn.dls.device or "cpu")
