"""Numeric precision: fp32, or bf16/fp16 autocast with channels_last where the hardware runs it fast.

`auto` picks, per device: on a CUDA GPU bf16 mixed precision where the GPU supports it, else fp16 with
loss scaling; on a CPU bf16 autocast + channels_last where oneDNN runs bf16 natively (AVX512-BF16 or
AMX: about twice the fp32 rate for convolutions), else fp32. Autocast runs the convolutions and matrix
products in the low precision; the model's weights, the optimizer, the loss, the metrics and the
empty-mask decision stay fp32 (the logits are cast back before any of them sees them).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import AMPMode, MixedPrecision
from fastai.learner import Learner
from fastcore.foundation import L
from torch.amp import GradScaler

from .errors import CovfastError

__all__ = ["PRECISIONS", "Precision", "cpu_runs_bf16", "resolve_precision", "RunPrecision", "DeviceMixedPrecision",
           "use_precision",
           "learner_precision", "memory_format", "autocast"]

PRECISIONS = ("auto", "fp32", "bf16")
_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


@dataclass(frozen=True)
class Precision:
    "What a run computes in, and why (config.json records both)."
    mode: str  # fp32, bf16 or fp16
    reason: str

    @property
    def dtype(self) -> torch.dtype | None:
        "The autocast dtype, or None for plain fp32."
        return _DTYPES.get(self.mode)


def cpu_runs_bf16() -> bool:
    """Whether this CPU runs bf16 convolutions natively, as PyTorch and oneDNN report it.

    oneDNN accepts bf16 on any AVX512 CPU, emulating it where the instructions are missing (slower than
    fp32); the native ones are AVX512-BF16 and AMX, which PyTorch's own cpuinfo probes report.
    """
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and bool(
            torch.cpu._is_avx512_bf16_supported() or torch.cpu._is_amx_tile_supported())
    except (AttributeError, RuntimeError):  # a PyTorch build without these probes: assume not
        return False


def resolve_precision(requested: str, device: str | torch.device) -> Precision:
    "The precision `requested` ('auto', 'fp32' or 'bf16') comes to on `device`."
    if requested not in PRECISIONS:
        raise CovfastError(f"precision {requested!r} is not one of {', '.join(PRECISIONS)}")
    device = torch.device(device)
    if requested == "fp32":
        return Precision("fp32", "asked for (--precision fp32)")
    if device.type == "cuda":
        if torch.cuda.is_bf16_supported():
            return Precision("bf16", "CUDA GPU with bf16 support: bf16 mixed precision")
        if requested == "bf16":
            raise CovfastError("--precision bf16: this GPU does not support bf16; use --precision auto (fp16) or fp32")
        return Precision("fp16", "CUDA GPU without bf16: fp16 mixed precision with loss scaling")
    if device.type == "cpu":
        native = cpu_runs_bf16()
        if requested == "bf16":
            return Precision("bf16", "asked for (--precision bf16)" + ("" if native else
                             "; this CPU has no native bf16, so oneDNN emulates it (slower than fp32)"))
        if native:
            return Precision("bf16", "CPU with native bf16 (oneDNN: AVX512-BF16 or AMX): bf16 autocast + channels_last")
        return Precision("fp32", "CPU without native bf16 (no AVX512-BF16 or AMX): fp32")
    if requested == "bf16":
        raise CovfastError(f"--precision bf16 is supported on CPU and CUDA devices, not {device.type}")
    return Precision("fp32", f"{device.type} device: fp32")


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
    channels_last = precision.dtype is not None or torch.device(learn.dls.device or "cpu").type == "cuda"
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
    dtype = learner_precision(learn).dtype
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(learn.dls.device or "cpu").type, dtype=dtype)
