"""Where and in what precision a model runs: the device, and fp32 or bf16/fp16 autocast where the hardware runs it
fast (`resolve_precision`); PyTorch only, no fastai (the learner's precision callbacks are in covfast/precision.py).

`auto` picks, per device: on a CUDA GPU bf16 mixed precision where the GPU supports it, else fp16 with
loss scaling; on a CPU bf16 autocast + channels_last where oneDNN runs bf16 natively (AVX512-BF16 or
AMX: about twice the fp32 rate for convolutions), else fp32.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from .errors import CovfastError

__all__ = ["PRECISIONS", "Precision", "cpu_runs_bf16", "resolve_precision", "channels_last", "autocast",
           "pick_device"]

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


def channels_last(precision: Precision, device: str | torch.device) -> bool:
    "Whether a model runs channels_last: under autocast (bf16/fp16), and on CUDA in any precision (as fast there)."
    return precision.dtype is not None or torch.device(device).type == "cuda"


def autocast(precision: Precision, device: str | torch.device):
    "A context that runs a model in `precision` on `device`: autocast in its dtype, or nothing for plain fp32."
    if precision.dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=precision.dtype)


def pick_device(device: str | None = None) -> torch.device:
    "'cpu', 'cuda' (or 'cuda:N') or None/'auto' (CUDA when present)."
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise CovfastError(f"--device {device!r} is not a device covfast runs on; use cpu or cuda (or cuda:N)")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CovfastError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(device)
