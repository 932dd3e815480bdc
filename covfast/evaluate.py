"""Score a run's best weights on a split at the masks' own resolution: per-image table and summaries."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from .config import CLASSES, Config
from .data import read_mask
from .dataset import scan_tree
from .errors import CovfastError
from .inference import iter_logits, load_run, upsample_mask
from .precision import learner_precision
from .metrics import (confusion_counts, dice_from_counts, image_probability, infection_pct, iou_from_counts,
                      learner_gate, learner_threshold, pooled_dice, pooled_iou, roc_auc, severity_band)
from .runs import read_json, write_json

__all__ = ["REFERENCE", "bootstrap_ci", "bootstrap_auc", "split_items", "score_items", "summarize", "confusion_table",
           "provenance", "evaluate", "evaluated", "reference_table"]

# The reference study (30 epochs): (model, image set, Dice, IoU).
REFERENCE = [("Attention U-Net", "COVID + Non-COVID (mean)", 0.6926, 0.6095),
             ("ResNet34 U-Net", "COVID-19", 0.7701, 0.6650),
             ("ResNet34 U-Net", "Non-COVID", 0.2911, 0.2911)]


def split_items(root: str | Path, split: str, classes: tuple[str, ...]) -> pd.DataFrame:
    "The rows of `split` and `classes` in the tree at `root`; none is an error."
    name = {s.lower(): s for s in ("Train", "Val", "Test")}.get(split.lower())
    if name is None:
        raise CovfastError(f"unknown split {split!r}; use Train, Val or Test")
    split = name
    df = scan_tree(root, (split,), classes)  # the other splits may be absent: an external labelled Test set
    items = df[(df.split == split) & df.label.isin(classes)].reset_index(drop=True)
    if items.empty:
        raise CovfastError(f"no {split} images of classes {', '.join(classes)} under {root}")
    return items


def score_items(learn, items: pd.DataFrame, bs: int | None = None, progress=None, decided: bool = True) -> pd.DataFrame:
    """Per-image metrics (`metrics` definitions) of `learn.model` on `items`, at each mask's own resolution.

    Masks are the learner's decision (`learner_threshold`); `p_covid` is the image head's probability (NaN
    without the head). `decided=False` scores the argmax alone, without the run's decision (neither the
    head's threshold nor the older pixel-evidence gate): what `benchmarks/gate_tradeoff.py` thresholds."""
    rows = []
    threshold = learner_threshold(learn) if decided else -float("inf")
    for i, logits, target in iter_logits(learn, items, bs=bs, with_labels=True, progress=progress, gated=decided):
        item = items.iloc[i]
        truth = read_mask(item.infection_mask).astype(bool)
        lung = read_mask(item.lung_mask).astype(bool)
        pred = upsample_mask(logits, truth.shape, threshold)
        prob = image_probability(logits[None])
        tp, fp, fn = confusion_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])[0].tolist()
        rows.append({"file": item["name"], "class": item.label, "dice": float(dice_from_counts(tp, fp, fn)),
                     "iou": float(iou_from_counts(tp, fp, fn)), "tp": tp, "fp": fp, "fn": fn,
                     "pred_empty": tp + fp == 0, "p_covid": float(prob[0]) if prob is not None else float("nan"),
                     "true_pct_lung": infection_pct(truth, lung), "pred_pct_lung": infection_pct(pred, lung),
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


def bootstrap_auc(scores: np.ndarray, positive: np.ndarray, n_boot: int = 1000, seed: int = 0) -> tuple[float, float, float]:
    "ROC AUC and its 95% percentile bootstrap interval (resampling images; resamples without both kinds are skipped)."
    auc = roc_auc(scores, positive)
    if np.isnan(auc):
        return auc, float("nan"), float("nan")
    rng = np.random.default_rng(seed)
    draws = [roc_auc(scores[idx], positive[idx]) for idx in rng.integers(0, len(scores), size=(n_boot, len(scores)))]
    lo, hi = np.nanpercentile(draws, [2.5, 97.5])
    return auc, float(lo), float(hi)


def summarize(per_image: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per class and for all images: n, mean Dice/IoU with bootstrap 95% CI, pooled Dice/IoU, image-level and
    severity figures. `auc` (with CI) is the image head's ROC AUC of telling COVID-19 from the group's images
    (the row "All": from every other image); NaN on the COVID-19 row and for runs without the head."""
    groups = [(c, per_image[per_image["class"] == c]) for c in CLASSES if (per_image["class"] == c).any()]
    groups.append(("All", per_image))
    rows = []
    for name, g in groups:
        has_truth = (g.tp + g.fn) > 0
        d_lo, d_hi = bootstrap_ci(g.dice.to_numpy(), n_boot, seed)
        i_lo, i_hi = bootstrap_ci(g.iou.to_numpy(), n_boot, seed)
        tp, fp, fn = g.tp.sum(), g.fp.sum(), g.fn.sum()
        graded = g.dropna(subset=["true_pct_lung", "pred_pct_lung"])  # an empty lung mask has no severity
        against = per_image[(per_image["class"] == "COVID-19") | ((per_image["class"] == name) | (name == "All"))]
        scores = against.get("p_covid", pd.Series(np.nan, index=against.index)).to_numpy(dtype=float)
        auc = ((float("nan"),) * 3 if name == "COVID-19" or np.isnan(scores).any() else
               bootstrap_auc(scores, (against["class"] == "COVID-19").to_numpy(), n_boot, seed))
        rows.append({
            "group": name, "n": len(g),
            "dice": g.dice.mean(), "dice_ci_low": d_lo, "dice_ci_high": d_hi,
            "iou": g.iou.mean(), "iou_ci_low": i_lo, "iou_ci_high": i_hi,
            "dice_pooled": pooled_dice(tp, fp, fn), "iou_pooled": pooled_iou(tp, fp, fn),
            # image level: infected images predicted non-empty; empty-truth images predicted empty
            "sensitivity": (~g.pred_empty[has_truth]).mean() if has_truth.any() else float("nan"),
            "specificity": g.pred_empty[~has_truth].mean() if (~has_truth).any() else float("nan"),
            "severity_mae": (graded.pred_pct_lung - graded.true_pct_lung).abs().mean(),
            "severity_band_agreement": ((severity_band(graded.pred_pct_lung) == severity_band(graded.true_pct_lung)).mean()
                                        if len(graded) else float("nan")),
            "auc": auc[0], "auc_ci_low": auc[1], "auc_ci_high": auc[2],
        })
    return pd.DataFrame(rows)


def confusion_table(per_image: pd.DataFrame) -> pd.DataFrame:
    "Images per class (rows) by the run's decision (columns: an outline, or an empty mask)."
    decision = np.where(per_image.pred_empty, "empty mask", "outlined")
    table = pd.crosstab(pd.Categorical(per_image["class"], [c for c in CLASSES if (per_image["class"] == c).any()]),
                        pd.Categorical(decision, ["outlined", "empty mask"]), dropna=False)
    table.index.name, table.columns.name = "class", "decision"
    return table


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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def provenance(learn, run_dir: Path, data_root: str | Path) -> dict:
    """What an evaluation's numbers depend on: the weights (model.pth's SHA-256), the decision's threshold (and
    the older pixel-evidence gate's settings), the data root and the precision the model ran in. `evaluated`
    reuses stored results only when all of them still match."""
    gate = learner_gate(learn)
    return {"weights_sha256": _sha256(run_dir / "model.pth"), "threshold": learner_threshold(learn),
            "gate_topk": gate.topk if gate else 0.0, "gate_margin": gate.margin if gate else 0.0,
            "data_root": str(Path(data_root).resolve()), "precision": learner_precision(learn).mode}


def _check_not_calibration_split(cfg: dict, split: str, root: str | Path, allow: bool) -> None:
    "Refuse to report on the images the decision's threshold was chosen on (unless `allow`)."
    calibration = cfg.get("calibration") or {}
    same_root = Path(calibration.get("data_root", "")).resolve() == Path(root).resolve()
    if not allow and same_root and str(calibration.get("split", "")).lower() == split.lower():
        raise CovfastError(f"this run's threshold was calibrated on {calibration['split']}: scores on that split "
                           f"flatter the run (the threshold was chosen to fit those images); evaluate another split "
                           f"(e.g. --split Test), or pass --allow-calibration-split to score it anyway")


def _evaluate(learn, cfg: dict, run_dir: Path, split: str, data: str | Path | None, bs: int | None,
              progress, allow_calibration_split: bool = False,
              classes: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    root = data or cfg["data_root"]
    _check_not_calibration_split(cfg, split, root, allow_calibration_split)
    items = split_items(root, split, classes or tuple(cfg["classes"]))
    per_image = score_items(learn, items, bs=bs, progress=progress)
    summary = summarize(per_image)
    out = run_dir / "eval" / items.split.iloc[0]
    out.mkdir(parents=True, exist_ok=True)
    per_image.to_csv(out / "per_image.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    write_json(out / "summary.json", {"run": run_dir.name, "split": items.split.iloc[0],
                                      **provenance(learn, run_dir, root), "classes": sorted(set(items.label)),
                                      "groups": summary.to_dict("records"),
                                      "confusion": confusion_table(per_image).to_dict("index"),
                                      "reference": reference_table(summary).to_dict("records")})
    return per_image, summary, out


def evaluate(
    run: str | Path,  # run directory or its name under runs_dir
    split: str = "Test",
    data: str | Path | None = None,  # dataset root (default: the run's own)
    config: Config | None = None,  # for runs_dir and bs
    device: str | None = None,
    progress=None,
    allow_calibration_split: bool = False,  # score the split the threshold was calibrated on anyway
    classes: tuple[str, ...] | None = None,  # the classes to score (default: those the run trained on)
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    "Write eval/<split>/per_image.csv and summary.{csv,json}; return (per_image, summary, folder)."
    config = config or Config()
    learn, cfg, run_dir = load_run(run, config.runs_dir, device, precision=config.precision)
    return _evaluate(learn, cfg, run_dir, split, data, config.bs, progress, allow_calibration_split, classes)


def evaluated(
    run: str | Path,
    split: str = "Test",
    data: str | Path | None = None,
    config: Config | None = None,
    device: str | None = None,
    progress=None,
    allow_calibration_split: bool = False,
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """`evaluate`'s results, read back from eval/<split>/ when they came from the same weights, threshold,
    data root and precision as now; scored afresh otherwise (after `covfast calibrate`, say)."""
    config = config or Config()
    learn, cfg, run_dir = load_run(run, config.runs_dir, device, precision=config.precision)
    folder = run_dir / "eval" / split.capitalize()
    if (folder / "summary.json").is_file() and (folder / "per_image.csv").is_file():
        stored = read_json(folder / "summary.json")
        now = {**provenance(learn, run_dir, data or cfg["data_root"]), "classes": sorted(cfg["classes"])}
        if all(stored.get(k) == v for k, v in now.items()):
            return pd.read_csv(folder / "per_image.csv"), pd.read_csv(folder / "summary.csv"), folder
    return _evaluate(learn, cfg, run_dir, split, data, config.bs, progress, allow_calibration_split)
