"""Set a run's empty-mask gate on its training images, at a chosen share of empty masks left empty.

The gate (`metrics.gate_empty`) empties an image's mask unless the mean infection margin of its most
confident pixels (`evidence_scores`) is above a threshold, 0 by default. That threshold is an
operating point: higher leaves more healthy lungs and other pneumonias empty (specificity) and
misses more small COVID-19 lesions. `calibrate` picks it on the Train split, never on the split that
is evaluated, as the smallest threshold that empties at least `specificity` of the empty-truth images,
and writes it to the run's calibration.json; `load_run` (evaluate, report, compare, predict) uses it.
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
from .metrics import evidence_scores, learner_gate
from .runs import CALIBRATION_FILE, write_json

__all__ = ["evidence_of", "margin_for_specificity", "calibrate"]


def evidence_of(learn, items: pd.DataFrame, bs: int | None = None, progress=None) -> np.ndarray:
    "Per item, the gate's evidence score (`evidence_scores` at the learner's gate share) of the ungated logits."
    gate = learner_gate(learn)
    if gate is None or not gate.topk:
        raise CovfastError("this run's empty-mask gate is off (gate_topk 0); train with --gate-topk above 0 to calibrate it")
    scores = np.empty(len(items))
    for i, logits, _ in iter_logits(learn, items, bs=bs, progress=progress, gated=False):
        scores[i] = float(evidence_scores(logits[None], gate.topk)[0])
    return scores


def margin_for_specificity(empty_scores: np.ndarray, specificity: float) -> float:
    "The smallest threshold that empties (score <= threshold) at least `specificity` of these empty-truth images."
    if not 0 < specificity <= 1:
        raise CovfastError(f"--specificity must be in (0, 1], got {specificity}")
    if len(empty_scores) == 0:
        raise CovfastError("no images with an empty infection mask to calibrate on; use a split with Non-COVID images")
    ordered = np.sort(np.asarray(empty_scores, dtype=float))
    return float(ordered[math.ceil(specificity * len(ordered) - 1e-9) - 1])


def calibrate(
    run: str | Path,  # run directory or its name under runs_dir
    specificity: float = 0.3,  # share of empty-truth images the gate must leave empty
    split: str = "Train",  # split whose images set the threshold (not the one you evaluate)
    data: str | Path | None = None,  # dataset root (default: the run's own)
    config: Config | None = None,  # for runs_dir and bs
    device: str | None = None,
    force: bool = False,  # replace an existing calibration.json
    progress=None,
) -> dict:
    "Write the run's calibration.json (gate threshold and what it reached on `split`) and return it."
    config = config or Config()
    learn, cfg, run_dir = load_run(run, config.runs_dir, device, precision=config.precision)
    path = run_dir / CALIBRATION_FILE
    if path.exists() and not force:
        raise CovfastError(f"{path} exists (gate margin {cfg.get('gate_margin')}); pass --force to replace it")
    items = split_items(data or cfg["data_root"], split, tuple(cfg["classes"]))
    infected = np.array([read_mask(p).any() for p in items.infection_mask])
    scores = evidence_of(learn, items, bs=config.bs, progress=progress)
    margin = margin_for_specificity(scores[~infected], specificity)
    kept = scores > margin
    result = {"gate_margin": margin, "gate_topk": cfg.get("gate_topk"), "specificity": specificity,
              "split": items.split.iloc[0], "data_root": str(data or cfg["data_root"]),
              "n_empty": int((~infected).sum()), "n_infected": int(infected.sum()),
              # what the threshold gives on the calibration split itself: images left empty / kept
              "specificity_reached": float((~kept[~infected]).mean()),
              "sensitivity": float(kept[infected].mean()) if infected.any() else float("nan"),
              "weights": "model.pth", "created": datetime.now().isoformat(timespec="seconds")}
    write_json(path, result)
    return result
