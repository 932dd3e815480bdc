"""Interpretation report: figures (matplotlib PNGs) and one self-contained HTML page per run."""

from __future__ import annotations

import html
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import torch

from .config import Config
from .data import read_mask, read_xray
from .evaluate import confusion_table, evaluated, reference_table
from .inference import iter_logits, load_run, upsample_mask
from .metrics import SEVERITY_BANDS, learner_threshold, roc_auc, severity_band
from .predict import overlay
from .synth import is_synthetic
from .runs import read_history

__all__ = ["DISCLAIMER", "synthetic_banner", "top_losses", "roc_figure", "html_table", "plot_history", "infer_cases", "triptych_figure", "severity_figure", "band_confusion", "html_page", "report"]


def plot_history(history: pd.DataFrame, path: Path) -> Path:
    "Loss and Dice curves per epoch (the reference's Tables II and III as pictures)."
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(history.epoch, history.train_loss, "o-", label="train loss")
    ax1.plot(history.epoch, history.valid_loss, "o-", label="valid loss")
    ax1.set_xlabel("epoch"), ax1.set_title("Loss"), ax1.legend()
    for col, label in [("train_dice", "train Dice"), ("valid_dice_covid", "valid COVID-19 Dice"),
                       ("valid_dice_noncovid", "valid Non-COVID Dice"), ("valid_dice_normal", "valid Normal Dice"),
                       ("valid_dice_mean", "valid mean Dice"), ("valid_auc", "valid image-level AUC")]:
        if col in history and history[col].notna().any():
            ax2.plot(history.epoch, history[col], "o-", label=label)
    ax2.set_ylim(0, 1), ax2.set_xlabel("epoch"), ax2.set_title("Per-image Dice and image-level AUC"), ax2.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def infer_cases(learn, rows: pd.DataFrame) -> list[dict]:
    "Gray image, truth, prediction (mask resolution) and attention maps, for a few per-image rows."
    items = rows.assign(label=rows["class"]).reset_index(drop=True)
    out = []
    threshold = learner_threshold(learn)
    for i, logits, _ in iter_logits(learn, items[["image"]], bs=8):
        row = items.iloc[i]
        gray = read_xray(row.image)
        truth_path = Path(row.image).parent.parent / "infection masks" / Path(row.image).name
        truth = read_mask(truth_path).astype(bool) if truth_path.is_file() else None
        out.append({"row": row, "gray": gray, "truth": truth, "pred": upsample_mask(logits, gray.shape, threshold)})
    if hasattr(learn.model, "forward_with_attention"):
        dl = learn.dls.test_dl(items[["image"]], bs=8)
        maps, k = [], 0
        with torch.no_grad():
            for (xb,) in dl:
                _, gates = learn.model.forward_with_attention(xb)
                maps.extend(gates[-1][:, 0].float().cpu().numpy())  # the finest gate: most detail
        for entry, m in zip(out, maps):
            entry["attention"] = m
    return out


def triptych_figure(entries: list[dict], path: Path, title: str) -> Path:
    "One row per image: original | ground truth | prediction in red (| attention map)."
    cols = 4 if entries and "attention" in entries[0] else 3
    fig, axes = plt.subplots(len(entries), cols, figsize=(3 * cols, 3 * len(entries)), squeeze=False)
    for ax_row, e in zip(axes, entries):
        ax_row[0].imshow(e["gray"], cmap="gray")
        row = e["row"]
        extra = "".join(f"  {label} {row[key]:.3f}" for key, label in (("loss", "loss"), ("p_covid", "p(COVID-19)"))
                        if key in row and pd.notna(row[key]))
        ax_row[0].set_title(f"{row['file']}\n{row['label']}  Dice {row['dice']:.3f}{extra}", fontsize=10)
        truth = e["truth"] if e["truth"] is not None else np.zeros_like(e["pred"])
        ax_row[1].imshow(overlay(e["gray"], truth, alpha=0.6)), ax_row[1].set_title("ground truth", fontsize=10)
        ax_row[2].imshow(overlay(e["gray"], e["pred"], alpha=0.6)), ax_row[2].set_title("prediction", fontsize=10)
        if cols == 4:
            ax_row[3].imshow(e["attention"], cmap="magma", vmin=0, vmax=1)
            ax_row[3].set_title("attention (finest gate)", fontsize=10)
        for ax in ax_row:
            ax.axis("off")
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def roc_figure(per_image: pd.DataFrame, threshold: float, path: Path) -> Path:
    "ROC curves of the image head's probability, COVID-19 against each other class, with the run's operating point."
    fig, ax = plt.subplots(figsize=(5, 5))
    covid = per_image[per_image["class"] == "COVID-19"]
    for label, others in per_image[per_image["class"] != "COVID-19"].groupby("class"):
        scores = np.concatenate([covid.p_covid, others.p_covid])
        truth = np.r_[np.ones(len(covid), bool), np.zeros(len(others), bool)]
        cuts = np.r_[np.inf, np.unique(scores)[::-1]]
        tpr = [(scores[truth] >= c).mean() for c in cuts]
        fpr = [(scores[~truth] >= c).mean() for c in cuts]
        ax.plot(fpr, tpr, label=f"COVID-19 vs {label} (AUC {roc_auc(scores, truth):.3f})")
        ax.plot([(others.p_covid > threshold).mean()], [(covid.p_covid > threshold).mean()], "ko")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate (share of the class outlined)"), ax.set_ylabel("sensitivity (COVID-19 outlined)")
    ax.set_title(f"Image level; dots: the run's threshold {threshold:.3g}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def top_losses(per_image: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    "The `n` images of highest per-image loss, one of them COVID-19 when the split has any (empty-truth images can fill them all)."
    top = per_image.sort_values("loss", ascending=False)
    picked = top.head(n)
    covid = top[top["class"] == "COVID-19"]
    if len(covid) and not (picked["class"] == "COVID-19").any():
        picked = pd.concat([picked.head(n - 1), covid.head(1)])
    return picked


def band_confusion(per_image: pd.DataFrame) -> pd.DataFrame:
    "Severity bands: true (rows) x predicted (columns) image counts (images with an empty lung mask left out)."
    graded = per_image.dropna(subset=["true_pct_lung", "pred_pct_lung"])
    t = pd.Categorical(np.array(SEVERITY_BANDS)[severity_band(graded.true_pct_lung)], SEVERITY_BANDS)
    p = pd.Categorical(np.array(SEVERITY_BANDS)[severity_band(graded.pred_pct_lung)], SEVERITY_BANDS)
    table = pd.crosstab(t, p, dropna=False)
    table.index.name, table.columns.name = "true %", "predicted %"
    return table


def severity_figure(per_image: pd.DataFrame, path: Path) -> Path:
    """Predicted vs true infection % of lung, one point per image; the images at (0, 0) (empty truth, empty
    prediction), which would hide under one another, are counted in the legend instead."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, g in per_image.groupby("class"):
        origin = (g.true_pct_lung == 0) & (g.pred_pct_lung == 0)
        ax.scatter(g.true_pct_lung[~origin], g.pred_pct_lung[~origin], s=10, alpha=0.6,
                   label=f"{label} ({int(origin.sum())} of {len(g)} at 0, 0)" if origin.any() else label)
    ax.plot([0, 100], [0, 100], "k--", lw=1)
    ax.set_xlabel("true infection % of lung"), ax.set_ylabel("predicted infection % of lung")
    ax.set_xlim(-1, 100), ax.set_ylim(-1, 100), ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


# columns that hold counts (shown as integers) and learning rates (scientific notation)
_COUNT_COLUMNS = {"n", "epoch", "tp", "fp", "fn", "a_better", "b_better", "ties"}
_LR_COLUMNS = {"lr", "lr_used", "learning rate"}


def _cell(value, column) -> str:
    "One table cell: '–' for a missing value, counts as integers, learning rates as 1.0e-03, other numbers with 3 decimals."
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return str(bool(value))
    if isinstance(value, (int, np.integer)) or (str(column) in _COUNT_COLUMNS and float(value).is_integer()):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.1e}" if str(column) in _LR_COLUMNS else f"{value:.3f}"
    return str(value)


def html_table(df: pd.DataFrame, index: bool = False) -> str:
    "A table for the pages, numbers formatted by `_cell`."
    shown = df.copy().astype(object)
    for col in shown.columns:
        name = col[-1] if isinstance(col, tuple) else col
        shown[col] = [_cell(v, name) for v in df[col]]
    return shown.to_html(index=index, border=0, classes="t")


DISCLAIMER = "Research code, not a medical device: do not use these outlines to diagnose or treat anyone."


def synthetic_banner(synthetic: bool) -> str:
    "The line on top of a page about synthetic data (or the empty string)."
    return ("<p class='banner'>SYNTHETIC DATA: these images were made by <code>covfast synth</code>. The figures "
            "show that the pipeline runs; they say nothing about accuracy on X-rays, and are not comparable with "
            "the reference study.</p>" if synthetic else "")


def html_page(title: str, sections: list[tuple[str, str]], banner: str = "") -> str:
    "A self-contained page (no scripts, no network): `banner`, the disclaimer, then sections of (heading, HTML body)."
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd}"
             "img{max-width:100%}h2{border-bottom:2px solid #c00;padding-bottom:3px}"
             ".banner{background:#fff3cd;border:2px solid #e0a800;padding:.6em 1em;font-weight:bold}"
             ".disclaimer{color:#a00;font-size:14px}")
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{b}\n" for h, b in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>\n{banner}<p class='disclaimer'>{html.escape(DISCLAIMER)}</p>\n"
            f"{body}</body></html>\n")


def report(run: str | Path, split: str = "Test", config: Config | None = None, device: str | None = None,
           progress=None, data: str | Path | None = None) -> Path:
    "Write <run>/report/index.html with its PNGs; evaluates the split (of `data`, default the run's own) first unless its results are current."
    config = config or Config()
    learn, cfg, run_dir = load_run(run, config.runs_dir, device, precision=config.precision)
    per_image, summary, folder = evaluated(run_dir, split, data, config=config, device=device, progress=progress)
    split = folder.name
    out = run_dir / "report"
    out.mkdir(exist_ok=True)
    sections = []
    settings = {k: cfg.get(k) for k in ("arch", "img_size", "bs", "epochs", "lr", "lr_used", "classes", "seed",
                                        "pretrained", "pretrained_reason", "cls_weight", "threshold", "gate_topk",
                                        "gate_margin", "empty_weight", "dice_weight", "device", "precision", "data_root",
                                        "status")}
    sections.append(("Settings", html_table(pd.DataFrame({"setting": list(settings), "value": [str(v) for v in settings.values()]}))))
    history = read_history(run_dir)
    if len(history):
        plot_history(history, out / "history.png")
        sections.append(("Training curves", "<img src='history.png' alt='training curves'>" + html_table(history)))
    if (run_dir / "lr_find.png").is_file():
        (out / "lr_find.png").write_bytes((run_dir / "lr_find.png").read_bytes())
        sections.append(("Learning-rate finder", "<img src='lr_find.png' alt='lr_find plot'>"))
    cols = ["group", "n", "dice", "dice_ci_low", "dice_ci_high", "iou", "dice_pooled", "iou_pooled",
            "sensitivity", "specificity", "severity_mae", "severity_band_agreement"]
    synthetic = is_synthetic(cfg["data_root"])
    reference = ("<h3>Against the reference study</h3><p>Not comparable: synthetic data.</p>" if synthetic else
                 "<h3>Against the reference study</h3>" + html_table(reference_table(summary)))
    sections.append((f"Evaluation on {split}", html_table(summary[cols]) + reference))
    if "p_covid" in per_image and per_image.p_covid.notna().all():
        threshold = learner_threshold(learn)
        roc_figure(per_image, threshold, out / "roc.png")
        aucs = summary[summary.auc.notna()][["group", "n", "auc", "auc_ci_low", "auc_ci_high"]]
        sections.append(("Image level: which X-rays have COVID-19 infection",
                         f"<p>An image gets an outline when the image head's probability is above {threshold:.4g}"
                         f"{' (calibrated on ' + html.escape(str(cfg['calibration']['split'])) + ')' if cfg.get('calibration') else ' (not calibrated)'}; "
                         "below it, an empty mask. AUC: telling COVID-19 from the group's images.</p>"
                         "<img src='roc.png' alt='ROC curves'>" + html_table(aucs)
                         + "<h3>Decision per class</h3>" + html_table(confusion_table(per_image), index=True)))
    covid = per_image[per_image["class"] == "COVID-19"].sort_values("dice")
    picks = []
    if len(covid):
        picks.append(("COVID-19: best, median, worst", pd.concat([covid.tail(1), covid.iloc[[len(covid) // 2]], covid.head(1)])))
    fps = per_image[(per_image.tp + per_image.fn == 0) & (per_image.fp > 0)].sort_values("fp", ascending=False)
    if len(fps):
        picks.append(("Empty-truth images with the largest false positives", fps.head(3)))
    if "p_covid" in per_image and per_image.p_covid.notna().all():
        # the image-level decision's mistakes: the most confident false outlines, and the COVID-19 images missed
        wrong = per_image[(per_image["class"] != "COVID-19") & ~per_image.pred_empty].sort_values("p_covid", ascending=False)
        if len(wrong):
            picks.append(("Most confident false positives (empty-truth images outlined)", wrong.head(3)))
        missed = per_image[(per_image["class"] == "COVID-19") & per_image.pred_empty].sort_values("p_covid")
        if len(missed):
            picks.append(("Missed COVID-19 images (empty mask)", missed.head(3)))
    picks.append(("Top losses (per-image loss)", top_losses(per_image)))
    for i, (title, rows) in enumerate(picks):
        name = f"cases_{i}.png"
        triptych_figure(infer_cases(learn, rows), out / name, title)
        sections.append((title, f"<img src='{name}' alt='{html.escape(title)}'>"))
    severity_figure(per_image, out / "severity.png")
    sections.append(("Severity: infection % of lung", "<img src='severity.png' alt='severity scatter'>"
                     + html_table(band_confusion(per_image), index=True)))
    (out / "index.html").write_text(html_page(f"covfast report: {run_dir.name} ({split})", sections,
                                              synthetic_banner(synthetic)))
    return out / "index.html"
