"""covfast's segmentation loss: cross-entropy + Dice, plus an image-level term for empty masks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.losses import CrossEntropyLossFlat, DiceLoss
from fastai.torch_core import TensorBase

from .metrics import evidence_scores

__all__ = ["SegLoss"]


class SegLoss:
    """CrossEntropyLossFlat(axis=1) + `dice_weight` x DiceLoss(reduction='mean') + `empty_weight` x image-level BCE.

    Why the image-level term: half the images (Non-COVID) have an empty truth. On them the per-image
    Dice loss is ~1 whatever the model predicts (its smooth is 1e-6), so it gives no gradient against
    false positives, and pixel-wise cross-entropy barely notices a blob of a few hundred pixels.
    The image-level term scores each image by the mean infection margin (logit 1 - logit 0) of its
    `topk` most confident pixels and asks, with BCE, for "some infection" exactly on images whose
    truth has some. Under argmax that is the decision "is the predicted mask empty?".
    """

    def __init__(
        self,
        empty_weight: float = 0.0,  # weight of the image-level term; 0 gives plain CE + Dice
        topk: float = 0.005,  # share of pixels whose margins score an image
        axis: int = 1,
        dice_weight: float = 1.0,  # weight of the Dice term against cross-entropy's 1
    ):
        self.empty_weight, self.topk, self.axis, self.dice_weight = empty_weight, topk, axis, dice_weight
        self.ce = CrossEntropyLossFlat(axis=axis)
        # 'mean', not fastai's default 'sum': the loss scale must not grow with the batch size
        self.dice = DiceLoss(axis=axis, reduction="mean")

    def image_term(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        score = evidence_scores(pred.float(), self.topk)
        has_infection = (targ.flatten(1) == 1).any(1).float()
        return F.binary_cross_entropy_with_logits(score, has_infection)

    def __call__(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        loss = self.ce(pred, targ) + self.dice_weight * self.dice(pred, targ)
        if self.empty_weight:
            loss = loss + self.empty_weight * self.image_term(TensorBase(pred), TensorBase(targ))
        return loss

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        return x.argmax(dim=self.axis)

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(x, dim=self.axis)
