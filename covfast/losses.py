"""covfast's loss: cross-entropy + Dice on the segmentation, + BCE on the image-level logit when the model has the head."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.losses import CrossEntropyLossFlat, DiceLoss
from fastai.torch_core import TensorBase

from .config import DEFAULT_CLS_WEIGHT
from .metrics import decided_infection, evidence_scores, image_probability

__all__ = ["SegLoss"]


class SegLoss:
    """CrossEntropyLossFlat(axis=1) + `dice_weight` x DiceLoss(reduction='mean') on the 2 segmentation channels,
    + `cls_weight` x BCE on the image logit (output channel 2, when the model has the image head), whose target
    is the mask itself: a non-empty infection mask means COVID-19.

    `threshold` is the run's decision: an image whose probability is at or below it gets an empty mask
    (`decodes`, and through `metrics.learner_threshold` every metric and prediction path).

    `empty_weight` (runs made before the image head; 0 by default) scores each image by the mean infection
    margin of its `topk` most confident pixels and asks, with BCE, for "some infection" exactly where the
    truth has some.
    """

    def __init__(
        self,
        empty_weight: float = 0.0,  # weight of the pixel-evidence image term; 0 gives plain CE + Dice
        topk: float = 0.005,  # share of pixels whose margins score an image (the empty_weight term)
        axis: int = 1,
        dice_weight: float = 1.0,  # weight of the Dice term against cross-entropy's 1
        cls_weight: float = DEFAULT_CLS_WEIGHT,  # weight of the image head's BCE (used only when the output has the head's channel)
        threshold: float = 0.5,  # image probability at or below which the mask is empty
    ):
        self.empty_weight, self.topk, self.axis, self.dice_weight = empty_weight, topk, axis, dice_weight
        self.cls_weight, self.threshold = cls_weight, threshold
        self.ce = CrossEntropyLossFlat(axis=axis)
        # 'mean', not fastai's default 'sum': the loss scale must not grow with the batch size
        self.dice = DiceLoss(axis=axis, reduction="mean")

    def image_term(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        score = evidence_scores(pred.float(), self.topk)
        has_infection = (targ.flatten(1) == 1).any(1).float()
        return F.binary_cross_entropy_with_logits(score, has_infection)

    def head_term(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        "BCE of the image logit against 'the infection mask is not empty'."
        logit = pred[:, 2].flatten(1)[:, 0].float()  # the plane is constant: one pixel is the logit
        has_infection = (targ.flatten(1) == 1).any(1).float()
        return F.binary_cross_entropy_with_logits(logit, has_infection)

    def __call__(self, pred: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        seg = pred[:, :2]
        loss = self.ce(seg, targ) + self.dice_weight * self.dice(seg, targ)
        if self.empty_weight:
            loss = loss + self.empty_weight * self.image_term(TensorBase(seg), TensorBase(targ))
        if pred.shape[1] > 2 and self.cls_weight:
            loss = loss + self.cls_weight * self.head_term(TensorBase(pred), TensorBase(targ))
        return loss

    def activation(self, x: torch.Tensor) -> torch.Tensor:
        "Softmax over the segmentation channels; the image head's channel becomes its probability."
        seg = F.softmax(x[:, :2], dim=self.axis)
        return seg if x.shape[1] < 3 else torch.cat([seg, torch.sigmoid(x[:, 2:3])], dim=1)

    def decodes(self, x: torch.Tensor) -> torch.Tensor:
        "The mask of the run's decision, from `activation`'s output (what `get_preds(with_decoded=True)` passes)."
        return decided_infection(x, self.threshold, activated=True).long()

    def probability(self, x: torch.Tensor) -> torch.Tensor | None:
        "Per image, the head's probability from `activation`'s output; None without the head."
        return image_probability(x, activated=True)
