"""Architecture registry: 'attention-unet', torchvision ResNets ('resnet18/34/50/101') and timm CNNs ('timm/NAME')."""

from __future__ import annotations

from torch import nn

from ..errors import CovfastError
from .attention_unet import DEFAULT_FEATURES, AttentionGate, AttentionUNet

__all__ = ["AttentionUNet", "AttentionGate", "DEFAULT_FEATURES", "RESNETS", "check_arch", "arch_slug",
           "timm_encoder"]

RESNETS = ("resnet18", "resnet34", "resnet50", "resnet101")


def check_arch(arch: str) -> str:
    "The canonical arch name, or a CovfastError listing what is known."
    a = arch.strip()
    if a.lower() in ("attention-unet", "attention_unet", "attunet"):
        return "attention-unet"
    if a.lower() in RESNETS:
        return a.lower()
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


def timm_encoder(name: str, pretrained: bool) -> nn.Sequential:
    """A timm CNN without pooling and head, as an nn.Sequential that DynamicUnet can hook.

    DynamicUnet finds its skip connections where the spatial size changes between the encoder's
    children; timm nests its stages ('blocks', 'stages'), so those are flattened one level.
    """
    import timm
    model = timm.create_model(name, pretrained=pretrained, num_classes=0, global_pool="")
    layers = []
    for child in model.children():
        if isinstance(child, nn.Sequential):
            layers.extend(child.children())
        elif not isinstance(child, nn.Identity):
            layers.append(child)
    return nn.Sequential(*layers)
