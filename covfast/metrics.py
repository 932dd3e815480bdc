"""One definition of every metric, used by training logs, evaluation, calibration, reports and prediction.

Masks are the run's decision (`decision.Decision.apply`); truth = mask > 127 (or class index 1). Per image:
dice = 2|P∩G| / (|P|+|G|), iou = |P∩G| / |P∪G|, both 1 when P and G are empty. Pooled over a set:
2ΣTP / (2ΣTP + ΣFP + ΣFN) and ΣTP / (ΣTP + ΣFP + ΣFN). Image level: sensitivity = infected images given a
non-empty mask, specificity = empty-truth images given an empty one, ROC AUC of the image probability
(COVID-19, i.e. non-empty truth, against the rest). Severity: infection % of lung = 100 |P∩L| / |L|,
undefined (NaN) for an empty lung mask, in bands 0, <25, 25-50, 50-75, >=75; reported as the mean absolute
error in percentage points and the share of images whose band is right. Means come with 95% percentile
bootstrap intervals.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import torch
from fastai.callback.core import Callback
from fastai.learner import Metric, Recorder, ValueMetric
from scipy.stats import bootstrap, mannwhitneyu
from sklearn.metrics import roc_auc_score
from sklearn.metrics import roc_curve as _sk_roc_curve

from .config import CLASSES
# severity's definitions live with the X-ray reading, where an export's standalone prediction uses them too
from .portable import NO_LUNGS, SEVERITY_BANDS, infection_pct, severity_band, severity_band_name
from .decision import image_probability, learner_decision, predicted_lung

__all__ = ["has_infection", "infected", "confusion_counts", "dice_from_counts", "iou_from_counts", "pooled_dice",
           "pooled_iou", "sensitivity", "specificity", "roc_auc", "roc_curve", "bootstrap_ci", "bootstrap_auc",
           "infection_pct", "SEVERITY_BANDS", "severity_band", "NO_LUNGS", "severity_band_name", "model_choice_score", "MODEL_CHOICE", "severity_mae", "severity_correlation", "band_agreement", "SegmentationStats",
           "segmentation_metrics"]


def has_infection(masks: torch.Tensor | np.ndarray) -> torch.Tensor | np.ndarray:
    "Per image, whether its (B, ...) 0/1 or boolean mask holds any infection: the truth's 'this X-ray has COVID-19'."
    if isinstance(masks, torch.Tensor):
        return masks.flatten(1).bool().any(1)
    return np.asarray(masks).reshape(len(masks), -1).astype(bool).any(1)


def infected(per_image: pd.DataFrame) -> np.ndarray:
    "Per row of a per-image table (tp, fn counts), whether its truth holds infection."
    return ((per_image.tp + per_image.fn) > 0).to_numpy()


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


def sensitivity(pred_empty, truth_infected) -> float:
    "The share of images with infection given a non-empty mask; NaN without such images."
    pred_empty, truth_infected = np.asarray(pred_empty, bool), np.asarray(truth_infected, bool)
    return float((~pred_empty[truth_infected]).mean()) if truth_infected.any() else float("nan")


def specificity(pred_empty, truth_infected) -> float:
    "The share of empty-truth images given an empty mask; NaN without such images."
    pred_empty, truth_infected = np.asarray(pred_empty, bool), np.asarray(truth_infected, bool)
    return float(pred_empty[~truth_infected].mean()) if (~truth_infected).any() else float("nan")


def roc_auc(scores, positive) -> float:
    "Area under the ROC curve of `scores` for the `positive` items (scikit-learn; ties count half); NaN without both kinds."
    positive = np.asarray(positive, dtype=bool)
    if positive.all() or not positive.any():
        return float("nan")
    return float(roc_auc_score(positive, np.asarray(scores, dtype=float)))


def roc_curve(scores, positive) -> tuple[np.ndarray, np.ndarray]:
    "(false positive rate, sensitivity) at every threshold of `scores` (scikit-learn; an item counts as positive at score >= threshold)."
    fpr, tpr, _ = _sk_roc_curve(np.asarray(positive, dtype=bool), np.asarray(scores, dtype=float), drop_intermediate=False)
    return fpr, tpr


def bootstrap_ci(values, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    "95% percentile bootstrap interval of the mean (SciPy); (value, value) for one value, NaN for none."
    values = np.asarray(values, dtype=float)
    if len(values) < 2:
        v = float(values[0]) if len(values) else float("nan")
        return v, v
    ci = bootstrap((values,), np.mean, n_resamples=n_boot, method="percentile", random_state=seed).confidence_interval
    return float(ci.low), float(ci.high)


def _auc_of_samples(pos: np.ndarray, neg: np.ndarray, axis: int = -1) -> np.ndarray:
    # the ROC AUC is the Mann-Whitney U of the positives over both counts (ties half), which SciPy computes
    # for 1000 resamples at once: 0.18 s for 812 images, against 4.1 s calling roc_auc_score 1000 times
    return mannwhitneyu(pos, neg, axis=axis).statistic / (pos.shape[axis] * neg.shape[axis])


def bootstrap_auc(scores, positive, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    """ROC AUC and its 95% percentile bootstrap interval (SciPy), resampling the positive and the negative images
    separately, so every resample holds both kinds; NaN without both."""
    scores, positive = np.asarray(scores, dtype=float), np.asarray(positive, dtype=bool)
    auc = roc_auc(scores, positive)
    if np.isnan(auc) or positive.sum() < 2 or (~positive).sum() < 2:
        return auc, float("nan"), float("nan")
    ci = bootstrap((scores[positive], scores[~positive]), _auc_of_samples, n_resamples=n_boot, method="percentile",
                   random_state=seed, vectorized=True).confidence_interval
    return auc, float(ci.low), float(ci.high)


def _graded(pred_pct, true_pct) -> tuple[np.ndarray, np.ndarray]:
    "The pairs where both percentages are defined (an empty lung mask has none)."
    pred_pct, true_pct = np.asarray(pred_pct, dtype=float), np.asarray(true_pct, dtype=float)
    both = ~np.isnan(pred_pct) & ~np.isnan(true_pct)
    return pred_pct[both], true_pct[both]


def severity_mae(pred_pct, true_pct) -> float:
    "Mean absolute error of infection % of lung, in percentage points, over the images where both are defined."
    pred_pct, true_pct = _graded(pred_pct, true_pct)
    return float(np.abs(pred_pct - true_pct).mean()) if len(pred_pct) else float("nan")


def severity_correlation(pred_pct, true_pct) -> float:
    """Pearson's correlation of predicted and true infection % of lung over the images where both are defined;
    NaN with fewer than 2 such images or when either side does not vary (every image at 0, say)."""
    pred_pct, true_pct = _graded(pred_pct, true_pct)
    if len(pred_pct) < 2 or np.std(pred_pct) == 0 or np.std(true_pct) == 0:
        return float("nan")
    return float(np.corrcoef(pred_pct, true_pct)[0, 1])


def band_agreement(pred_pct, true_pct) -> float:
    "The share of images (both percentages defined) whose predicted severity band is the true one."
    pred_pct, true_pct = _graded(pred_pct, true_pct)
    return float((severity_band(pred_pct) == severity_band(true_pct)).mean()) if len(pred_pct) else float("nan")


class SegmentationStats(Callback):
    """Collects per-image counts of every training and validation batch, once per batch.

    Validation labels come from the items of the (unshuffled) validation loader by position, so
    'COVID Dice' is the mean over COVID-19 images and 'Non-COVID Dice' over Non-COVID images. Masks are
    the learner's decision (`learner_decision`); with the image head, each validation image's probability
    is kept too, for the image-level ROC AUC.
    """
    # after_batch has the loss and the prediction; Recorder reads the epoch's values at after_epoch
    order = Recorder.order + 1

    def __init__(self):
        self.train_counts, self.valid_counts, self.valid_labels, self.valid_probs, self.valid_lungs = [], [], [], [], []

    def before_epoch(self):
        self.train_counts = []

    def before_validate(self):
        self.valid_counts, self.valid_labels, self.valid_probs, self.valid_lungs, self._seen = [], [], [], [], 0

    def after_batch(self):
        if not len(self.yb):
            return
        out, truth = self.pred, self.yb[0].detach()
        decision = learner_decision(self.learn)
        if self.training:  # the pixel-evidence gate of runs made before the head judged validation images only
            decision = dataclasses.replace(decision, gate_topk=0.0)
        with torch.no_grad():
            counts = confusion_counts(decision.apply(out), truth == 1)
        if self.training:
            self.train_counts.append(self.learn.to_detach(counts))
            return
        codes = torch.tensor([CLASSES.index(lab) for lab in self._batch_labels(counts)], device=counts.device)
        prob = image_probability(out)
        prob = torch.full((len(counts),), float("nan"), device=counts.device) if prob is None else prob.detach()
        lungs = predicted_lung(out)
        with torch.no_grad():
            lung_counts = (confusion_counts(lungs, self.yb[1] == 1).double() if lungs is not None and len(self.yb) > 1
                           else torch.full((len(counts), 3), float("nan"), device=counts.device, dtype=torch.float64))
        # one gather of counts, labels and probabilities (float64 holds the counts exactly): in a distributed
        # run every process then holds every image once (fastai's DistributedDL.to_detach drops the padding
        # that evens out the processes' shares)
        packed = self.learn.to_detach(torch.cat([counts.double(), codes[:, None].double(), prob[:, None].double(),
                                                 lung_counts], dim=1))
        self.valid_counts.append(packed[:, :3].long())
        self.valid_labels.extend(CLASSES[int(i)] for i in packed[:, 3].tolist())
        self.valid_probs.append(packed[:, 4])
        self.valid_lungs.append(packed[:, 5:8])
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

    def empty_left(self) -> float:
        "The share of the epoch's empty-truth validation images (Non-COVID, Normal) given an empty mask."
        if not self.valid_counts:
            return float("nan")
        c = torch.cat(self.valid_counts)
        return specificity((c[:, 0] + c[:, 1] == 0).numpy(), (c[:, 0] + c[:, 2] > 0).numpy())

    def score(self) -> float:
        "`model_choice_score` of the epoch's validation images: what picks the epoch whose weights become model.pth."
        return model_choice_score(self.dice(label="COVID-19"), self.empty_left())

    def lung_dice(self) -> float:
        "Mean per-image Dice of the predicted lungs over the validation images (all classes); NaN without the lung output."
        if not self.valid_lungs:
            return float("nan")
        c = torch.cat(self.valid_lungs)
        if torch.isnan(c).any():
            return float("nan")
        return float(dice_from_counts(c[:, 0], c[:, 1], c[:, 2]).mean())

    def auc(self) -> float:
        "ROC AUC of the validation images' probabilities, COVID-19 (non-empty truth) against the rest; NaN without the head."
        if not self.valid_probs:
            return float("nan")
        probs, c = torch.cat(self.valid_probs), torch.cat(self.valid_counts)
        if torch.isnan(probs).any():
            return float("nan")
        return roc_auc(probs.numpy(), (c[:, 0] + c[:, 2] > 0).numpy())


def model_choice_score(covid_dice: float, empty_left: float) -> float:
    """The figure that picks model.pth: the harmonic mean of the COVID-19 Dice (with the decision) and the share of
    empty-truth images left empty. Both must be good: a model that outlines nothing scores 0 (its COVID-19 Dice is
    0), and so does one that outlines everything (it leaves no image empty); the mean of the class Dice would give
    the first 0.667 on three classes. Without empty-truth images, the COVID-19 Dice alone."""
    if empty_left != empty_left:
        return covid_dice
    return 0.0 if covid_dice + empty_left == 0 else 2 * covid_dice * empty_left / (covid_dice + empty_left)


# the history column whose best epoch becomes model.pth
MODEL_CHOICE = "valid_score"


def segmentation_metrics(stats: SegmentationStats, image_head: bool = True, lungs: bool = False) -> list[Metric]:
    """train Dice, valid COVID/Non-COVID/Normal Dice, valid mean Dice (the reference's Tables II, III), the model
    choice's score, and where the model has them the image-level valid ROC AUC and the valid lung Dice, read
    from `stats`."""
    return [ValueMetric(lambda: stats.dice(train=True), "train_dice"),
            ValueMetric(lambda: stats.dice(label="COVID-19"), "valid_dice_covid"),
            ValueMetric(lambda: stats.dice(label="Non-COVID"), "valid_dice_noncovid"),
            ValueMetric(lambda: stats.dice(label="Normal"), "valid_dice_normal"),
            ValueMetric(lambda: stats.dice(), "valid_dice_mean"),
            ValueMetric(stats.empty_left, "valid_empty_left"),
            ValueMetric(stats.score, MODEL_CHOICE),
            *([ValueMetric(stats.auc, "valid_auc")] if image_head else []),
            *([ValueMetric(stats.lung_dice, "valid_dice_lung")] if lungs else [])]
