"""Score a run's best weights on a split at the masks' own resolution: per-image table and summaries."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import CLASSES, Config
from .data import read_mask
from .dataset import scan_tree
from .errors import CovfastError
from .metrics import confusion_counts, dice_from_counts, iou_from_counts, learner_gate, pooled_dice
from .predict import iter_logits, upsample_mask
from .runs import CALIBRATION_FILE, load_weights, read_json, resolve_run, write_json

__all__ = ["REFERENCE", "SEVERITY_BANDS", "severity_band", "bootstrap_ci", "load_run", "split_items", "score_items",
           "summarize", "evaluate", "reference_table"]

# The reference study (30 epochs): (model, image set, Dice, IoU).
REFERENCE = [("Attention U-Net", "COVID + Non-COVID (mean)", 0.6926, 0.6095),
             ("ResNet34 U-Net", "COVID-19", 0.7701, 0.6650),
             ("ResNet34 U-Net", "Non-COVID", 0.2911, 0.2911)]
# Severity bands of infection % of lung: 0, <25, 25-50, 50-75, >=75.
SEVERITY_BANDS = ("0", "<25", "25-50", "50-75", ">=75")


def severity_band(pct: np.ndarray | float) -> np.ndarray:
    "Band index 0..4 of infection % of lung."
    pct = np.asarray(pct, dtype=float)
    return np.where(pct <= 0, 0, np.digitize(pct, [25, 50, 75]) + 1)


def load_run(run: str | Path, runs_dir: str | Path = "runs", device: str | None = None, with_data: bool = False):
    """A run's learner with its best weights (model.pth, weights_only), its config and its directory.

    Needs only the run directory: the learner carries the validation transforms, not the training
    data. Its empty-mask gate uses the threshold of calibration.json when `covfast calibrate` wrote
    one. `with_data=True` attaches the run's Train/Val DataLoaders instead (for `learn.show_results()`).
    """
    from .train import learner_for_config
    run_dir = resolve_run(run, runs_dir)
    cfg = read_json(run_dir / "config.json")
    if (run_dir / CALIBRATION_FILE).is_file():
        cfg["calibration"] = read_json(run_dir / CALIBRATION_FILE)
        cfg["gate_margin"] = cfg["calibration"]["gate_margin"]
    if device is not None:
        cfg["device"] = device
    learn, _ = learner_for_config(cfg, pretrained=False, warn=False, inference=not with_data)
    learn.model.load_state_dict(load_weights(run_dir / "model.pth", map_location=learn.dls.device))
    learn.model.to(learn.dls.device).eval()  # fastai moves the model only when fitting; prediction feeds it directly
    learn.path = run_dir
    return learn, cfg, run_dir


def split_items(root: str | Path, split: str, classes: tuple[str, ...]) -> pd.DataFrame:
    "The rows of `split` and `classes` in the tree at `root`; none is an error."
    name = {s.lower(): s for s in ("Train", "Val", "Test")}.get(split.lower())
    if name is None:
        raise CovfastError(f"unknown split {split!r}; use Train, Val or Test")
    split = name
    df = scan_tree(root)
    items = df[(df.split == split) & df.label.isin(classes)].reset_index(drop=True)
    if items.empty:
        raise CovfastError(f"no {split} images of classes {', '.join(classes)} under {root}")
    return items


def score_items(learn, items: pd.DataFrame, bs: int | None = None, progress=None, gated: bool = True) -> pd.DataFrame:
    """Per-image metrics (DESIGN.md definitions) of `learn.model` on `items`, at each mask's own resolution.

    `gated=False` scores the raw argmax, without the learner's empty-mask gate."""
    rows = []
    for i, logits, target in iter_logits(learn, items, bs=bs, with_labels=True, progress=progress, gated=gated):
        item = items.iloc[i]
        truth = read_mask(item.infection_mask).astype(bool)
        lung = read_mask(item.lung_mask).astype(bool)
        pred = upsample_mask(logits, truth.shape)
        tp, fp, fn = confusion_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])[0].tolist()
        lung_px = max(int(lung.sum()), 1)
        rows.append({"file": item["name"], "class": item.label, "dice": float(dice_from_counts(tp, fp, fn)),
                     "iou": float(iou_from_counts(tp, fp, fn)), "tp": tp, "fp": fp, "fn": fn,
                     "pred_empty": tp + fp == 0,
                     "true_pct_lung": 100.0 * int((truth & lung).sum()) / lung_px,
                     "pred_pct_lung": 100.0 * int((pred & lung).sum()) / lung_px,
                     "loss": float(learn.loss_func(logits[None], target[None])), "image": item.image})
    return pd.DataFrame(rows)


def bootstrap_ci(values: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float]:
    "95% percentile bootstrap interval of the mean."
    if len(values) == 0:
        return float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    means = values[rng.integers(0, len(values), size=(n_boot, len(values)))].mean(1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return float(lo), float(hi)


def summarize(per_image: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    "Per class and for all images: n, mean Dice/IoU with bootstrap 95% CI, pooled Dice/IoU, image-level and severity figures."
    groups = [(c, per_image[per_image["class"] == c]) for c in CLASSES if (per_image["class"] == c).any()]
    groups.append(("All", per_image))
    rows = []
    for name, g in groups:
        has_truth = (g.tp + g.fn) > 0
        d_lo, d_hi = bootstrap_ci(g.dice.to_numpy(), n_boot, seed)
        i_lo, i_hi = bootstrap_ci(g.iou.to_numpy(), n_boot, seed)
        tp, fp, fn = g.tp.sum(), g.fp.sum(), g.fn.sum()
        rows.append({
            "group": name, "n": len(g),
            "dice": g.dice.mean(), "dice_ci_low": d_lo, "dice_ci_high": d_hi,
            "iou": g.iou.mean(), "iou_ci_low": i_lo, "iou_ci_high": i_hi,
            "dice_pooled": pooled_dice(tp, fp, fn), "iou_pooled": 1.0 if tp + fp + fn == 0 else tp / (tp + fp + fn),
            # image level: infected images predicted non-empty; empty-truth images predicted empty
            "sensitivity": (~g.pred_empty[has_truth]).mean() if has_truth.any() else float("nan"),
            "specificity": g.pred_empty[~has_truth].mean() if (~has_truth).any() else float("nan"),
            "severity_mae": (g.pred_pct_lung - g.true_pct_lung).abs().mean(),
            "severity_band_agreement": (severity_band(g.pred_pct_lung) == severity_band(g.true_pct_lung)).mean(),
        })
    return pd.DataFrame(rows)


def reference_table(summary: pd.DataFrame) -> pd.DataFrame:
    "The reference study's figures beside this run's matching ones."
    by = summary.set_index("group")
    two = [g for g in ("COVID-19", "Non-COVID") if g in by.index]
    ours = {"COVID + Non-COVID (mean)": None, "COVID-19": "COVID-19", "Non-COVID": "Non-COVID"}
    rows = []
    for model, subset, dice, iou in REFERENCE:
        key = ours[subset]
        if key is None:  # per-image mean over COVID + Non-COVID images
            n = by.loc[two, "n"]
            d, i = (by.loc[two, "dice"] * n).sum() / n.sum(), (by.loc[two, "iou"] * n).sum() / n.sum()
        elif key in by.index:
            d, i = by.loc[key, "dice"], by.loc[key, "iou"]
        else:
            d = i = float("nan")
        rows.append({"reference model": model, "images": subset, "reference dice": dice, "reference iou": iou,
                     "this run dice": d, "this run iou": i, "beats reference": bool(d > dice)})
    return pd.DataFrame(rows)


def evaluate(
    run: str | Path,  # run directory or its name under runs_dir
    split: str = "Test",
    data: str | Path | None = None,  # dataset root (default: the run's own)
    config: Config | None = None,  # for runs_dir and bs
    device: str | None = None,
    progress=None,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    "Write eval/<split>/per_image.csv and summary.{csv,json}; return (per_image, summary, folder)."
    config = config or Config()
    learn, cfg, run_dir = load_run(run, config.runs_dir, device)
    items = split_items(data or cfg["data_root"], split, tuple(cfg["classes"]))
    per_image = score_items(learn, items, bs=config.bs, progress=progress)
    summary = summarize(per_image)
    gate = learner_gate(learn)
    out = run_dir / "eval" / items.split.iloc[0]
    out.mkdir(parents=True, exist_ok=True)
    per_image.to_csv(out / "per_image.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    write_json(out / "summary.json", {"run": run_dir.name, "split": items.split.iloc[0],
                                      "data_root": str(data or cfg["data_root"]),
                                      "gate_topk": gate.topk if gate else 0.0, "gate_margin": gate.margin if gate else 0.0,
                                      "groups": summary.to_dict("records"),
                                      "reference": reference_table(summary).to_dict("records")})
    return per_image, summary, out
