"""Set a run's decision threshold on a split it was not fitted on (Val), at a chosen specificity or sensitivity.

A run with the image head keeps an image's mask when the head's probability is above the threshold
(`metrics.decided_infection`); a run made before the head, when its pixel-evidence score is above the
gate's margin (`metrics.gate_empty`). Either way the threshold is an operating point: higher leaves more
healthy lungs and other pneumonias empty and misses more COVID-19 images. `calibrate` chooses it on a
split the model did not train on (Val by default: the Train images are memorised, and their scores say
little about new ones), writes calibration.json, and `load_run` applies it everywhere; `evaluate` refuses
to report on the split it was chosen on.
"""

from __future__ import annotations

import math
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd

from .config import Config
from .data import read_mask
from .errors import CovfastError
from .evaluate import split_items
from .inference import iter_logits, load_run
from .metrics import evidence_scores, image_probability, learner_gate
from .runs import CALIBRATION_FILE, write_json

__all__ = ["OPERATING_SENSITIVITIES", "image_scores", "threshold_for_specificity", "threshold_for_sensitivity",
           "operating_points", "calibrate"]

# the sensitivities whose thresholds calibrate lists beside the chosen one, so a user sees the trade-off
OPERATING_SENSITIVITIES = (0.90, 0.95, 0.98, 0.99)


def image_scores(learn, items: pd.DataFrame, bs: int | None = None, progress=None) -> tuple[np.ndarray, str]:
    """Per item, the score the run's decision thresholds, and its kind: the image head's probability
    ('image_probability'), or for a run without the head its gate's evidence score ('gate_margin')."""
    gate = learner_gate(learn)
    scores, kind = np.empty(len(items)), None
    for i, logits, _ in iter_logits(learn, items, bs=bs, progress=progress, gated=False):
        prob = image_probability(logits[None])
        if prob is not None:
            scores[i], kind = float(prob[0]), "image_probability"
        elif gate is not None and gate.topk:
            scores[i], kind = float(evidence_scores(logits[None], gate.topk)[0]), "gate_margin"
        else:
            raise CovfastError("this run has neither the image head nor the pixel-evidence gate (gate_topk 0): "
                               "it has no decision to calibrate; train with --cls-weight above 0")
    return scores, kind


def _ordered(scores: np.ndarray, share: float, option: str, none_left: str) -> tuple[np.ndarray, int]:
    "The scores sorted ascending and how many of them `share` asks for (at least that share, rounded up)."
    if not 0 < share <= 1:
        raise CovfastError(f"{option} must be in (0, 1], got {share}")
    if len(scores) == 0:
        raise CovfastError(none_left)
    return np.sort(np.asarray(scores, dtype=float)), math.ceil(share * len(scores) - 1e-9)


def threshold_for_specificity(empty_scores: np.ndarray, specificity: float) -> float:
    "The smallest threshold that empties (score <= threshold) at least `specificity` of these empty-truth images."
    ordered, k = _ordered(empty_scores, specificity, "--specificity",
                          "no images with an empty infection mask to calibrate on; use a split with Non-COVID or Normal images")
    return float(ordered[k - 1])


def threshold_for_sensitivity(infected_scores: np.ndarray, sensitivity: float) -> float:
    "The largest threshold that keeps (score > threshold) at least `sensitivity` of these infected images."
    ordered, k = _ordered(infected_scores, sensitivity, "--sensitivity",
                          "no COVID-19 images to calibrate on; use a split with COVID-19 images")
    kth_highest = ordered[::-1][k - 1]
    return float(np.nextafter(kth_highest, -np.inf))  # just below it: it and every higher score are kept


def operating_points(scores: np.ndarray, labels: np.ndarray, infected: np.ndarray,
                     sensitivities: tuple[float, ...] = OPERATING_SENSITIVITIES) -> list[dict]:
    """Per target sensitivity: its threshold on these scores, the sensitivity reached, and the share of the
    empty-truth images left empty, over all of them and per class (Non-COVID, Normal)."""
    points = []
    for target in sensitivities:
        threshold = threshold_for_sensitivity(scores[infected], target)
        empty = scores <= threshold
        left_empty = {str(c): float(empty[(labels == c) & ~infected].mean())
                      for c in dict.fromkeys(labels[~infected])}
        points.append({"target_sensitivity": target, "threshold": threshold,
                       "sensitivity": float((~empty[infected]).mean()),
                       "empty_truth_left_empty": float(empty[~infected].mean()) if (~infected).any() else float("nan"),
                       "left_empty": left_empty})
    return points


def calibrate(
    run: str | Path,  # run directory or its name under runs_dir
    specificity: float | None = None,  # share of empty-truth images (Non-COVID, Normal) to leave empty
    sensitivity: float | None = None,  # or: share of COVID-19 images to keep outlined (one of the two)
    split: str = "Val",  # split whose images set the threshold; never the one you report on
    data: str | Path | None = None,  # dataset root (default: the run's own)
    config: Config | None = None,  # for runs_dir, bs and precision
    device: str | None = None,
    force: bool = False,  # replace an existing calibration.json
    progress=None,
) -> dict:
    "Write the run's calibration.json (the threshold and what it reaches on `split`) and return it."
    if (specificity is None) == (sensitivity is None):
        raise CovfastError("give one target: --specificity (share of empty-truth images left empty) or --sensitivity "
                           "(share of COVID-19 images outlined)")
    config = config or Config()
    learn, cfg, run_dir = load_run(run, config.runs_dir, device, precision=config.precision)
    path = run_dir / CALIBRATION_FILE
    if path.exists() and not force:
        raise CovfastError(f"{path} exists (threshold {cfg['calibration'].get('threshold', cfg['calibration'].get('gate_margin'))}); "
                           f"pass --force to replace it")
    items = split_items(data or cfg["data_root"], split, tuple(cfg["classes"]))
    infected = np.array([read_mask(p).any() for p in items.infection_mask])
    scores, kind = image_scores(learn, items, bs=config.bs, progress=progress)
    threshold = (threshold_for_specificity(scores[~infected], specificity) if specificity is not None
                 else threshold_for_sensitivity(scores[infected], sensitivity))
    kept = scores > threshold
    result = {"kind": kind, ("threshold" if kind == "image_probability" else "gate_margin"): threshold,
              "target": "specificity" if specificity is not None else "sensitivity",
              "target_value": specificity if specificity is not None else sensitivity,
              "split": items.split.iloc[0], "data_root": str(Path(data or cfg["data_root"]).resolve()),
              "n_empty": int((~infected).sum()), "n_infected": int(infected.sum()),
              # what the threshold gives on the calibration split itself: images left empty / kept
              "specificity_reached": float((~kept[~infected]).mean()) if (~infected).any() else float("nan"),
              "sensitivity": float(kept[infected].mean()) if infected.any() else float("nan"),
              "weights": "model.pth", "created": datetime.now().isoformat(timespec="seconds")}
    if kind == "gate_margin":
        result["gate_topk"] = cfg.get("gate_topk")
    if infected.any():  # the trade-off around the chosen point, on the same split
        result["operating_points"] = operating_points(scores, items.label.to_numpy(), infected)
    write_json(path, result)
    return result
