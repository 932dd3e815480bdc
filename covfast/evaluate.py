"""Score a run's best weights on a split at the masks' own resolution: per-image table and summaries."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from . import __version__
from .config import CLASSES, Config
from .data import read_mask
from .dataset import canonical_root, check_tree, scan_tree
from .decision import EMPTY, FLAGGED, OUTCOMES, OUTLINED, Decision, learner_decision, predict_one
from .errors import CovfastError, format_problems
from .inference import Run, iter_outputs, load_run
from .outputs import figure_labels
from .metrics import (band_agreement, bootstrap_auc, bootstrap_ci, confusion_counts, dice_from_counts, infected,
                      infection_pct, iou_from_counts, pooled_dice, pooled_iou, sensitivity, SEVERITY_BANDS, severity_band,
                      severity_correlation, severity_mae, specificity)
from .precision import learner_precision
from .ensemble import weights_digest
from .runs import read_json, run_subdir, write_json
from .synth import is_synthetic

__all__ = ["REFERENCE", "split_items", "score_items", "summarize", "confusion_table", "band_confusion", "provenance",
           "check_calibration_split", "evaluate", "evaluated", "reference_table", "evaluation_text"]

# The reference study (30 epochs): (model, image set, Dice, IoU).
REFERENCE = [("Attention U-Net", "COVID + Non-COVID (mean)", 0.6926, 0.6095),
             ("ResNet34 U-Net", "COVID-19", 0.7701, 0.6650),
             ("ResNet34 U-Net", "Non-COVID", 0.2911, 0.2911)]


def split_items(root: str | Path, split: str, classes: tuple[str, ...], check: bool = True) -> pd.DataFrame:
    """The rows of `split` and `classes` in the tree at `root`; none is an error. `check`: open every file first
    (`covfast data check`'s checks), so a damaged PNG is named before any scoring."""
    name = {s.lower(): s for s in ("Train", "Val", "Test")}.get(split.lower())
    if name is None:
        raise CovfastError(f"unknown split {split!r}; use Train, Val or Test")
    split = name
    df = scan_tree(root, (split,), classes)  # the other splits may be absent: an external labelled Test set
    items = df[(df.split == split) & df.label.isin(classes)].reset_index(drop=True)
    if items.empty:
        raise CovfastError(f"no {split} images of classes {', '.join(classes)} under {root}")
    if check:
        _, problems = check_tree(root, splits=(split,), classes=tuple(dict.fromkeys(items.label)))
        if problems:
            raise CovfastError(f"the {split} data has problems (run `covfast data check` for all of them):\n"
                               + format_problems(problems))
    return items


def score_items(learn, items: pd.DataFrame, bs: int | None = None, progress=None, decided: bool = True) -> pd.DataFrame:
    """Per-image metrics (`metrics` definitions) of `learn.model` on `items`, at each mask's own resolution.

    Masks are the learner's decision (`learner_decision`); `p_covid` is the image head's probability (NaN
    without the head). `decided=False` scores the pixel rule alone, every image outlined (no threshold, no
    pixel-evidence gate): the segmentation's ceiling, what `benchmarks/segmentation_ceiling.py` reports."""
    rows = []
    decision = learner_decision(learn) if decided else Decision(threshold=-math.inf)
    nan = float("nan")
    for i, out, target in iter_outputs(learn, items, bs=bs, with_labels=True, progress=progress):
        item = items.iloc[i]
        truth = read_mask(item.infection_mask).astype(bool)
        lung = read_mask(item.lung_mask).astype(bool)
        said = predict_one(out, decision, truth.shape)
        pred = said.mask
        tp, fp, fn = confusion_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])[0].tolist()
        row = {"file": item["name"], "class": item.label, "dice": float(dice_from_counts(tp, fp, fn)),
               "iou": float(iou_from_counts(tp, fp, fn)), "tp": tp, "fp": fp, "fn": fn,
               "pred_empty": tp + fp == 0, "outcome": said.verdict, "p_covid": said.p_covid,
               # severity: the truth's, and the prediction's measured with the true lungs
               "true_pct_lung": infection_pct(truth, lung), "pred_pct_lung": infection_pct(pred, lung),
               "lung_dice": nan, "lung_iou": nan, "pred_pct_pred_lung": nan}
        lungs = said.lung
        if lungs is not None:  # the model's own lungs: their Dice, and the prediction's severity measured with them
            ltp, lfp, lfn = confusion_counts(torch.from_numpy(lungs)[None], torch.from_numpy(lung)[None])[0].tolist()
            row.update(lung_dice=float(dice_from_counts(ltp, lfp, lfn)), lung_iou=float(iou_from_counts(ltp, lfp, lfn)),
                       pred_pct_pred_lung=infection_pct(pred, lungs))
        rows.append({**row, **said.figures, "loss": float(learn.loss_func(out, target[None])), "image": item.image})
    return pd.DataFrame(rows)


def summarize(per_image: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per class and for all images: n, mean Dice/IoU with bootstrap 95% CI, pooled Dice/IoU, image-level and
    severity figures. `auc` (with CI) is the image head's ROC AUC of telling COVID-19 from the group's images
    (the row "All": from every other image); NaN on the COVID-19 row and for runs without the head."""
    groups = [(c, per_image[per_image["class"] == c]) for c in CLASSES if (per_image["class"] == c).any()]
    groups.append(("All", per_image))
    rows = []
    for name, g in groups:
        d_lo, d_hi = bootstrap_ci(g.dice.to_numpy(), n_boot, seed)
        i_lo, i_hi = bootstrap_ci(g.iou.to_numpy(), n_boot, seed)
        tp, fp, fn = g.tp.sum(), g.fp.sum(), g.fn.sum()
        against = per_image[(per_image["class"] == "COVID-19") | ((per_image["class"] == name) | (name == "All"))]
        scores = against.get("p_covid", pd.Series(np.nan, index=against.index)).to_numpy(dtype=float)
        auc = ((float("nan"),) * 3 if name == "COVID-19" or np.isnan(scores).any() else
               bootstrap_auc(scores, (against["class"] == "COVID-19").to_numpy(), n_boot, seed))
        lung = g.lung_dice.dropna() if "lung_dice" in g else pd.Series(dtype=float)
        lung_iou = g.lung_iou.dropna() if "lung_iou" in g else pd.Series(dtype=float)
        pred_lung_pct = g.get("pred_pct_pred_lung", pd.Series(np.nan, index=g.index))
        rows.append({
            "group": name, "n": len(g),
            "dice": g.dice.mean(), "dice_ci_low": d_lo, "dice_ci_high": d_hi,
            "iou": g.iou.mean(), "iou_ci_low": i_lo, "iou_ci_high": i_hi,
            "dice_pooled": pooled_dice(tp, fp, fn), "iou_pooled": pooled_iou(tp, fp, fn),
            "sensitivity": sensitivity(g.pred_empty, infected(g)), "specificity": specificity(g.pred_empty, infected(g)),
            # the head kept the X-ray, the pixel rule outlined nothing (`decision.FLAGGED`): its share of the row
            "flagged": (g.outcome == FLAGGED).mean() if "outcome" in g else np.nan,
            "severity_mae": severity_mae(g.pred_pct_lung, g.true_pct_lung),
            "severity_band_agreement": band_agreement(g.pred_pct_lung, g.true_pct_lung),
            "auc": auc[0], "auc_ci_low": auc[1], "auc_ci_high": auc[2],
            # the model's own lungs (NaN for a model without the lung output)
            "lung_dice": lung.mean() if len(lung) else np.nan, **dict(zip(("lung_dice_ci_low", "lung_dice_ci_high"),
                                                                          bootstrap_ci(lung.to_numpy(), n_boot, seed))),
            "lung_iou": lung_iou.mean() if len(lung_iou) else np.nan,
            **dict(zip(("lung_iou_ci_low", "lung_iou_ci_high"), bootstrap_ci(lung_iou.to_numpy(), n_boot, seed))),
            "severity_mae_pred_lung": severity_mae(pred_lung_pct, g.true_pct_lung),
            # how well the predicted % follows the true one (Pearson), with the true lungs and with the model's own
            "severity_correlation": severity_correlation(g.pred_pct_lung, g.true_pct_lung),
            "severity_correlation_pred_lung": severity_correlation(pred_lung_pct, g.true_pct_lung),
            "severity_band_agreement_pred_lung": band_agreement(pred_lung_pct, g.true_pct_lung),
            "no_pred_lung": int(((g.get("lung_dice", pd.Series(np.nan, index=g.index)).notna()) & pred_lung_pct.isna()).sum()),
            **{c: g[c].mean() for c in figure_labels() if c in g},  # what the model's other outputs declare, mean
        })
    return pd.DataFrame(rows)


def confusion_table(per_image: pd.DataFrame) -> pd.DataFrame:
    "Images per class (rows) by the run's verdict (columns: `decision.OUTCOMES`, as per_image.csv's `outcome` says)."
    decision = per_image.outcome if "outcome" in per_image else np.where(per_image.pred_empty, EMPTY, OUTLINED)
    table = pd.crosstab(pd.Categorical(per_image["class"], [c for c in CLASSES if (per_image["class"] == c).any()]),
                        pd.Categorical(decision, list(OUTCOMES)), dropna=False)
    table.index.name, table.columns.name = "class", "decision"
    return table


def band_confusion(per_image: pd.DataFrame) -> pd.DataFrame:
    "Severity bands: true (rows) x predicted (columns) image counts (images with an empty lung mask left out)."
    graded = per_image.dropna(subset=["true_pct_lung", "pred_pct_lung"])
    t = pd.Categorical(np.array(SEVERITY_BANDS)[severity_band(graded.true_pct_lung)], SEVERITY_BANDS)
    p = pd.Categorical(np.array(SEVERITY_BANDS)[severity_band(graded.pred_pct_lung)], SEVERITY_BANDS)
    table = pd.crosstab(t, p, dropna=False)
    table.index.name, table.columns.name = "true %", "predicted %"
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


def provenance(learn, run: Run, data_root: str | Path) -> dict:
    """What an evaluation's numbers depend on: the weights (model.pth's SHA-256; an ensemble's members'), the decision, the data root, the
    image size, the precision the model ran in and covfast's version. `evaluated` reuses stored results only
    when all of them still match."""
    return {"weights_sha256": weights_digest(run.dir, run.record), **learner_decision(learn).describe(),
            "data_root": canonical_root(data_root), "img_size": run.spec.img_size,
            "precision": learner_precision(learn).mode, "covfast_version": __version__}


def check_calibration_split(run: Run, split: str, root: str | Path, allow: bool = False) -> None:
    """Refuse to report on the images the decision's threshold was chosen on (unless `allow`): the same split of
    the same data, however its root is written."""
    decision = run.decision
    if allow or decision.split is None or decision.split.lower() != split.lower():
        return
    if canonical_root(decision.data_root) == canonical_root(root):
        raise CovfastError(f"this run's threshold was calibrated on {decision.split}: scores on that split "
                           f"flatter the run (the threshold was chosen to fit those images); evaluate another split "
                           f"(e.g. --split Test), or pass --allow-calibration-split to score it anyway")


def _evaluate(learn, run: Run, split: str, data: str | Path | None, bs: int | None, progress,
              classes: tuple[str, ...] | None = None) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    root = data or run.spec.data_root
    items = split_items(root, split, classes or run.spec.classes)
    per_image = score_items(learn, items, bs=bs, progress=progress)
    summary = summarize(per_image)
    out = run_subdir(run.dir, "eval", items.split.iloc[0])
    per_image.to_csv(out / "per_image.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    write_json(out / "summary.json", {"run": run.name, "split": items.split.iloc[0],
                                      **provenance(learn, run, root), "classes": sorted(set(items.label)),
                                      "groups": summary.to_dict("records"),
                                      "confusion": confusion_table(per_image).to_dict("index"),
                                      "reference": reference_table(summary).to_dict("records")})
    return per_image, summary, out


def evaluate(
    run: str | Path,  # run directory or its name under runs_dir
    split: str = "Test",
    data: str | Path | None = None,  # dataset root (default: the run's own)
    config: Config | None = None,  # for runs_dir, bs and precision
    device: str | None = None,
    progress=None,
    allow_calibration_split: bool = False,  # score the split the threshold was calibrated on anyway
    classes: tuple[str, ...] | None = None,  # the classes to score (default: those the run trained on)
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    "Write eval/<split>/per_image.csv and summary.{csv,json}; return (per_image, summary, folder)."
    config = config or Config()
    learn, loaded = load_run(run, config.runs_dir, device, precision=config.precision)
    check_calibration_split(loaded, split, data or loaded.spec.data_root, allow_calibration_split)
    return _evaluate(learn, loaded, split, data, config.bs, progress, classes)


def evaluated(
    run: str | Path,
    split: str = "Test",
    data: str | Path | None = None,
    config: Config | None = None,
    device: str | None = None,
    progress=None,
    allow_calibration_split: bool = False,
    learner: tuple | None = None,  # (learner, Run) of `load_run`, when the caller has loaded the run already
) -> tuple[pd.DataFrame, pd.DataFrame, Path]:
    """`evaluate`'s results, read back from eval/<split>/ when they came from the same weights, decision, data
    root, image size, precision and covfast version as now; scored afresh otherwise (after `covfast
    calibrate`, say). The calibration split is refused as `evaluate` refuses it."""
    config = config or Config()
    learn, loaded = learner or load_run(run, config.runs_dir, device, precision=config.precision)
    root = data or loaded.spec.data_root
    check_calibration_split(loaded, split, root, allow_calibration_split)
    folder = loaded.dir / "eval" / split.capitalize()
    stored = _stored(folder)
    if stored is not None:
        now = {**provenance(learn, loaded, root), "classes": sorted(loaded.spec.classes)}
        if all(stored[0].get(k) == v for k, v in now.items()):
            return stored[1], stored[2], folder
    return _evaluate(learn, loaded, split, data, config.bs, progress)


def _stored(folder: Path) -> tuple[dict, pd.DataFrame, pd.DataFrame] | None:
    "An evaluation's files read back, or None where any is missing or not as `evaluate` writes it (then it runs again)."
    try:
        stored = json.loads((folder / "summary.json").read_text())
        per_image, summary = pd.read_csv(folder / "per_image.csv"), pd.read_csv(folder / "summary.csv")
    except (OSError, ValueError, UnicodeDecodeError, pd.errors.ParserError):
        return None
    needed = {"image", "class", "dice", "iou", "tp", "fp", "fn", "pred_empty", "outcome"}
    if (not isinstance(stored, dict) or not needed <= set(per_image.columns) or per_image[["dice", "tp", "fp", "fn"]].isna().any().any()
            or "group" not in summary.columns):
        return None
    return stored, per_image, summary


def evaluation_text(per_image: pd.DataFrame, summary: pd.DataFrame, folder: Path) -> str:
    "What `covfast evaluate` prints: the tables of an evaluation written to `folder` (eval/<split> of a run)."
    stored = read_json(folder / "summary.json")
    with_ci = summary.assign(
        dice=[f"{d:.4f} [{lo:.3f}, {hi:.3f}]" for d, lo, hi in zip(summary.dice, summary.dice_ci_low, summary.dice_ci_high)],
        iou=[f"{d:.4f} [{lo:.3f}, {hi:.3f}]" for d, lo, hi in zip(summary.iou, summary.iou_ci_low, summary.iou_ci_high)])
    cols = ["group", "n", "dice", "iou", "dice_pooled", "sensitivity", "specificity", *(["flagged"] if "flagged" in summary else [])]
    number = lambda v: f"{v:.4f}"  # noqa: E731
    lines = [f"{len(per_image)} {stored['split']} images; Dice and IoU are per-image means with bootstrap 95% CI\n",
             with_ci[cols].to_string(index=False, float_format=number, na_rep="–")]
    lungs = summary.get("lung_dice", pd.Series(dtype=float)).notna().any()
    severity = summary.assign(lung_dice=[f"{d:.4f} [{lo:.3f}, {hi:.3f}]" if d == d else "–" for d, lo, hi in
                                         zip(summary.get("lung_dice", np.nan), summary.get("lung_dice_ci_low", np.nan),
                                             summary.get("lung_dice_ci_high", np.nan))])
    sev_cols = ["group", "severity_mae", "severity_band_agreement"]
    if lungs:
        lines.append("\nLungs and severity (infection % of lung: MAE in percentage points, share of images in the right band),"
                     "\nwith the dataset's lung masks and with the model's own:\n")
        sev_cols = ["group", "lung_dice", *sev_cols[1:], "severity_mae_pred_lung", "severity_band_agreement_pred_lung",
                    "severity_correlation_pred_lung"]
    else:
        lines.append("\nSeverity with the dataset's lung masks (this run has no lung output: it was trained before covfast "
                     "outlined the lungs):\n")
    lines.append(severity[sev_cols].to_string(index=False, float_format=number, na_rep="–"))
    own = "pred_pct_pred_lung" if lungs and "pred_pct_pred_lung" in per_image else "pred_pct_lung"
    measured = "the model's own lungs" if own == "pred_pct_pred_lung" else "the dataset's lung masks"
    lines.append(f"\nSeverity bands, true (rows) against predicted (columns, with {measured}), images:\n")
    lines.append(band_confusion(per_image.assign(pred_pct_lung=per_image[own])).to_string())
    if summary.auc.notna().any():
        lines.append("\nImage level (is there COVID-19 infection?): ROC AUC of the head's probability, COVID-19 against\n")
        for row in summary[summary.auc.notna()].itertuples():
            against = "every other image" if row.group == "All" else f"{row.group} images"
            lines.append(f"  {against:>20}: {row.auc:.4f} [{row.auc_ci_low:.3f}, {row.auc_ci_high:.3f}]")
        lines.append(f"\nDecision per class (the head keeps an X-ray when its probability is above {stored['threshold']:.4g}; "
                     f"'{FLAGGED}': kept, but no pixel outlined):\n")
        lines.append(confusion_table(per_image).to_string())
        flagged = per_image.outcome == FLAGGED
        lines.append(f"\n{FLAGGED}: {int(flagged.sum())} of {len(per_image)} X-rays ({flagged.mean():.4f})")
    if is_synthetic(stored["data_root"]):
        lines.append("\nAgainst the reference study: not comparable (synthetic data; it proves the pipeline, not accuracy)")
    else:
        lines.append("\nAgainst the reference study (30 epochs):\n")
        lines.append(reference_table(summary).to_string(index=False, float_format=lambda v: f"{v:.4f}", na_rep="–"))
    lines.append(f"\nWrote {folder / 'per_image.csv'}, {folder / 'summary.csv'}, {folder / 'summary.json'}")
    return "\n".join(lines)
