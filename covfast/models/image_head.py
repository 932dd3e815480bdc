"""The image-level head: one logit per X-ray, "this image has COVID-19 infection", beside the segmentation.

Whether an X-ray has COVID-19 infection at all is a decision about the whole image (other pneumonias'
opacities look like COVID-19's pixel by pixel), so it gets its own head on the encoder's deepest
features. Its logit rides along as one more output channel, constant over the image, so the model
still returns one tensor and every fastai path (losses, `get_preds`, mixed precision, distributed
gathering) carries it unchanged.
"""

from __future__ import annotations

import torch
from fastai.callback.hook import num_features_model
from fastai.vision.models.unet import DynamicUnet
from torch import nn

__all__ = ["ImageHead", "with_image_logit", "DynamicUnetWithImageHead"]


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


def with_image_logit(seg: torch.Tensor, image_logit: torch.Tensor) -> torch.Tensor:
    """Segmentation logits (B, 2, H, W) with the image logit (B,) as a third channel, constant over the image, in fp32.

    One tensor out, so everything fastai does with a model's output (losses, `get_preds`, mixed
    precision, distributed gathering) carries the image-level decision along unchanged."""
    plane = image_logit.float()[:, None, None, None].expand(-1, 1, *seg.shape[-2:])
    return torch.cat([seg.float(), plane], dim=1)  # fp32 out, so the image logit keeps its precision


class DynamicUnetWithImageHead(nn.Module):
    "fastai's `DynamicUnet` with an `ImageHead` on its encoder's output (the deepest features)."

    def __init__(self, unet: DynamicUnet):
        super().__init__()
        self.unet = unet
        self.image_head = ImageHead(num_features_model(unet[0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # DynamicUnet is a fastai SequentialEx: run its layers as it does (each may read the input
        # through `.orig`), taking the encoder's output (layer 0) on the way
        res, image_logit = x, None
        for i, layer in enumerate(self.unet.layers):
            res.orig = x
            nres = layer(res)
            res.orig, nres.orig = None, None  # no hanging references, as SequentialEx does
            if i == 0:
                image_logit = self.image_head(nres)
            res = nres
        return with_image_logit(res, image_logit)
