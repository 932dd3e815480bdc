"""Architecture registry: 'attention-unet', torchvision ResNets ('resnet18/34/50/101') and timm CNNs ('timm/NAME')."""

from __future__ import annotations

from torch import nn

from ..archs import DEFAULT_FEATURES, RESNETS, arch_slug, check_arch
from ..errors import CovfastError
from .attention_unet import AttentionGate, AttentionUNet
from .image_head import ImageHead, UnetOutputs

__all__ = ["AttentionUNet", "AttentionGate", "DEFAULT_FEATURES", "ImageHead", "UnetOutputs", "RESNETS", "check_arch", "arch_slug",
           "timm_encoder"]


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
