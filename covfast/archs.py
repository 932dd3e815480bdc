"""The architectures covfast knows, by name, without importing PyTorch: a typo in `covfast train ARCH` is
refused at once, before the seconds that torch and fastai take to import."""

from __future__ import annotations

from .errors import CovfastError

__all__ = ["RESNETS", "ENSEMBLE", "DEFAULT_FEATURES", "check_arch", "arch_slug"]

# torchvision's ResNets that fastai's DynamicUnet takes as an encoder
RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")
# the arch of a run made of trained runs by `covfast ensemble` (covfast/ensemble.py): not trained, not an ARCH to train
ENSEMBLE = "ensemble"
# the Attention U-Net's channel widths per level, finest first (its depth is their number)
DEFAULT_FEATURES: tuple[int, ...] = (16, 32, 64, 128, 256)


def check_arch(arch: str) -> str:
    "The canonical arch name, or a CovfastError listing what is known (timm/NAME is checked against timm's list)."
    a = arch.strip()
    if a.lower() in ("attention-unet", "attention_unet", "attunet"):
        return "attention-unet"
    if a.lower() in RESNETS:
        return a.lower()
    if a.lower() == ENSEMBLE:
        raise CovfastError("an ensemble is not trained: make one of trained runs with `covfast ensemble RUN RUN... "
                           "--name NAME`")
    if a.startswith("timm/") and len(a) > 5:
        import timm
        if not timm.is_model(a[5:]):
            raise CovfastError(f"unknown timm model {a[5:]!r}; list them with `python -c \"import timm; print(timm.list_models())\"`")
        return a
    raise CovfastError(f"unknown architecture {arch!r}: use attention-unet, {', '.join(RESNETS)} or timm/NAME "
                       f"(e.g. timm/efficientnet_b0)")


def arch_slug(arch: str) -> str:
    "The arch as it appears in run directory names."
    return arch.replace("/", "-")
