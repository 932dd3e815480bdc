"""The image-level head, and fastai's DynamicUnet returning covfast's named outputs.

Whether an X-ray has COVID-19 infection at all is a decision about the whole image (other pneumonias'
opacities look like COVID-19's pixel by pixel), so it gets its own head on the encoder's deepest
features, as segmentation_models_pytorch's `aux_params` puts one: the model returns its segmentation
and this logit side by side (`outputs.ModelOutput`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
from torch import nn

from ..outputs import ModelOutput, model_output

if TYPE_CHECKING:
    from fastai.vision.models.unet import DynamicUnet

__all__ = ["ImageHead", "UnetOutputs"]


class ImageHead(nn.Module):
    """One logit per image from a feature map: average and max pooling side by side (fastai's concat
    pooling), dropout, linear; the classification head smp offers as `aux_params`."""

    def __init__(self, channels: int, dropout: float = 0.2):
        super().__init__()
        self.avg, self.max = nn.AdaptiveAvgPool2d(1), nn.AdaptiveMaxPool2d(1)
        self.drop, self.fc = nn.Dropout(dropout), nn.Linear(2 * channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = torch.cat([self.avg(x), self.max(x)], dim=1).flatten(1).float()
        # in fp32 even under bf16 autocast: the logit is the image-level decision, and bf16's 8-bit mantissa
        # would round nearby probabilities together (ties at the threshold, coarser ROC curves)
        with torch.autocast(x.device.type, enabled=False):
            return self.fc(self.drop(pooled))[:, 0]


class UnetOutputs(nn.Module):
    """fastai's `DynamicUnet` (run by its own forward) with covfast's named outputs: its segmentation logits
    as `infection`; with `lungs`, the U-Net was built with two more output channels, (background, lung) logits
    from the same last layer, returned as `lung`; with `image_head` the logit of an `ImageHead` on the
    encoder's output (the deepest features), computed by a forward hook on the encoder as the U-Net runs."""

    def __init__(self, unet: DynamicUnet, image_head: bool = False, lungs: bool = False):
        from fastai.callback.hook import num_features_model  # imported with the DynamicUnet it measures

        super().__init__()
        self.unet, self.lungs = unet, lungs
        self.image_head = ImageHead(num_features_model(unet[0])) if image_head else None
        self._covid: torch.Tensor | None = None
        if image_head:
            unet[0].register_forward_hook(self._image_logit)

    def _image_logit(self, module: nn.Module, inputs, features: torch.Tensor) -> None:
        # right after the encoder, before the decoder: the order in which the gradients of the encoder's output
        # are summed stays that of training runs made before the model had named outputs (same weights, bit for bit)
        self._covid = self.image_head(features)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        seg = self.unet(x)
        covid, self._covid = self._covid, None  # no reference kept past the batch
        if self.lungs:  # one 1x1 convolution made both: its first two channels are the infection's
            return model_output(infection=seg[:, :2], covid=covid, lung=seg[:, 2:])
        return model_output(infection=seg, covid=covid)
