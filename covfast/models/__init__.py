"""The models, and the builders, splitters and ImageNet-weight fetchers the architecture registry
(`covfast.archs.ARCHS`) names: 'attention-unet', torchvision ResNets ('resnet18/34/50/101') and timm CNNs
('timm/NAME').

fastai and torchvision are imported by the builders that need them (the DynamicUnet ones): the Attention U-Net
is built, loaded and run with PyTorch alone, so `covfast predict` on it starts in half the time."""

from __future__ import annotations

import contextlib
import io

from torch import nn

from ..archs import DEFAULT_FEATURES, RESNETS, arch_slug, check_arch
from ..errors import CovfastError
from ..outputs import CODES, LUNG_CODES
from .attention_unet import AttentionGate, AttentionUNet
from .image_head import ImageHead, UnetOutputs

__all__ = ["AttentionUNet", "AttentionGate", "DEFAULT_FEATURES", "ImageHead", "UnetOutputs", "RESNETS", "check_arch", "arch_slug",
           "timm_encoder", "build_attention_unet", "build_torchvision_unet", "build_timm_unet", "resnet_splitter",
           "encoder_splitter", "fetch_torchvision_weights", "fetch_timm_weights"]


def build_attention_unet(spec) -> nn.Module:
    "covfast's Attention U-Net of a spec: its widths (`features`), the image head and the lung output as it asks."
    return AttentionUNet(3, len(CODES), spec.features, image_head=spec.image_head, lung_head=spec.lungs)


def _outputs(spec) -> int:
    "A DynamicUnet's output channels: infection (background, infection), and (background, lung) with the lung output."
    return len(CODES) + (len(LUNG_CODES) if spec.lungs else 0)


def build_torchvision_unet(spec, img_size: tuple[int, int] | None, pretrained: bool) -> nn.Module:
    "fastai's DynamicUnet on a torchvision ResNet, as `unet_learner` builds it, in `UnetOutputs`."
    import torchvision
    from fastai.vision.learner import create_unet_model

    img_size = img_size or (spec.img_size, spec.img_size)
    unet = create_unet_model(getattr(torchvision.models, spec.arch), _outputs(spec), img_size, pretrained=pretrained)
    return UnetOutputs(unet, image_head=spec.image_head, lungs=spec.lungs)


def build_timm_unet(spec, img_size: tuple[int, int] | None, pretrained: bool) -> nn.Module:
    "fastai's DynamicUnet on a timm CNN's feature extractor (`timm_encoder`), in `UnetOutputs`."
    from fastai.vision.models.unet import DynamicUnet

    img_size = img_size or (spec.img_size, spec.img_size)
    unet = DynamicUnet(timm_encoder(spec.arch[5:], pretrained), _outputs(spec), img_size)
    return UnetOutputs(unet, image_head=spec.image_head, lungs=spec.lungs)


def encoder_splitter(model: nn.Module) -> list:
    "Two parameter groups, the encoder and the rest (decoder, image head), for discriminative learning rates (timm encoders)."
    encoder = list(model.unet[0].parameters())
    ids = {id(p) for p in encoder}
    return [encoder, [p for p in model.parameters() if id(p) not in ids]]


def resnet_splitter(arch: str):
    "fastai's own parameter groups for a torchvision ResNet U-Net (stem + first stages, later stages, decoder), the image head with the decoder."
    import torchvision
    from fastai.vision.learner import model_meta

    split = model_meta[getattr(torchvision.models, arch)]["split"]

    def splitter(model: nn.Module) -> list:
        groups = list(split(model.unet))
        if model.image_head is not None:
            groups[-1] = [*groups[-1], *model.image_head.parameters()]
        return groups
    return splitter


def fetch_torchvision_weights(arch: str) -> None:
    "Fetch (or find cached) torchvision's ImageNet weights for `arch`; raises when they cannot be had."
    import torchvision

    with contextlib.redirect_stderr(io.StringIO()):  # torch.hub prints its own 'Downloading ...' line
        torchvision.models.get_model_weights(arch).DEFAULT.get_state_dict(progress=False, check_hash=True)


def fetch_timm_weights(arch: str) -> None:
    "Fetch (or find cached) timm's ImageNet weights for `timm/NAME`; raises when they cannot be had."
    with contextlib.redirect_stderr(io.StringIO()):
        timm_encoder(arch[5:], pretrained=True)


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
