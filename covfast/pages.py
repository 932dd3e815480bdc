"""HTML pages: self-contained (no scripts, no network), with the disclaimer, a banner for synthetic data, and
tables whose numbers read as numbers."""

from __future__ import annotations

import html

import numpy as np
import pandas as pd

__all__ = ["DISCLAIMER", "synthetic_banner", "html_table", "html_page"]

DISCLAIMER = "Research code, not a medical device: do not use these outlines to diagnose or treat anyone."

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
