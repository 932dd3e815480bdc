"""Set a run's decision threshold on a split it was not fitted on (Val), at a chosen specificity or sensitivity.

A run with the image head keeps an image's mask when the head's probability is above the threshold; a
run made before the head, when its pixel-evidence score is above the gate's margin (`decision.Decision`). Either way the threshold is an operating point: higher leaves more
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

from . import metrics
from .config import Config
from .data import read_mask
from .dataset import canonical_root
from .decision import CALIBRATION_FILE, Decision, learner_decision
from .errors import CovfastError
from .evaluate import split_items
from .inference import Run, iter_outputs, load_run
from .runs import write_json

__all__ = ["DEFAULT_SENSITIVITY", "OPERATING_SENSITIVITIES", "image_scores", "threshold_for_specificity", "threshold_for_sensitivity",
           "operating_points", "calibrate", "calibration_text"]

# calibrate's target when none is given: keep 95% of the COVID-19 images outlined
DEFAULT_SENSITIVITY = 0.95
# the sensitivities whose thresholds calibrate lists beside the chosen one, so a user sees the trade-off
OPERATING_SENSITIVITIES = (0.90, 0.95, 0.98, 0.99)


def image_scores(learn, items: pd.DataFrame, bs: int | None = None, progress=None) -> tuple[np.ndarray, str]:
    """Per item, the score the run's decision thresholds, and its kind (`Decision.image_scores`): the image head's
    probability ('image_probability'), or for a run made before the head its gate's evidence ('gate_margin')."""
    decision = learner_decision(learn)
    scores, kind = np.empty(len(items)), ""
    for i, out, _ in iter_outputs(learn, items, bs=bs, progress=progress):
        score, kind = decision.image_scores(out)
        if score is None:
            raise CovfastError("this run has neither the image head nor the pixel-evidence gate: it has no decision to "
                               "calibrate; train with --cls-weight above 0")
        scores[i] = float(score[0])
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


def operating_points(scores: np.ndarray, labels: np.ndarray, truth_infected: np.ndarray,
                     sensitivities: tuple[float, ...] = OPERATING_SENSITIVITIES) -> list[dict]:
    """Per target sensitivity: its threshold on these scores, the sensitivity reached, and the share of the
    empty-truth images left empty, over all of them and per class (Non-COVID, Normal)."""
    points = []
    for target in sensitivities:
        threshold = threshold_for_sensitivity(scores[truth_infected], target)
        empty = scores <= threshold
        left_empty = {str(c): metrics.specificity(empty[labels == c], truth_infected[labels == c])
                      for c in dict.fromkeys(labels[~truth_infected])}
        points.append({"target_sensitivity": target, "threshold": threshold,
                       "sensitivity": metrics.sensitivity(empty, truth_infected),
                       "empty_truth_left_empty": metrics.specificity(empty, truth_infected), "left_empty": left_empty})
    return points


def calibrate(
    run: str | Path,  # run directory or its name under runs_dir
    specificity: float | None = None,  # share of empty-truth images (Non-COVID, Normal) to leave empty
    sensitivity: float | None = None,  # or: share of COVID-19 images to keep outlined (default 0.95 when neither is given)
    split: str = "Val",  # split whose images set the threshold; never the one you report on
    data: str | Path | None = None,  # dataset root (default: the run's own)
    config: Config | None = None,  # for runs_dir, bs and precision
    device: str | None = None,
    force: bool = False,  # replace an existing calibration.json
    progress=None,
    inside_lungs: bool | None = None,  # keep the infection inside the model's predicted lungs (default: `Decision`'s)
) -> dict:
    "Write the run's calibration.json (the threshold and what it reaches on `split`) and return it."
    if specificity is not None and sensitivity is not None:
        raise CovfastError("give one target: --specificity (share of empty-truth images left empty) or --sensitivity "
                           "(share of COVID-19 images outlined)")
    if specificity is None and sensitivity is None:
        sensitivity = DEFAULT_SENSITIVITY
    config = config or Config()
    learn, loaded = load_run(run, config.runs_dir, device, precision=config.precision)
    path = loaded.dir / CALIBRATION_FILE
    if path.exists() and not force:
        decision = loaded.decision
        raise CovfastError(f"{path} exists (threshold {decision.threshold if decision.gate_topk == 0 else decision.gate_margin}); "
                           f"pass --force to replace it")
    root = data or loaded.spec.data_root
    items = split_items(root, split, loaded.spec.classes)
    truth = np.array([read_mask(p).any() for p in items.infection_mask])
    scores, kind = image_scores(learn, items, bs=config.bs, progress=progress)
    threshold = (threshold_for_specificity(scores[~truth], specificity) if specificity is not None
                 else threshold_for_sensitivity(scores[truth], sensitivity))
    empty = scores <= threshold
    result = {"kind": kind, ("threshold" if kind == "image_probability" else "gate_margin"): threshold,
              "inside_lungs": loaded.decision.inside_lungs if inside_lungs is None else inside_lungs,
              "target": "specificity" if specificity is not None else "sensitivity",
              "target_value": specificity if specificity is not None else sensitivity,
              "split": items.split.iloc[0], "data_root": canonical_root(root),
              "n_empty": int((~truth).sum()), "n_infected": int(truth.sum()),
              # what the threshold gives on the calibration split itself: images left empty / kept
              "specificity_reached": metrics.specificity(empty, truth), "sensitivity": metrics.sensitivity(empty, truth),
              "weights": "model.pth", "created": datetime.now().isoformat(timespec="seconds")}
    if kind == "gate_margin":
        result["gate_topk"] = loaded.spec.gate_topk
    if truth.any():  # the trade-off around the chosen point, on the same split
        result["operating_points"] = operating_points(scores, items.label.to_numpy(), truth)
    write_json(path, result)
    from .export import stale_export_note  # an export made before this calibration holds the old threshold

    stale = stale_export_note(Run(loaded.dir, loaded.spec, loaded.record, Decision.load(loaded.dir, loaded.spec.gate_topk)))
    return {**result, **({"stale_export": stale} if stale else {})}


def calibration_text(result: dict) -> str:
    "What `covfast calibrate` prints: the threshold chosen, what it reaches, and the other operating points."
    what = (f"threshold {result['threshold']:.4f} on the image probability" if "threshold" in result else
            f"gate margin {result['gate_margin']:.4f} (top {result['gate_topk']:g} of pixels)")
    lines = [f"{what}, chosen on {result['split']} for {result['target']} {result['target_value']:g}: "
             f"{result['specificity_reached']:.3f} of {result['n_empty']} empty-truth images left empty, "
             f"{result['sensitivity']:.3f} of {result['n_infected']} COVID-19 images outlined"]
    points = result.get("operating_points") or []
    if points:
        classes = list(points[0]["left_empty"])
        lines.append(f"Other operating points on {result['split']} (choose one with --sensitivity S --force):")
        lines.append("  sensitivity  threshold  " + "  ".join(f"{c} left empty" for c in classes))
        for p in points:
            lines.append(f"  {p['sensitivity']:11.3f}  {p['threshold']:9.4f}  "
                         + "  ".join(f"{p['left_empty'][c]:{len(c) + 11}.3f}" for c in classes))
    if result.get("stale_export"):
        lines.append(f"Note: {result['stale_export']}")
    return "\n".join(lines)
