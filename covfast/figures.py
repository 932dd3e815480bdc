"""The figures of reports, comparisons and notebooks (matplotlib PNGs)."""

from __future__ import annotations

import textwrap
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from .metrics import roc_auc, roc_curve
from .overlays import LUNG_RGB, captioned, overlay, readable  # noqa: F401  (covfast.figures' names too)

__all__ = ["LUNG_RGB", "overlay", "readable", "captioned", "plot_history", "plot_cases", "case_figure", "roc_figure", "severity_figure"]


def _save(fig, path: Path, dpi: int = 100) -> Path:
    fig.savefig(path, dpi=dpi)
    plt.close(fig)
    return path


def plot_history(history: pd.DataFrame, path: Path) -> Path:
    "Loss and Dice curves per epoch (the reference's Tables II and III as pictures)."
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(11, 4))
    ax1.plot(history.epoch, history.train_loss, "o-", label="train loss")
    ax1.plot(history.epoch, history.valid_loss, "o-", label="valid loss")
    ax1.set_xlabel("epoch"), ax1.set_title("Loss"), ax1.legend(fontsize=8)
    for col, label in [("train_dice", "train Dice"), ("valid_dice_covid", "valid COVID-19 Dice"),
                       ("valid_dice_noncovid", "valid Non-COVID left empty"), ("valid_dice_normal", "valid Normal left empty"),
                       ("valid_dice_mean", "valid mean Dice"), ("valid_score", "valid score (picks model.pth)"),
                       ("valid_auc", "valid image-level AUC"), ("valid_dice_lung", "valid lung Dice")]:
        if col in history and history[col].notna().any():
            ax2.plot(history.epoch, history[col], "o-", label=label)
    ax2.set_ylim(0, 1), ax2.set_xlabel("epoch"), ax2.set_title("Validation figures per epoch")
    ax2.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.02, 1))  # beside the curves, never over them
    for ax in (ax1, ax2):
        ax.xaxis.get_major_locator().set_params(integer=True)  # epochs 1, 2, 3 ... as history.csv counts them
    fig.tight_layout()
    return _save(fig, path)


# characters of a panel title's line at font size 8 in a 3-inch panel (about 4.4 points a character): longer lines wrap
_TITLE_CHARS = 40


def _fitted(title: str, chars: int = _TITLE_CHARS) -> str:
    "A panel title with each of its lines wrapped to `chars` characters, so it stays above its own panel."
    return "\n".join(textwrap.fill(line, chars, break_long_words=True, break_on_hyphens=False) if line else line
                     for line in title.split("\n"))


def plot_cases(cases: list[dict], title: str = "", xray: bool = True, figsize: tuple[float, float] | None = None):
    """One row per image: the X-ray (unless `xray` is False) | its truth | each prediction | its attention map (where
    a case has one); infection in red, lungs outlined in cyan. Returns the figure.

    A case is a dict: `gray` (H, W) uint8, `truth` (H, W) bool or None, `title` (the X-ray's), `preds` a list
    of (title, (H, W) bool infection mask, (H, W) bool lungs or None), and optionally `truth_lung` (H, W) bool,
    `truth_title` and `attention` (h, w) in [0, 1]."""
    with_map = any("attention" in c for c in cases)
    cols = int(xray) + 1 + max(len(c["preds"]) for c in cases) + with_map
    fig, axes = plt.subplots(len(cases), cols, figsize=figsize or (3 * cols, 3 * len(cases)), squeeze=False)
    for ax_row, case in zip(axes, cases):
        gray = case["gray"]
        truth = case["truth"] if case["truth"] is not None else np.zeros(gray.shape, bool)
        panels = [(case["title"], gray, {"cmap": "gray"})] if xray else []
        panels.append((case.get("truth_title", "ground truth"), overlay(gray, truth, alpha=0.6, lung=case.get("truth_lung")), {}))
        panels += [(name, overlay(gray, pred, alpha=0.6, lung=lung), {}) for name, pred, lung in case["preds"]]
        if "attention" in case:
            panels.append(("attention (finest gate)", case["attention"], {"cmap": "magma", "vmin": 0, "vmax": 1}))
        width = max(12, int(_TITLE_CHARS * (fig.get_size_inches()[0] / cols) / 3))
        for ax, (name, image, kwargs) in zip(ax_row, panels):
            ax.imshow(image, **kwargs)
            ax.set_title(_fitted(name, width), fontsize=8)
        for ax in ax_row:
            ax.axis("off")
    fig.tight_layout()
    if title:
        _title_above(fig, fig.suptitle(title), axes[0])
    return fig


def _title_above(fig, sup, top_row) -> None:
    "Lower the panels until the first row's titles end below the figure's title (tight_layout leaves them overlapping)."
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    height = fig.bbox.height
    sup_bottom = sup.get_window_extent(renderer).y0 / height
    titles_top = max(ax.title.get_window_extent(renderer).y1 for ax in top_row) / height
    if titles_top > sup_bottom - 0.005:
        fig.subplots_adjust(top=fig.subplotpars.top - (titles_top - sup_bottom) - 0.01)


def case_figure(cases: list[dict], path: Path, title: str) -> Path:
    "`plot_cases` saved to `path` (a PNG at 90 dpi: 3 inches, 270 pixels, per panel)."
    return _save(plot_cases(cases, title), path, dpi=90)


def roc_figure(per_image: pd.DataFrame, threshold: float, path: Path) -> Path:
    """ROC curves of the image head's probability, COVID-19 against each other class, with the run's operating
    point: the share of each class the head kept, read from per_image's `outcome` (anything but `EMPTY`)."""
    from .decision import EMPTY

    fig, ax = plt.subplots(figsize=(5, 5))
    kept = (per_image.outcome != EMPTY) if "outcome" in per_image else per_image.p_covid > threshold
    covid = per_image[per_image["class"] == "COVID-19"]
    for label, others in per_image[per_image["class"] != "COVID-19"].groupby("class"):
        scores = np.concatenate([covid.p_covid, others.p_covid])
        truth = np.r_[np.ones(len(covid), bool), np.zeros(len(others), bool)]
        fpr, tpr = roc_curve(scores, truth)
        ax.plot(fpr, tpr, label=f"COVID-19 vs {label} (AUC {roc_auc(scores, truth):.3f})")
        ax.plot([kept[others.index].mean()], [kept[covid.index].mean()], "ko")
    ax.plot([0, 1], [0, 1], "k:", lw=1)
    ax.set_xlabel("false positive rate (share of the class kept by the head)")
    ax.set_ylabel("sensitivity (COVID-19 kept by the head)")
    ax.set_title(f"Image level; dots: the run's threshold {threshold:.4g}", fontsize=10)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    return _save(fig, path)


def severity_figure(per_image: pd.DataFrame, path: Path, predicted: str = "pred_pct_lung",
                    lungs: str = "the dataset's lung masks") -> Path:
    """Predicted (column `predicted`, measured with `lungs`) vs true infection % of lung, one point per image; the
    images at (0, 0) (empty truth, empty prediction), which would hide under one another, are counted in the
    legend instead."""
    fig, ax = plt.subplots(figsize=(5, 5))
    for label, g in per_image.groupby("class"):
        origin = (g.true_pct_lung == 0) & (g[predicted] == 0)
        ax.scatter(g.true_pct_lung[~origin], g[predicted][~origin], s=10, alpha=0.6,
                   label=f"{label} ({int(origin.sum())} of {len(g)} at 0, 0)" if origin.any() else label)
    ax.plot([0, 100], [0, 100], "k--", lw=1)
    ax.set_xlabel("true infection % of lung"), ax.set_ylabel(f"predicted infection % of lung\n(with {lungs})")
    ax.set_xlim(-1, 100), ax.set_ylim(-1, 100), ax.legend(fontsize=8)
    fig.tight_layout()
    return _save(fig, path)
