"""A fastai Learner for an arch: model, loss, metrics, pretrained policy, device and precision."""

from __future__ import annotations

import contextlib
import io
import sys
from dataclasses import dataclass
from typing import Any

import matplotlib.pyplot as plt
import pandas as pd
import torch
import torchvision
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from fastai.vision.learner import create_unet_model, model_meta
from fastai.vision.models.unet import DynamicUnet
from torch import nn

from .config import DEFAULT_CLS_WEIGHT, Config
from .data import covid_dataloaders, loader_settings
from .errors import CovfastError
from .losses import SegLoss
from .metrics import (EmptyGate, SegmentationStats, confusion_counts, dice_from_counts, learner_threshold,
                      segmentation_metrics)
from .models import DEFAULT_FEATURES, AttentionUNet, DynamicUnetWithImageHead, check_arch, timm_encoder
from .precision import resolve_precision, use_precision

__all__ = ["Pretrained", "probe_pretrained", "build_model", "CovfastLearner", "covfast_learner", "config_learner", "run_config", "learner_for_config",
           "pick_device"]


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
                weights = torchvision.models.get_model_weights(arch).DEFAULT
                weights.get_state_dict(progress=False, check_hash=True)
        return Pretrained(True)
    except Exception as e:  # offline, no cache, blocked hub: train from scratch rather than fail
        reason = f"ImageNet weights for {arch} could not be loaded ({e.__class__.__name__}: {str(e)[:120]}); trained from scratch"
        return Pretrained(False, reason)


def build_model(arch: str, n_out: int = 2, img_size: tuple[int, int] = (256, 256), pretrained: bool = False,
                features: tuple[int, ...] = DEFAULT_FEATURES, image_head: bool = False) -> nn.Module:
    """The segmentation model for `arch`: the one factory behind the learner, the benchmark and the tests.

    attention-unet -> `AttentionUNet`; resnet18/34/50/101 -> fastai's DynamicUnet on the torchvision
    encoder (as `unet_learner` builds it); timm/NAME -> DynamicUnet on the timm encoder. `img_size` is
    what DynamicUnet sizes its decoder with; `pretrained` downloads (or finds cached) ImageNet weights.
    `image_head` adds the image-level logit (on the bottleneck, or the encoder's deepest features) as
    output channel `n_out`.
    """
    arch = check_arch(arch)
    if arch == "attention-unet":
        return AttentionUNet(3, n_out, features, image_head=image_head)
    if arch.startswith("timm/"):
        unet = DynamicUnet(timm_encoder(arch[5:], pretrained), n_out, img_size)
    else:
        unet = create_unet_model(getattr(torchvision.models, arch), n_out, img_size, pretrained=pretrained)
    return DynamicUnetWithImageHead(unet) if image_head else unet


def _unet(model: nn.Module) -> nn.Module:
    return model.unet if isinstance(model, DynamicUnetWithImageHead) else model


def _encoder_splitter(model: nn.Module) -> list:
    "Two parameter groups, the encoder and the rest (decoder, image head), for discriminative learning rates (timm encoders)."
    encoder = list(_unet(model)[0].parameters())
    ids = {id(p) for p in encoder}
    return [encoder, [p for p in model.parameters() if id(p) not in ids]]


def _resnet_splitter(arch: str):
    "fastai's own parameter groups for a torchvision ResNet U-Net (stem + first stages, later stages, decoder), the image head with the decoder."
    split = model_meta[getattr(torchvision.models, arch)]["split"]

    def splitter(model: nn.Module) -> list:
        groups = list(split(_unet(model)))
        if isinstance(model, DynamicUnetWithImageHead):
            groups[-1] = [*groups[-1], *model.image_head.parameters()]
        return groups
    return splitter


class CovfastLearner(Learner):
    "A fastai Learner whose `show_results` titles each prediction with the image head's probability, the decision and its Dice."

    def show_results(self, ds_idx: int = 1, dl=None, max_n: int = 9, shuffle: bool = True, **kwargs) -> pd.DataFrame:
        """fastai's show_results (truth | prediction in red) on one batch, each prediction titled with p(COVID-19),
        the decision and the image's Dice (docs/metrics.md: 1 when both masks are empty). Returns the same, one
        row per image shown."""
        if dl is None:
            dl = self.dls[ds_idx].new(shuffle=shuffle)
        b = dl.one_batch()
        preds, _, decoded = self.get_preds(dl=[b], with_decoded=True)
        dl.show_results(b, decoded, max_n=max_n, **kwargs)
        n = min(max_n, len(decoded))
        truth = b[1][:n].cpu() > 0
        dice = dice_from_counts(*confusion_counts(decoded[:n] > 0, truth).T).tolist()
        probs = self.loss_func.probability(preds) if hasattr(self.loss_func, "probability") else None
        threshold = learner_threshold(self)
        table = pd.DataFrame({"truth": ["infection" if t.any() else "empty" for t in truth], "dice": dice})
        if probs is not None:
            table.insert(1, "p_covid", probs[:n].tolist())
            table.insert(2, "decision", ["infected" if p > threshold else "empty mask" for p in table.p_covid])
        # fastai lays the figure out as target | prediction pairs: title the predictions
        shown = [ax for ax in plt.gcf().axes if ax.images]
        for ax, row in zip(shown[1::2], table.itertuples()):
            head = f"p(COVID-19) {row.p_covid:.2f}: {row.decision}\n" if probs is not None else ""
            ax.set_title(f"{head}Dice {row.dice:.2f}", fontsize=9)
        return table


def covfast_learner(
    dls: DataLoaders,
    arch: str,  # attention-unet, resnet18/34/50/101 or timm/NAME
    pretrained: bool = True,  # ImageNet weights for the encoder (not for attention-unet)
    features: tuple[int, ...] = DEFAULT_FEATURES,  # attention-unet channel widths
    empty_weight: float = 0.0,  # weight of `SegLoss`'s image-level term
    dice_weight: float = 1.0,  # weight of `SegLoss`'s Dice term
    gate_topk: float = 0.0,  # `gate_empty`'s share of pixels at inference (runs before the image head); 0: off
    gate_margin: float = 0.0,  # `gate_empty`'s evidence threshold (`covfast calibrate` sets it)
    cls_weight: float = DEFAULT_CLS_WEIGHT,  # weight of the image head's BCE; 0 builds the model without the head
    threshold: float = 0.5,  # the image probability at or below which a mask is empty (`covfast calibrate` sets it)
    warn: bool = True,  # print the one-line warning when pretrained weights cannot be had
    precision: str | None = "auto",  # auto, fp32 or bf16, as --precision; None: fp32, no callbacks (the caller sets it)
) -> tuple[Learner, Pretrained]:
    """A Learner with covfast's loss and metrics, in `precision` on its data's device (bf16 autocast where the CPU
    runs it natively: about twice as fast); a pretrained encoder comes frozen (unfreeze before the main phase)."""
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
    loss = SegLoss(empty_weight=empty_weight, dice_weight=dice_weight, cls_weight=cls_weight, threshold=threshold)
    common = dict(loss_func=loss, opt_func=Adam, cbs=[EmptyGate(gate_topk, gate_margin), stats],
                  metrics=segmentation_metrics(stats))
    head = cls_weight > 0
    if arch == "attention-unet":
        learn = CovfastLearner(dls, build_model(arch, features=features, image_head=head), **common)
    else:
        # DynamicUnet sizes its decoder on a batch, as fastai's unet_learner does
        model = build_model(arch, img_size=dls.one_batch()[0].shape[-2:], pretrained=status.used, image_head=head)
        splitter = _encoder_splitter if arch.startswith("timm/") else _resnet_splitter(arch)
        learn = CovfastLearner(dls, model, splitter=splitter, **common)
        if status.used:
            learn.freeze()  # a pretrained encoder comes frozen, as unet_learner leaves it
    learn.covfast_arch = arch
    if precision is not None:
        use_precision(learn, resolve_precision(precision, dls.device))
    return learn, status


def config_learner(dls: DataLoaders, cfg: dict[str, Any], pretrained: bool | None = None,
                   warn: bool = True) -> tuple[Learner, Pretrained]:
    "`covfast_learner` on `dls` with a run's config.json model and loss settings (`pretrained` overrides the config's)."
    return covfast_learner(dls, cfg["arch"], pretrained=cfg.get("pretrained", True) if pretrained is None else pretrained,
                           features=tuple(cfg.get("features") or DEFAULT_FEATURES),
                           empty_weight=cfg.get("empty_weight", 0.0), dice_weight=cfg.get("dice_weight", 1.0),
                           gate_topk=cfg.get("gate_topk", 0.0), gate_margin=cfg.get("gate_margin", 0.0),
                           # a run made before the image head has no cls_weight: no head, as it was trained
                           cls_weight=cfg.get("cls_weight", 0.0), threshold=cfg.get("threshold", 0.5), warn=warn,
                           precision=None)  # train and load_run set the run's own


def run_config(cfg: dict[str, Any]) -> Config:
    "The `Config` fields of a run's config.json."
    return Config(**{k: (tuple(v) if k == "classes" else v) for k, v in cfg.items() if k in Config.__dataclass_fields__})


def learner_for_config(cfg: dict[str, Any], pretrained: bool | None = None, warn: bool = True,
                       device: torch.device | None = None, **dl_kwargs) -> tuple[Learner, Pretrained]:
    """The training learner for a run's config.json settings: its Train/Val data, seed and loader settings
    (train, resume, lr-find, the benchmark). `device` overrides the config's (a distributed process's own GPU).
    A learner without training data, for scoring and prediction, is `inference.inference_learner`."""
    config = run_config(cfg)
    device = device or pick_device(cfg.get("device"))
    dl_kwargs = {**loader_settings(device, config.num_workers), **dl_kwargs}
    config = config.replace(num_workers=dl_kwargs.pop("num_workers"))
    # cuDNN's deterministic kernels cost GPU speed; on CPU a seed reproduces the run exactly
    set_seed(config.seed, reproducible=device.type != "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dls = covid_dataloaders(cfg["data_root"], config, augment=cfg.get("augment", True), device=device, **dl_kwargs)
    return config_learner(dls, cfg, pretrained, warn)


def pick_device(device: str | None = None) -> torch.device:
    "'cpu', 'cuda' (or 'cuda:N') or None/'auto' (CUDA when present)."
    if device in (None, "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if str(device).split(":")[0] not in ("cpu", "cuda"):
        raise CovfastError(f"--device {device!r} is not a device covfast runs on; use cpu or cuda (or cuda:N)")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise CovfastError("--device cuda asked for, but PyTorch sees no CUDA GPU; use --device cpu")
    return torch.device(device)
