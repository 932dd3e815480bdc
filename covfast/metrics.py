"""One definition of every metric, used by training logs, evaluation, reports and prediction.

Truth = mask > 127 (or class index 1); prediction = argmax over the 2 output channels. Per image:
dice = 2|P∩G| / (|P|+|G|), iou = |P∩G| / |P∪G|, both 1 when P and G are empty. Pooled over a set:
2ΣTP / (2ΣTP + ΣFP + ΣFN) and ΣTP / (ΣTP + ΣFP + ΣFN). Severity: infection % of lung
= 100 |P∩L| / |L|, undefined (NaN) when the lung mask L is empty, in bands 0, <25, 25-50, 50-75, >=75.
"""

from __future__ import annotations

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Metric, Recorder, ValueMetric

from .config import CLASSES

__all__ = ["predicted_infection", "evidence_scores", "gate_empty", "EmptyGate", "learner_gate", "confusion_counts",
           "dice_from_counts", "iou_from_counts", "pooled_dice", "pooled_iou", "infection_pct", "SEVERITY_BANDS",
           "severity_band", "SegmentationStats", "segmentation_metrics"]


def predicted_infection(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The metric's binarisation: where the infection channel beats the background channel.

    Argmax over the 2 channels with ties to background, at a fraction of argmax's cost on CPU
    (argmax took 20 ms of a 1 s attention-unet training batch at 128 px).
    """
    return logits.select(dim, 1) > logits.select(dim, 0)


def evidence_scores(logits: torch.Tensor, topk: float = 0.02) -> torch.Tensor:
    "Per image, the mean infection margin (logit 1 - logit 0) of its `topk` share of most confident pixels."
    margin = (logits[:, 1] - logits[:, 0]).flatten(1)
    k = max(1, int(topk * margin.shape[1]))
    return margin.topk(k, dim=1).values.mean(1)


def gate_empty(logits: torch.Tensor, topk: float = 0.02, margin: float = 0.0) -> torch.Tensor:
    """Empty the predicted mask of images whose `topk` most confident pixels are not, on average, infection.

    Per-pixel argmax fires on any single pixel; a healthy lung then gets a few stray blobs, and a
    Non-COVID image with one COVID-looking spot gets a mask. This asks for evidence over a share of
    the image (`evidence_scores` must be > `margin`; 0 by default, `covfast calibrate` sets another)
    before any pixel is called infection. Logits (B, 2, H, W) in, logits out; `topk=0` is a no-op.
    """
    if not topk:
        return logits
    empty = evidence_scores(logits, topk) <= margin
    if not empty.any():
        return logits
    out = logits.clone()
    # just below background, so argmax says background everywhere and the loss stays finite
    out[empty, 1] = torch.minimum(out[empty, 1], out[empty, 0] - 1e-3)
    return out


class EmptyGate(Callback):
    """Applies `gate_empty` to the model's output outside training: validation, get_preds, show_results.

    The learner's one gate: covfast's own prediction path (`inference.iter_logits`) reads it from here.
    """
    # after_pred, once mixed precision has cast the prediction back to fp32 (the decision is made in fp32);
    # the loss and every metric come after all after_pred callbacks
    order = MixedPrecision.order + 1

    def __init__(self, topk: float = 0.02, margin: float = 0.0):
        self.topk, self.margin = topk, margin

    def apply(self, logits: torch.Tensor) -> torch.Tensor:
        return gate_empty(logits, self.topk, self.margin)

    def after_pred(self):
        if not self.training:
            self.learn.pred = self.apply(self.pred)


def learner_gate(learn) -> EmptyGate | None:
    "The learner's `EmptyGate` callback, or None when it has none."
    return next((cb for cb in learn.cbs if isinstance(cb, EmptyGate)), None)


def confusion_counts(pred: torch.Tensor, truth: torch.Tensor) -> torch.Tensor:
    "Per-image (TP, FP, FN) pixel counts, shape (B, 3), of binary (B, ...) prediction and truth."
    pred, truth = pred.bool().flatten(1), truth.bool().flatten(1)
    tp = (pred & truth).sum(1)
    return torch.stack([tp, pred.sum(1) - tp, truth.sum(1) - tp], dim=1)


def _ratio(num, den):
    "num/den, and 1 where den is 0 (both masks empty)."
    if isinstance(num, torch.Tensor):
        num, den = num.double(), den.double()
        return torch.where(den > 0, num / den.clamp(min=1), torch.ones_like(den))
    num, den = np.asarray(num, dtype=float), np.asarray(den, dtype=float)
    return np.where(den > 0, num / np.maximum(den, 1), 1.0)


def dice_from_counts(tp, fp, fn):
    "Per-image Dice from (TP, FP, FN); 1 when prediction and truth are both empty."
    return _ratio(2 * tp, 2 * tp + fp + fn)


def iou_from_counts(tp, fp, fn):
    "Per-image IoU from (TP, FP, FN); 1 when prediction and truth are both empty."
    return _ratio(tp, tp + fp + fn)


def pooled_dice(tp, fp, fn) -> float:
    "2ΣTP / (2ΣTP + ΣFP + ΣFN) over a set of images (fastai's `Dice`); 1 when all are empty."
    tp, fp, fn = (float(np.sum(np.asarray(v, dtype=float))) for v in (tp, fp, fn))
    return 1.0 if 2 * tp + fp + fn == 0 else 2 * tp / (2 * tp + fp + fn)


def pooled_iou(tp, fp, fn) -> float:
    "ΣTP / (ΣTP + ΣFP + ΣFN) over a set of images (fastai's `JaccardCoeff`); 1 when all are empty."
    tp, fp, fn = (float(np.sum(np.asarray(v, dtype=float))) for v in (tp, fp, fn))
    return 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn)


def infection_pct(mask: np.ndarray, lung: np.ndarray) -> float:
    "Infection % of lung, 100 |mask ∩ lung| / |lung| (boolean arrays of one shape); NaN when the lung mask is empty."
    n_lung = int(lung.sum())
    return 100.0 * int((mask & lung).sum()) / n_lung if n_lung else float("nan")


# Severity bands of infection % of lung: 0, <25, 25-50, 50-75, >=75.
SEVERITY_BANDS = ("0", "<25", "25-50", "50-75", ">=75")


def severity_band(pct: np.ndarray | float) -> np.ndarray:
    "Band index 0..4 of infection % of lung (callers leave out NaN, the undefined % of an empty lung mask)."
    pct = np.asarray(pct, dtype=float)
    return np.where(pct <= 0, 0, np.digitize(pct, [25, 50, 75]) + 1)


class SegmentationStats(Callback):
    """Collects per-image counts of every training and validation batch, once per batch.

    Validation labels come from the items of the (unshuffled) validation loader by position, so
    'COVID Dice' is the mean over COVID-19 images and 'Non-COVID Dice' over Non-COVID images.
    """
    # after_batch has the loss and the prediction; Recorder reads the epoch's values at after_epoch
    order = Recorder.order + 1

    def __init__(self):
        self.train_counts, self.valid_counts, self.valid_labels = [], [], []

    def before_epoch(self):
        self.train_counts = []

    def before_validate(self):
        self.valid_counts, self.valid_labels, self._seen = [], [], 0

    def after_batch(self):
        if not len(self.yb):
            return
        pred, truth = predicted_infection(self.pred.detach()), self.yb[0].detach()
        counts = confusion_counts(pred, truth == 1)
        if self.training:
            self.train_counts.append(self.learn.to_detach(counts))
            return
        codes = torch.tensor([CLASSES.index(lab) for lab in self._batch_labels(counts)], device=counts.device)
        # one gather of counts and labels: in a distributed run every process then holds every image once
        # (fastai's DistributedDL.to_detach drops the padding that evens out the processes' shares)
        packed = self.learn.to_detach(torch.cat([counts, codes[:, None].to(counts.dtype)], dim=1))
        self.valid_counts.append(packed[:, :3])
        self.valid_labels.extend(CLASSES[i] for i in packed[:, 3].tolist())
        self._seen += len(counts)

    def _batch_labels(self, counts: torch.Tensor) -> list[str]:
        "Class of each image of this validation batch, from the loader's items by position."
        items = getattr(self.dl, "items", None)
        if items is None or "label" not in getattr(items, "columns", []):
            # no labels: by the dataset's definition COVID-19 images are those with infection
            return ["COVID-19" if t else "Non-COVID" for t in (counts[:, 0] + counts[:, 2] > 0).tolist()]
        pos = torch.arange(self._seen, self._seen + len(counts))
        if hasattr(self.dl, "n_padded"):
            # fastai's DistributedDL: this process reads a contiguous block of the (unshuffled) order,
            # padded at the end with images from its start
            pos = (pos + self.dl.rank * self.dl.n_padded // self.dl.world_size) % self.dl.n
        return items.label.iloc[pos.tolist()].tolist()

    def dice(self, train: bool = False, label: str | None = None) -> float:
        "Mean per-image Dice of the epoch's training or validation images, optionally of one class."
        counts = self.train_counts if train else self.valid_counts
        if not counts:
            return float("nan")
        c = torch.cat(counts)
        d = dice_from_counts(c[:, 0], c[:, 1], c[:, 2])
        if label is not None:
            keep = torch.tensor([lab == label for lab in self.valid_labels], dtype=torch.bool)
            d = d[keep]
        return float(d.mean()) if len(d) else float("nan")


def segmentation_metrics(stats: SegmentationStats) -> list[Metric]:
    "train Dice, valid COVID Dice, valid Non-COVID Dice, valid mean Dice (the reference's Tables II, III), read from `stats`."
    return [ValueMetric(lambda: stats.dice(train=True), "train_dice"),
            ValueMetric(lambda: stats.dice(label="COVID-19"), "valid_dice_covid"),
            ValueMetric(lambda: stats.dice(label="Non-COVID"), "valid_dice_noncovid"),
            ValueMetric(lambda: stats.dice(), "valid_dice_mean")]
