"""One definition of every metric, used by training logs, evaluation, reports and prediction.

Truth = mask > 127 (or class index 1); prediction = argmax over the 2 segmentation channels, on the
images the image-level head calls infected (probability above the run's threshold; models without the
head: every image). Per image:
dice = 2|P∩G| / (|P|+|G|), iou = |P∩G| / |P∪G|, both 1 when P and G are empty. Pooled over a set:
2ΣTP / (2ΣTP + ΣFP + ΣFN) and ΣTP / (ΣTP + ΣFP + ΣFN). Severity: infection % of lung
= 100 |P∩L| / |L|, undefined (NaN) when the lung mask L is empty, in bands 0, <25, 25-50, 50-75, >=75.
Image level: ROC AUC of the image probability, COVID-19 (non-empty truth) against the rest.
"""

from __future__ import annotations

import numpy as np
import torch
from fastai.callback.core import Callback
from fastai.callback.fp16 import MixedPrecision
from fastai.learner import Metric, Recorder, ValueMetric

from .config import CLASSES

__all__ = ["predicted_infection", "image_probability", "apply_decision", "decided_infection", "learner_threshold", "roc_auc",
           "evidence_scores", "gate_empty", "EmptyGate", "learner_gate", "confusion_counts",
           "dice_from_counts", "iou_from_counts", "pooled_dice", "pooled_iou", "infection_pct", "SEVERITY_BANDS",
           "severity_band", "SegmentationStats", "segmentation_metrics"]


def predicted_infection(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """The metric's binarisation: where the infection channel beats the background channel.

    Argmax over the 2 channels with ties to background, at a fraction of argmax's cost on CPU
    (argmax took 20 ms of a 1 s attention-unet training batch at 128 px).
    """
    return logits.select(dim, 1) > logits.select(dim, 0)


def image_probability(pred: torch.Tensor, activated: bool = False) -> torch.Tensor | None:
    """Per image, the head's probability of COVID-19 infection (output channel 2, constant over the image);
    None for a model without the image head. `activated`: `pred` holds probabilities already (get_preds)."""
    if pred.shape[1] < 3:
        return None
    # one pixel of the constant plane is the logit itself; its fp32 mean over the plane is off by up to 1.2e-6
    score = pred[:, 2].flatten(1)[:, 0].float()
    return score if activated else torch.sigmoid(score)


def apply_decision(mask: torch.Tensor, prob: torch.Tensor | None, threshold: float) -> torch.Tensor:
    "The image-level decision on (B, H, W) pixel masks: empty where the image's probability is at or below `threshold`."
    return mask if prob is None else mask & (prob > threshold)[:, None, None]


def decided_infection(pred: torch.Tensor, threshold: float = 0.5, activated: bool = False) -> torch.Tensor:
    """The one decision, (B, H, W) bool: infection where channel 1 beats channel 0, on images whose probability
    is above `threshold`; an image at or below it gets an empty mask. Without the head: the argmax alone."""
    return apply_decision(predicted_infection(pred), image_probability(pred, activated), threshold)


def learner_threshold(learn) -> float:
    "The image-probability threshold of the learner's decision (its loss function holds it; 0.5 untuned)."
    return float(getattr(learn.loss_func, "threshold", 0.5))


def roc_auc(scores, positive) -> float:
    "Area under the ROC curve of `scores` for the `positive` (bool) items, ties counted half; NaN without both kinds."
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    n_pos, n_neg = int(positive.sum()), int((~positive).sum())
    if not n_pos or not n_neg:
        return float("nan")
    order = scores.argsort(kind="mergesort")
    # ranks 1..n in sorted order, each group of tied scores sharing its mean rank (Mann-Whitney U)
    _, first, count = np.unique(scores[order], return_index=True, return_counts=True)
    ranks = np.empty(len(scores))
    ranks[order] = np.repeat(first + (count + 1) / 2, count)
    return float((ranks[positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


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
    'COVID Dice' is the mean over COVID-19 images and 'Non-COVID Dice' over Non-COVID images. Masks are
    the learner's decision (`decided_infection` at `learner_threshold`); with the image head, each
    validation image's probability is kept too, for the image-level ROC AUC.
    """
    # after_batch has the loss and the prediction; Recorder reads the epoch's values at after_epoch
    order = Recorder.order + 1

    def __init__(self):
        self.train_counts, self.valid_counts, self.valid_labels, self.valid_probs = [], [], [], []

    def before_epoch(self):
        self.train_counts = []

    def before_validate(self):
        self.valid_counts, self.valid_labels, self.valid_probs, self._seen = [], [], [], 0

    def after_batch(self):
        if not len(self.yb):
            return
        raw, truth = self.pred.detach(), self.yb[0].detach()
        counts = confusion_counts(decided_infection(raw, learner_threshold(self.learn)), truth == 1)
        if self.training:
            self.train_counts.append(self.learn.to_detach(counts))
            return
        codes = torch.tensor([CLASSES.index(lab) for lab in self._batch_labels(counts)], device=counts.device)
        prob = image_probability(raw)
        prob = torch.full((len(counts),), float("nan"), device=counts.device) if prob is None else prob
        # one gather of counts, labels and probabilities (float64 holds the counts exactly): in a distributed
        # run every process then holds every image once (fastai's DistributedDL.to_detach drops the padding
        # that evens out the processes' shares)
        packed = self.learn.to_detach(torch.cat([counts.double(), codes[:, None].double(), prob[:, None].double()], dim=1))
        self.valid_counts.append(packed[:, :3].long())
        self.valid_labels.extend(CLASSES[int(i)] for i in packed[:, 3].tolist())
        self.valid_probs.append(packed[:, 4])
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

    def auc(self) -> float:
        "ROC AUC of the validation images' probabilities, COVID-19 (non-empty truth) against the rest; NaN without the head."
        if not self.valid_probs:
            return float("nan")
        probs, c = torch.cat(self.valid_probs), torch.cat(self.valid_counts)
        if torch.isnan(probs).any():
            return float("nan")
        return roc_auc(probs.numpy(), (c[:, 0] + c[:, 2] > 0).numpy())


def segmentation_metrics(stats: SegmentationStats) -> list[Metric]:
    """train Dice, valid COVID/Non-COVID/Normal Dice, valid mean Dice (the reference's Tables II, III) and the
    image-level valid ROC AUC, read from `stats`."""
    return [ValueMetric(lambda: stats.dice(train=True), "train_dice"),
            ValueMetric(lambda: stats.dice(label="COVID-19"), "valid_dice_covid"),
            ValueMetric(lambda: stats.dice(label="Non-COVID"), "valid_dice_noncovid"),
            ValueMetric(lambda: stats.dice(label="Normal"), "valid_dice_normal"),
            ValueMetric(lambda: stats.dice(), "valid_dice_mean"),
            ValueMetric(stats.auc, "valid_auc")]
