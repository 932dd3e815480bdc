"""The architecture registry: one `Arch` entry per architecture covfast trains, readable without PyTorch.

An entry says how the model is built, how its parameters split into groups for discriminative learning
rates, whether and how it gets ImageNet weights, and which options it takes. The learner, the spec, the CLI's
help and `check_arch` all read it, so a new architecture is one entry here (its builder may live in
covfast/models/) and its test. The builders import PyTorch only when called: a typo in `covfast train ARCH`
is refused at once, before the seconds that torch and fastai take to import.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

from .errors import CovfastError

__all__ = ["Arch", "ARCHS", "RESNETS", "ENSEMBLE", "DEFAULT_FEATURES", "arch_entry", "check_arch", "arch_slug",
           "arch_help"]

# torchvision's ResNets that fastai's DynamicUnet takes as an encoder
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
# the arch of a run made of trained runs by `covfast ensemble` (covfast/ensemble.py): not trained, not an ARCH to train
ENSEMBLE = "ensemble"
# the Attention U-Net's channel widths per level, finest first (its depth is their number)
DEFAULT_FEATURES: tuple[int, ...] = (16, 32, 64, 128, 256)


def _models() -> Any:
    from . import models  # PyTorch, fastai and timm load here, when a model is built
    return models


@dataclass(frozen=True)
class Arch:
    "One architecture: what `covfast train NAME` builds and how it trains."
    name: str  # as `covfast train` takes it; a name ending in '/' is a family (timm/NAME)
    help: str  # one line for --help
    # (spec, img_size (h, w) or None, pretrained) -> the model, returning `outputs.ModelOutput`
    build: Callable[..., Any]
    # arch name -> fastai splitter (parameter groups for discriminative lrs); None: one group
    splitter: Callable[[str], Callable] | None = None
    # arch name -> None when ImageNet weights can be had (downloaded or cached); raises saying why not. None: it has none
    fetch_pretrained: Callable[[str], None] | None = None
    features: bool = False  # takes --features (its channel widths)
    sized_on_batch: bool = False  # the model sizes itself on a batch (fastai's DynamicUnet sizes its decoder so)
    aliases: tuple[str, ...] = ()


ARCHS: dict[str, Arch] = {a.name: a for a in [
    Arch("attention-unet", "covfast's Attention U-Net (from scratch; --features sets its widths)",
         build=lambda spec, img_size, pretrained: _models().build_attention_unet(spec),
         features=True, aliases=("attention_unet", "attunet")),
    *[Arch(r, "fastai's DynamicUnet on a torchvision ResNet (an ImageNet encoder where one can be had)",
           build=lambda spec, img_size, pretrained: _models().build_torchvision_unet(spec, img_size, pretrained),
           splitter=lambda arch: _models().resnet_splitter(arch),
           fetch_pretrained=lambda arch: _models().fetch_torchvision_weights(arch), sized_on_batch=True)
      for r in RESNETS],
    Arch("timm/", "fastai's DynamicUnet on a timm CNN encoder, e.g. timm/efficientnet_b0",
         build=lambda spec, img_size, pretrained: _models().build_timm_unet(spec, img_size, pretrained),
         splitter=lambda arch: _models().encoder_splitter,
         fetch_pretrained=lambda arch: _models().fetch_timm_weights(arch), sized_on_batch=True),
]}


def arch_entry(arch: str) -> Arch:
    "The registry entry of a canonical arch name (`check_arch` makes one)."
    if arch in ARCHS:
        return ARCHS[arch]
    family = arch.split("/")[0] + "/"
    if "/" in arch and family in ARCHS:
        return ARCHS[family]
    raise CovfastError(f"no architecture {arch!r} in covfast's registry ({', '.join(ARCHS)})")


def arch_help() -> str:
    "The architectures, as --help lists them (those of one help line together)."
    groups: dict[str, list[str]] = {}
    for a in ARCHS.values():
        groups.setdefault(a.help, []).append(a.name + ("NAME" if a.name.endswith("/") else ""))
    return "; ".join(f"{', '.join(names)}: {text}" for text, names in groups.items())


def check_arch(arch: str) -> str:
    "The canonical arch name, or a CovfastError listing what is known (timm/NAME is checked against timm's list)."
    a = arch.strip()
    for entry in ARCHS.values():
        if not entry.name.endswith("/") and a.lower() in (entry.name, *entry.aliases):
            return entry.name
    if a.lower() == ENSEMBLE:
        raise CovfastError("an ensemble is not trained: make one of trained runs with `covfast ensemble RUN RUN... "
                           "--name NAME`")
    if a.startswith("timm/") and len(a) > 5:
        import timm
        if not timm.is_model(a[5:]):
            raise CovfastError(f"unknown timm model {a[5:]!r}; list them with `python -c \"import timm; print(timm.list_models())\"`")
        return a
    names = [n for n in ARCHS if not n.endswith("/")]
    raise CovfastError(f"unknown architecture {arch!r}: use {', '.join(names)} or timm/NAME (e.g. timm/efficientnet_b0)")


def arch_slug(arch: str) -> str:
    "The arch as it appears in run directory names."
    return arch.replace("/", "-")
