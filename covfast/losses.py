"""covfast's loss: cross-entropy + Dice on the infection output, + BCE on the image-level logit when the model has
the head, + cross-entropy + Dice on the lung output when it has that."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from fastai.losses import CrossEntropyLossFlat, DiceLoss
from fastai.torch_core import TensorBase

from .metrics import has_infection
from .outputs import ModelOutput, activate, as_output, model_output
from .spec import RunSpec

__all__ = ["SegLoss"]


class SegLoss:
    """CrossEntropyLossFlat(axis=1) + `spec.dice_weight` x DiceLoss(reduction='mean') on the `infection` output,
    + `spec.cls_weight` x BCE on the `covid` output (when the model has the image head), whose target is the
    mask itself: a non-empty infection mask means COVID-19, + `spec.lung_weight` x the same cross-entropy + Dice
    on the `lung` output against the lung masks (when the model has it and the batch holds them).

    It decides nothing: the run's decision is the learner's (`learner.CovfastLearner.decision`).
    """

    def __init__(self, spec: RunSpec):
        self.spec = spec
        self.ce = CrossEntropyLossFlat(axis=1)
        # 'mean', not fastai's default 'sum': the loss scale must not grow with the batch size
        self.dice = DiceLoss(axis=1, reduction="mean")

    def segmentation_term(self, logits: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        "Cross-entropy + dice_weight x Dice of (B, 2, H, W) logits against (B, H, W) 0/1 masks."
        return self.ce(logits, targ) + self.spec.dice_weight * self.dice(logits, targ)

    def head_term(self, logit: torch.Tensor, targ: torch.Tensor) -> torch.Tensor:
        "BCE of the image logit (B,) against 'the infection mask is not empty'."
        return F.binary_cross_entropy_with_logits(logit.float(), has_infection(targ).float())

    def __call__(self, out: ModelOutput | torch.Tensor, targ: torch.Tensor, lung_targ: torch.Tensor | None = None) -> torch.Tensor:
        out = as_output(out)
        loss = self.segmentation_term(out.infection, targ)
        if out.has("covid") and self.spec.cls_weight:
            loss = loss + self.spec.cls_weight * self.head_term(TensorBase(out.covid), TensorBase(targ))
        if out.has("lung") and lung_targ is not None and self.spec.lung_weight:
            loss = loss + self.spec.lung_weight * self.segmentation_term(out.lung, lung_targ)
        return loss

    def activation(self, out: ModelOutput | torch.Tensor) -> ModelOutput:
        "Softmax over each segmentation's channels, the sigmoid of the image logit: the outputs as probabilities."
        return model_output(**activate(out))
