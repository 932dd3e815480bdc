"""The one decision: which pixels of which X-ray get outlined.

Pixels: infection where the model's infection logit beats its background logit (ties to background).
Images: a model with the image-level head outlines an image only when the head's probability is above
the run's threshold (0.5 until `covfast calibrate` chooses one on Val); at or below it the mask is empty.
Runs made before the head may instead carry the pixel-evidence gate (an image is outlined only when the
mean infection margin of its `gate_topk` most confident pixels is above `gate_margin`). A model with the
lung output may keep the infection inside its predicted lungs (`inside_lungs`). A `Decision` holds all of it.
The learner holds the run's (`get_preds(with_decoded=True)` decodes with it); the training metrics, evaluate,
calibrate, predict and report all call `Decision.apply`; `Decision.load` reads it from a run's calibration.json.

The verdict on an X-ray is one of three `OUTCOMES`, named by `outcome` from what the decision did, and every
file, page and table says it with these words: an outline ('COVID-19 infection'); nothing outlined because
the image-level decision (the head, or the old gate) left the X-ray empty ('no COVID-19 infection'); or the
image-level decision kept the X-ray but the pixel rule outlined no pixel of it ('COVID-19 flagged, nothing
outlined': the image head's probability is above the threshold, yet no infection can be shown or graded).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from .errors import CovfastError
from .outputs import ModelOutput, as_output, output_figures
# the three verdicts (see the module's docstring), in the order tables list them, as the standalone prediction says them
from .portable import EMPTY, FLAGGED, OUTCOMES, OUTLINED
from .runs import read_json

__all__ = ["CALIBRATION_FILE", "OUTLINED", "FLAGGED", "EMPTY", "OUTCOMES", "outcome", "predicted_infection", "predicted_lung", "image_probability", "evidence_scores", "Decision",
           "Prediction", "predict_one", "predict_batch", "BATCH_PIXELS", "learner_decision"]

# written by `covfast calibrate`, read by `Decision.load`
CALIBRATION_FILE = "calibration.json"



def outcome(kept: bool | None, outlined: bool) -> str:
    """The verdict on one X-ray from what the decision did: `kept`, the image-level decision (None for a model
    with neither head nor gate), and `outlined`, whether its mask has any pixel."""
    if outlined:
        return OUTLINED
    return FLAGGED if kept else EMPTY


def predicted_infection(logits: torch.Tensor, dim: int = 1) -> torch.Tensor:
    """Where the infection channel beats the background channel: argmax over the 2 channels with ties to
    background, at a fraction of argmax's cost on CPU (argmax took 20 ms of a 1 s training batch at 128 px).
    Works on logits and on their softmax alike (softmax keeps the order and the ties)."""
    return logits.select(dim, 1) > logits.select(dim, 0)


def predicted_lung(out: ModelOutput, size: tuple[int, int] | None = None, activated: bool = False) -> torch.Tensor | None:
    """The lungs, (B, H, W) bool, where the lung output's lung channel beats its background channel (upsampled
    bilinearly to `size` first); None for a model without the lung output. No decision empties them: every
    X-ray has lungs."""
    lung = as_output(out).get("lung")
    if lung is None:
        return None
    lung = lung.float()
    if size is not None and tuple(lung.shape[-2:]) != tuple(size):
        lung = F.interpolate(lung, size=size, mode="bilinear", align_corners=False)
    return predicted_infection(lung)


def image_probability(out: ModelOutput | torch.Tensor, activated: bool = False) -> torch.Tensor | None:
    """Per image, the head's probability of COVID-19 infection, (B,) fp32; None for a model without the head.
    `activated`: `out` holds probabilities already (what `get_preds` returns)."""
    logit = as_output(out).get("covid")
    if logit is None:
        return None
    return logit.float() if activated else torch.sigmoid(logit.float())


def evidence_scores(logits: torch.Tensor, topk: float = 0.02) -> torch.Tensor:
    "Per image, the mean infection margin (logit 1 - logit 0) of its `topk` share of most confident pixels."
    margin = (logits[:, 1] - logits[:, 0]).flatten(1)
    k = max(1, int(topk * margin.shape[1]))
    return margin.topk(k, dim=1).values.mean(1)


@dataclass(frozen=True)
class Decision:
    "The run's decision; see the module's docstring. Frozen: `calibrate` makes a new one."
    threshold: float = 0.5  # image probability at or below which the mask is empty (models with the image head)
    gate_topk: float = 0.0  # runs made before the head: the pixel-evidence gate's share of pixels; 0: no gate
    gate_margin: float = 0.0  # the gate's evidence threshold
    # drop predicted infection outside the predicted lungs (models with the lung output). Off by default: on
    # real data (docs/results.md) both Attention U-Net seeds scored exactly the same on Val either way
    inside_lungs: bool = False
    split: str | None = None  # the split it was calibrated on; None: not calibrated
    data_root: str | None = None  # the data root of that split

    def image_scores(self, out: ModelOutput | torch.Tensor, activated: bool = False) -> tuple[torch.Tensor | None, str]:
        """Per image, the score a calibration thresholds and its kind: the head's probability ('image_probability'),
        or for a run made before the head, its pixel evidence ('gate_margin'); (None, '') when it has neither."""
        out = as_output(out)
        prob = image_probability(out, activated)
        if prob is not None:
            return prob, "image_probability"
        if self.gate_topk:
            return self._evidence(out, activated), "gate_margin"
        return None, ""

    def _evidence(self, out: ModelOutput, activated: bool) -> torch.Tensor:
        logits = out.infection.float()
        if activated:  # log-probabilities differ from the logits by a constant per pixel: the same margins
            logits = logits.clamp_min(torch.finfo(torch.float32).tiny).log()
        return evidence_scores(logits, self.gate_topk)

    def keep(self, out: ModelOutput | torch.Tensor, activated: bool = False) -> torch.Tensor | None:
        "Per image, whether it may be outlined at all, (B,) bool; None when every image may."
        out = as_output(out)
        keep = None
        prob = image_probability(out, activated)
        if prob is not None:
            keep = prob > self.threshold
        if self.gate_topk:
            gate = self._evidence(out, activated) > self.gate_margin
            keep = gate if keep is None else keep & gate
        return keep

    def apply(self, out: ModelOutput | torch.Tensor, size: tuple[int, int] | None = None,
              activated: bool = False) -> torch.Tensor:
        """The infection masks, (B, H, W) bool: the pixel rule on images the decision keeps, empty on the others.
        `size` (h, w): upsample the logits (bilinear) to it first, to score at a mask's own resolution."""
        return self._decided(as_output(out), size, activated)[0]

    def _decided(self, out: ModelOutput, size: tuple[int, int] | None, activated: bool):
        "The masks (as `apply`) and the image-level keep they were made with (None: every image may be outlined)."
        logits = out.infection.float()
        if size is not None and tuple(logits.shape[-2:]) != tuple(size):
            logits = F.interpolate(logits, size=size, mode="bilinear", align_corners=False)
        masks = predicted_infection(logits)
        if self.inside_lungs and out.has("lung"):
            masks = masks & predicted_lung(out, tuple(masks.shape[-2:]))
        keep = self.keep(out, activated)
        return (masks if keep is None else masks & keep[:, None, None]), keep

    def mask(self, out: ModelOutput, size: tuple[int, int]) -> np.ndarray:
        "One image's infection mask (an output of batch 1) at `size` (h, w), as a boolean array."
        return self.apply(out, size)[0].cpu().numpy()

    def outcomes(self, out: ModelOutput | torch.Tensor, masks: torch.Tensor | np.ndarray,
                 activated: bool = False) -> list[str]:
        "Per image, the verdict (`outcome`) for the masks this decision made of `out` ((B, H, W), any size)."
        keep = self.keep(out, activated)
        return [outcome(None if keep is None else bool(keep[i]), bool(m.any())) for i, m in enumerate(masks)]

    @classmethod
    def load(cls, run_dir: str | Path, gate_topk: float = 0.0) -> "Decision":
        """A run's decision: calibration.json's threshold (checked: a finite probability, or a finite gate margin)
        where `covfast calibrate` wrote one; 0.5 otherwise. `gate_topk`: the run's pixel-evidence gate (RunSpec)."""
        path = Path(run_dir) / CALIBRATION_FILE
        if not path.is_file():
            return cls(gate_topk=gate_topk)
        data = read_json(path)
        fix = f"run `covfast calibrate {Path(run_dir).name} --force` to write it again"
        if not isinstance(data, dict):
            raise CovfastError(f"{path} holds {type(data).__name__}, not covfast's calibration; {fix}")
        field = "threshold" if "threshold" in data else "gate_margin" if "gate_margin" in data else None
        if field is None:
            raise CovfastError(f"{path} holds no threshold; {fix}")
        value = data[field]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
                or (field == "threshold" and not 0 <= value <= 1):
            what = "a probability between 0 and 1" if field == "threshold" else "a finite number"
            raise CovfastError(f"{path}: {field} {value!r} is not {what}; {fix}")
        split, root = data.get("split"), data.get("data_root")
        if not isinstance(split, str) or not isinstance(root, str):
            raise CovfastError(f"{path} does not say which split and data root it was calibrated on; {fix}")
        inside = data.get("inside_lungs", cls.inside_lungs)
        if not isinstance(inside, bool):
            raise CovfastError(f"{path}: inside_lungs {inside!r} is not true or false; {fix}")
        return cls(gate_topk=gate_topk, split=split, data_root=root, inside_lungs=inside, **{field: float(value)})

    def describe(self) -> dict[str, Any]:
        "What evaluation results depend on (recorded in summary.json)."
        return {"threshold": self.threshold, "gate_topk": self.gate_topk, "gate_margin": self.gate_margin,
                "inside_lungs": self.inside_lungs}


@dataclass(frozen=True)
class Prediction:
    """What covfast says of one X-ray, at the X-ray's own size: made once, by `predict_one`, and read by predict (its
    files and the page), evaluate (per_image.csv) and the report's cases. `portable.decide` is its NumPy twin."""
    mask: np.ndarray  # the infection, (H, W) bool, after the decision
    lung: np.ndarray | None  # the model's own lungs, (H, W) bool; None for a model without the lung output
    p_covid: float  # the image head's probability; NaN for a model without the head
    verdict: str  # one of OUTCOMES
    figures: dict[str, float] = field(default_factory=dict)  # what its other outputs declare (`OutputKind.figures`)


def predict_one(out: ModelOutput, decision: Decision, shape: tuple[int, int]) -> Prediction:
    "The `Prediction` of one X-ray of `shape` (h, w) from the model's outputs for it (a batch of 1) and the run's decision."
    return predict_batch(out, decision, [shape])[0]


# the most X-ray pixels one call of `predict_batch` upsamples at once (8 X-rays of 512 x 512): a batch of large
# DICOMs is done a few at a time, so its fp32 logits at full size stay within a few hundred MB
BATCH_PIXELS = 8 * 512 * 512


def predict_batch(out: ModelOutput, decision: Decision, shapes: list[tuple[int, int]]) -> list[Prediction]:
    """The `Prediction` of each X-ray of a batch, `shapes[i]` the (h, w) of X-ray i: the same as `predict_one` on
    each, with X-rays of one size upsampled together (one call per batch of a dataset's equal-sized X-rays, where one
    per X-ray cost predict 4 ms an X-ray beside the model's own threads)."""
    out = as_output(out)
    said: list[Prediction | None] = [None] * len(shapes)
    figures = output_figures(out)
    groups: dict[tuple[int, int], list[int]] = {}
    for i, shape in enumerate(shapes):
        groups.setdefault(tuple(shape), []).append(i)
    for shape, members in groups.items():
        per_call = max(1, BATCH_PIXELS // (shape[0] * shape[1]))
        for start in range(0, len(members), per_call):
            idx = members[start:start + per_call]
            part = out if idx == list(range(len(shapes))) else out.map(lambda t: t[idx])
            masks, keep = decision._decided(part, shape, False)
            masks = masks.cpu().numpy()
            lung = predicted_lung(part, shape)
            lung = lung.cpu().numpy() if lung is not None else None
            prob = image_probability(part)
            for k, i in enumerate(idx):
                verdict = outcome(None if keep is None else bool(keep[k]), bool(masks[k].any()))
                said[i] = Prediction(masks[k], lung[k] if lung is not None else None,
                                     float(prob[k]) if prob is not None else float("nan"), verdict, figures[i])
    return said


def learner_decision(learn) -> Decision:
    "The learner's decision (`learner.CovfastLearner.decision`); the default one for a learner without."
    return getattr(learn, "decision", None) or Decision()
