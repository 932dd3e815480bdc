"""A fastai Learner for an arch: model, loss, metrics, pretrained policy, device and precision."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass

import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.vision.learner import unet_learner
from fastai.vision.models.unet import DynamicUnet
from torch import nn

from .losses import SegLoss
from .metrics import EmptyGate, SegmentationStats, segmentation_metrics
from .models import DEFAULT_FEATURES, AttentionUNet, check_arch, timm_encoder

__all__ = ["Pretrained", "probe_pretrained", "covfast_learner", "build_model", "pick_device", "use_gpu_speedups"]


@dataclass
class Pretrained:
    "Whether ImageNet weights are in use, and why not when they were asked for."
    used: bool
    reason: str = ""


def _warn(msg: str) -> None:
    print(f"covfast: warning: {msg}", file=sys.stderr)


def probe_pretrained(arch: str) -> Pretrained:
    "Fetch (or find cached) ImageNet weights for `arch`; offline, say why not in one line."
    arch = check_arch(arch)
    if arch == "attention-unet":
        return Pretrained(False, "attention-unet has no pretrained weights; trained from scratch")
    quiet = io.StringIO()  # torch.hub prints its own 'Downloading ...' line
    try:
        with contextlib.redirect_stderr(quiet):
            if arch.startswith("timm/"):
                timm_encoder(arch[5:], pretrained=True)
            else:
                import torchvision
                weights = torchvision.models.get_model_weights(arch).DEFAULT
                weights.get_state_dict(progress=False, check_hash=True)
        return Pretrained(True)
    except Exception as e:  # offline, no cache, blocked hub: train from scratch rather than fail
        reason = f"ImageNet weights for {arch} could not be loaded ({e.__class__.__name__}: {str(e)[:120]}); trained from scratch"
        return Pretrained(False, reason)


def build_model(arch: str, n_out: int = 2, img_size: tuple[int, int] = (256, 256), pretrained: bool = False,
                features: tuple[int, ...] = DEFAULT_FEATURES) -> nn.Module:
    "The bare segmentation model for `arch` (no weights download unless `pretrained`)."
    arch = check_arch(arch)
    if arch == "attention-unet":
        return AttentionUNet(3, n_out, features)
    if arch.startswith("timm/"):
        return DynamicUnet(timm_encoder(arch[5:], pretrained), n_out, img_size)
    import torchvision
    from fastai.vision.learner import create_unet_model
    return create_unet_model(getattr(torchvision.models, arch), n_out, img_size, pretrained=pretrained)


def _encoder_splitter(model: nn.Module) -> list:
    "Two parameter groups, encoder and the rest, for discriminative learning rates."
    encoder = list(model[0].parameters())
    ids = {id(p) for p in encoder}
    return [encoder, [p for p in model.parameters() if id(p) not in ids]]


def covfast_learner(
    dls: DataLoaders,
    arch: str,  # attention-unet, resnet18/34/50/101 or timm/NAME
    pretrained: bool = True,  # ImageNet weights for the encoder (not for attention-unet)
    features: tuple[int, ...] = DEFAULT_FEATURES,  # attention-unet channel widths
    empty_weight: float = 0.0,  # weight of `SegLoss`'s image-level term
    dice_weight: float = 1.0,  # weight of `SegLoss`'s Dice term
    gate_topk: float = 0.02,  # `gate_empty`'s share of pixels at inference; 0 turns the gate off
    gate_margin: float = 0.0,  # `gate_empty`'s evidence threshold (`covfast calibrate` sets it)
    warn: bool = True,  # print the one-line warning when pretrained weights cannot be had
) -> tuple[Learner, Pretrained]:
    "A Learner with covfast's loss and metrics; a pretrained encoder comes frozen (unfreeze before the main phase)."
    arch = check_arch(arch)
    if arch == "attention-unet":
        status = Pretrained(False, "attention-unet has no pretrained weights; trained from scratch")
    elif pretrained:
        status = probe_pretrained(arch)
        if not status.used and warn:
            _warn(status.reason)
    else:
        status = Pretrained(False, "--no-pretrained")
    stats = SegmentationStats()
    common = dict(loss_func=SegLoss(empty_weight=empty_weight, dice_weight=dice_weight), opt_func=Adam, cbs=[EmptyGate(gate_topk, gate_margin), stats],
                  metrics=segmentation_metrics(stats))
    if arch == "attention-unet":
        learn = Learner(dls, AttentionUNet(3, 2, features), **common)
    elif arch.startswith("timm/"):
        img_size = dls.one_batch()[0].shape[-2:]
        model = DynamicUnet(timm_encoder(arch[5:], status.used), 2, img_size)
        learn = Learner(dls, model, splitter=_encoder_splitter, **common)
        if status.used:
            learn.freeze()
    else:
        import torchvision
        learn = unet_learner(dls, getattr(torchvision.models, arch), n_out=2, pretrained=status.used,
                             normalize=False, **common)  # covfast's DataBlock already normalises
    learn.covfast_arch = arch
    return learn, status


def pick_device(device: str | None = None) -> torch.device:
    "'cpu', 'cuda' or None/'auto' (CUDA when present)."
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        from .errors import CovfastError
        raise CovfastError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(device)


def use_gpu_speedups(learn: Learner, fp16: bool = True) -> str:
    "channels_last and mixed precision (bf16 where supported, else fp16) on CUDA; returns the precision used."
    if learn.dls.device is None or torch.device(learn.dls.device).type != "cuda":
        return "fp32"
    import fastai.callback.channelslast  # noqa: F401  (patches Learner.to_channelslast)
    from fastai.callback.fp16 import AMPMode
    if not fp16:
        learn.to_channelslast(use_amp=False)
        return "fp32"
    mode = AMPMode.BF16 if torch.cuda.is_bf16_supported() else AMPMode.FP16
    learn.to_channelslast(amp_mode=mode)
    return mode.value
