"""Architecture registry: 'attention-unet', torchvision ResNets ('resnet18/34/50/101') and timm CNNs ('timm/NAME')."""

from __future__ import annotations

from torch import nn

from ..errors import CovfastError
from .attention_unet import DEFAULT_FEATURES, AttentionGate, AttentionUNet
from .image_head import ImageHead, UnetOutputs

__all__ = ["AttentionUNet", "AttentionGate", "DEFAULT_FEATURES", "ImageHead", "UnetOutputs", "RESNETS", "check_arch", "arch_slug",
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
    """A timm CNN's feature extractor as an nn.Sequential that DynamicUnet can hook.

    DynamicUnet takes its skip connections where the spatial size changes between the encoder's
    children, and runs the children in order. timm's `feature_info` names the module of each feature
    stage; the encoder is the model's children up to the last of them (no head convolution, pooling or
    classifier), with nested stage containers flattened one level, as timm's FeatureListNet cuts it.
    """
    import timm
    model = timm.create_model(name, pretrained=pretrained)
    info = getattr(model, "feature_info", None)
    if not info:
        raise CovfastError(f"timm/{name} has no feature_info to cut a U-Net encoder from; choose a CNN such as "
                           f"timm/resnet34 or timm/efficientnet_b0")
    last = info[-1]["module"]
    layers = []
    for child_name, child in model.named_children():
        for sub_name, sub in (child.named_children() if isinstance(child, nn.Sequential) else [("", child)]):
            layers.append(sub)
            if last == f"{child_name}.{sub_name}":
                return nn.Sequential(*layers)
        if last == child_name:
            return nn.Sequential(*layers)
    raise CovfastError(f"timm/{name}: feature module {last!r} is not a child or grandchild of the model; choose a CNN "
                       f"such as timm/resnet34 or timm/efficientnet_b0")
