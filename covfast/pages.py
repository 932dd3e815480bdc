"""HTML pages: self-contained (no scripts, no network), with the disclaimer, a banner for synthetic data, and
tables whose numbers read as numbers."""

from __future__ import annotations

import html
import os
from pathlib import Path

import numpy as np
import pandas as pd

from .decision import EMPTY, FLAGGED, OUTCOMES, OUTLINED
from .outputs import figure_labels

__all__ = ["DISCLAIMER", "COLUMNS", "METRICS_DOC", "plain_value", "synthetic_banner", "html_table", "metrics_link", "html_page"]

DISCLAIMER = "Research code, not a medical device: do not use these outlines to diagnose or treat anyone."

# Every column a page shows: its heading, and what it holds (docs/metrics.md has the definitions in full).
_WITH_TRUE_LUNGS, _WITH_OWN_LUNGS = "with the dataset's lung masks", "with the model's own predicted lungs"
COLUMNS: dict[str, tuple[str, str]] = {
    "group": ("images", "the images of the row: one class, or All of them"),
    "n": ("n", "how many images the row is over"),
    "dice": ("Dice", "per-image Dice 2|P∩G|/(|P|+|G|) of the infection, mean over the images (1 when both are empty)"),
    "dice_ci_low": ("Dice CI low", "lower end of the bootstrap 95% interval of that mean"),
    "dice_ci_high": ("Dice CI high", "upper end of the bootstrap 95% interval of that mean"),
    "iou": ("IoU", "per-image |P∩G|/|P∪G| of the infection, mean over the images (1 when both are empty)"),
    "iou_ci_low": ("IoU CI low", "lower end of the bootstrap 95% interval of the IoU"),
    "iou_ci_high": ("IoU CI high", "upper end of the bootstrap 95% interval of the IoU"),
    "dice_pooled": ("pooled Dice", "2ΣTP/(2ΣTP+ΣFP+ΣFN) over all the images' pixels at once"),
    "iou_pooled": ("pooled IoU", "ΣTP/(ΣTP+ΣFP+ΣFN) over all the images' pixels at once"),
    "sensitivity": ("COVID-19 outlined", "share of the images with infection that got an outline"),
    "specificity": ("left empty", "share of the empty-truth images (Non-COVID, Normal) that got no outline"),
    "flagged": ("flagged, nothing outlined", "share of the row's images the image head kept (probability above the "
                "threshold) but in which no pixel was outlined: 'COVID-19 flagged, nothing outlined'"),
    "severity_mae": ("severity error", f"mean absolute error of infection % of lung, in percentage points, {_WITH_TRUE_LUNGS}"),
    "severity_band_agreement": ("severity band right", f"share of images whose band (0, <25, 25-50, 50-75, >=75 %) is the true one, {_WITH_TRUE_LUNGS}"),
    "severity_correlation": ("severity correlation", f"Pearson's correlation of predicted and true infection % of lung, {_WITH_TRUE_LUNGS}"),
    "severity_correlation_pred_lung": ("severity correlation, own lungs", f"the same correlation {_WITH_OWN_LUNGS}"),
    "severity_mae_pred_lung": ("severity error, own lungs", f"the same error {_WITH_OWN_LUNGS}, as a new X-ray gets it"),
    "severity_band_agreement_pred_lung": ("severity band right, own lungs", f"the same agreement {_WITH_OWN_LUNGS}"),
    "lung_dice": ("lung Dice", "per-image Dice of the predicted lungs against the dataset's lung mask, mean"),
    "lung_dice_ci_low": ("lung Dice CI low", "lower end of its bootstrap 95% interval"),
    "lung_dice_ci_high": ("lung Dice CI high", "upper end of its bootstrap 95% interval"),
    "lung_iou": ("lung IoU", "per-image IoU of the predicted lungs, mean"),
    "no_pred_lung": ("no lungs found", "images whose predicted lungs are empty: left out of the own-lung severity figures"),
    "auc": ("AUC", "ROC AUC of the image head's probability: COVID-19 against the row's images (All: every other image)"),
    "auc_ci_low": ("AUC CI low", "lower end of the bootstrap 95% interval of the AUC"),
    "auc_ci_high": ("AUC CI high", "upper end of the bootstrap 95% interval of the AUC"),
    "epoch": ("epoch", "the training epoch, counted from 1"),
    "train_loss": ("train loss", "the loss on the training batches (running mean)"),
    "valid_loss": ("valid loss", "the loss on the validation images"),
    "train_dice": ("train Dice", "per-image infection Dice of the training batches, mean"),
    "valid_dice_covid": ("valid COVID-19 Dice", "per-image infection Dice of the validation COVID-19 images, mean"),
    "valid_dice_noncovid": ("valid Non-COVID left empty", "share of the validation Non-COVID images left empty (their Dice)"),
    "valid_dice_normal": ("valid Normal left empty", "share of the validation Normal images left empty (their Dice)"),
    "valid_dice_mean": ("valid mean Dice", "per-image Dice over all validation images"),
    "valid_empty_left": ("valid left empty", "share of the validation empty-truth images left empty"),
    "valid_score": ("valid score", "harmonic mean of valid COVID-19 Dice and valid left empty: the best epoch's weights are model.pth"),
    "valid_auc": ("valid AUC", "ROC AUC of the image head on the validation images"),
    "valid_dice_lung": ("valid lung Dice", "per-image Dice of the predicted lungs on the validation images, mean"),
    "lr": ("learning rate", "the learning rate at the epoch's end (one-cycle schedule)"),
    "seconds": ("seconds", "the epoch's wall time"),
    "setting": ("setting", "a setting of the run, as config.json records it"),
    "value": ("value", "its value"),
    "reference model": ("reference model", "the model of the reference study (30 epochs)"),
    "images": ("images", "the image set its figure is over"),
    "reference dice": ("reference Dice", "the study's Dice"),
    "reference iou": ("reference IoU", "the study's IoU"),
    "this run dice": ("this run's Dice", "this run's Dice on the same image set"),
    "this run iou": ("this run's IoU", "this run's IoU on the same image set"),
    "beats reference": ("beats the study", "whether this run's Dice is above the study's"),
    "class": ("class", "the X-rays' class"),
    # the three verdicts (covfast.decision.OUTCOMES), as the decision table counts them
    OUTLINED: (OUTLINED, "images the image head kept and the segmentation outlined"),
    FLAGGED: (FLAGGED, "images the image head kept (probability above the threshold) but in which the segmentation "
                       "outlined no pixel"),
    EMPTY: (EMPTY, "images left empty: the image head's probability at or below the threshold (a run without the "
                   "head: nothing outlined)"),
    "metric": ("figure", "the figure compared (see the definitions of the report's tables)"),
    "mean_dice_difference": ("mean Dice difference", "mean over the same images of b's Dice minus a's"),
    "ci_low": ("CI low", "lower end of the bootstrap 95% interval of that mean"),
    "ci_high": ("CI high", "upper end of the bootstrap 95% interval of that mean"),
    "b_better": ("b better", "images where b's Dice is higher"),
    "a_better": ("a better", "images where a's Dice is higher"),
    "ties": ("ties", "images where both score the same"),
    "true %": ("true band", "the band of the truth's infection % of lung (rows); columns: the predicted band"),
    "a": ("a", "the baseline run"),
    "b": ("b", "the run compared with it"),
}
# columns that hold counts (shown as integers) and learning rates (scientific notation)
_COUNT_COLUMNS = {"n", "epoch", "tp", "fp", "fn", "a_better", "b_better", "ties", "no_pred_lung", *OUTCOMES}
_LR_COLUMNS = {"lr", "lr_used", "learning rate"}
METRICS_DOC = "docs/metrics.md"


def _cell(value, column) -> str:
    "One table cell: '–' for a missing value, counts as integers, learning rates as 1.0e-03, other numbers with 3 decimals."
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "–"
    if isinstance(value, (bool, np.bool_)):
        return "yes" if value else "no"
    if isinstance(value, (int, np.integer)) or (str(column) in _COUNT_COLUMNS and float(value).is_integer()):
        return str(int(value))
    if isinstance(value, (float, np.floating)):
        return f"{value:.1e}" if str(column) in _LR_COLUMNS else f"{value:.3f}"
    return str(value)


def plain_value(value) -> str:
    "A setting as a person writes it: yes/no, '—' for none, a list as 'a, b, c'."
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(plain_value, value)) if value else "—"
    if isinstance(value, float):
        return f"{value:.4g}"  # a threshold of 0.023507034406065937 reads as 0.02351
    return str(value)


def html_table(df: pd.DataFrame, index: bool = False, other: str | None = None) -> str:
    """A table for the pages: plain headings (each with its definition on hover, and in a legend under the table),
    numbers formatted by `_cell`. `other`: the definition of columns the glossary does not know (run names, bands)."""
    shown = df.reset_index() if index else df
    names = [str(c[-1] if isinstance(c, tuple) else c) for c in shown.columns]
    heads, legend = [], {}
    for name in names:
        figure = figure_labels().get(name)  # a figure a model output declares (`outputs.OutputKind.figures`)
        heading, definition = COLUMNS.get(name, (figure, f"{figure}, mean over the images") if figure else (name, other))
        if definition is None:
            raise KeyError(f"the pages have no definition of the column {name!r}")
        heads.append(f"<th title='{html.escape(definition, quote=True)}'>{html.escape(heading)}</th>")
        legend.setdefault(heading, definition)
    rows = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(v, name))}</td>" for v, name in zip(row, names)) + "</tr>"
                   for row in shown.itertuples(index=False))
    notes = "".join(f"<dt>{html.escape(h)}</dt><dd>{html.escape(d)}</dd>" for h, d in legend.items())
    return (f"<table class='t'><thead><tr>{''.join(heads)}</tr></thead><tbody>{rows}</tbody></table>"
            f"<dl class='legend'>{notes}</dl>")


def synthetic_banner(synthetic: bool) -> str:
    "The line on top of a page about synthetic data (or the empty string)."
    return ("<p class='banner'>SYNTHETIC DATA: these images were made by <code>covfast synth</code>. The figures "
            "show that the pipeline runs; they say nothing about accuracy on X-rays, and are not comparable with "
            "the reference study.</p>" if synthetic else "")


def metrics_link(page_dir: str | Path) -> str:
    "Where a page's reader finds every figure defined: docs/metrics.md, linked from the page when covfast runs from its repository."
    doc = Path(__file__).resolve().parents[1] / METRICS_DOC
    if doc.is_file():
        rel = Path(os.path.relpath(doc, Path(page_dir).resolve())).as_posix()
        return f"<a href='{html.escape(rel, quote=True)}'>{METRICS_DOC}</a>"
    return f"{METRICS_DOC} in covfast's repository"


def html_page(title: str, sections: list[tuple[str, str]], banner: str = "", definitions: str = "") -> str:
    """A self-contained page (no scripts, no network): `banner`, the disclaimer, where the figures are defined
    (`metrics_link`), then sections of (heading, HTML body)."""
    style = ("body{font-family:sans-serif;max-width:1100px;margin:2em auto;color:#222}"
             "table.t{border-collapse:collapse;font-size:13px}table.t td,table.t th{padding:3px 8px;border-bottom:1px solid #ddd}"
             "img{max-width:100%}h2{border-bottom:2px solid #c00;padding-bottom:3px}"
             ".banner{background:#fff3cd;border:2px solid #e0a800;padding:.6em 1em;font-weight:bold}"
             ".disclaimer{color:#a00;font-size:14px}"
             "dl.legend{font-size:12px;color:#555;margin:.4em 0 1.2em}dl.legend dt{display:inline;font-weight:bold}"
             "dl.legend dt::after{content:': '}dl.legend dd{display:inline;margin:0 1em 0 0}dl.legend dd::after{content:'.';}"
             "p.note{font-size:13px;color:#444}")
    body = "".join(f"<h2>{html.escape(h)}</h2>\n{b}\n" for h, b in sections)
    return (f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title><style>{style}</style>"
            f"</head><body><h1>{html.escape(title)}</h1>\n{banner}<p class='disclaimer'>{html.escape(DISCLAIMER)}</p>\n"
            + (f"<p class='note'>Every figure on this page is defined in {definitions}; a column heading shows its "
               f"definition when pointed at, and each table lists them under it.</p>\n" if definitions else "")
            + f"{body}</body></html>\n")
