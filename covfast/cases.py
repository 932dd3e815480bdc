"""Which images a report or a comparison shows, and each one through a model: X-ray, truth, prediction, attention."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from .data import read_mask, read_xray
from .decision import learner_decision, predict_one
from .inference import iter_outputs

__all__ = ["infer_cases", "report_case", "top_losses", "report_picks", "compare_picks"]


def infer_cases(learn, rows: pd.DataFrame) -> list[dict]:
    """For per-image rows (`image`, `file`, `class`, ...): the X-ray, its truth and true lungs (beside it in the
    dataset's layout, when there), the learner's decision and predicted lungs (a model with the lung output) at
    the X-ray's resolution and, for an Attention U-Net, its finest gate's map; all through the inference layer,
    in the learner's precision."""
    items = rows.assign(label=rows["class"]).reset_index(drop=True)
    decision = learner_decision(learn)
    out = []
    for i, output, _ in iter_outputs(learn, items[["image"]], bs=8, attention=True):
        row = items.iloc[i]
        gray = read_xray(row.image)
        beside = lambda folder: Path(row.image).parent.parent / folder / Path(row.image).name  # noqa: E731
        truth, lung = beside("infection masks"), beside("lung masks")
        said = predict_one(output, decision, gray.shape)
        entry = {"row": row, "gray": gray, "truth": read_mask(truth).astype(bool) if truth.is_file() else None,
                 "truth_lung": read_mask(lung).astype(bool) if lung.is_file() else None,
                 "pred": said.mask, "outcome": said.verdict, "lung": said.lung}
        if output.has("attention"):
            entry["attention"] = output.attention[0, 0].cpu().numpy()
        out.append(entry)
    return out


def report_case(entry: dict) -> dict:
    "An `infer_cases` entry as one row of `figures.case_figure`: titled with its class, Dice, loss and p(COVID-19)."
    row = entry["row"]
    lines = [str(row["file"]), f"{row['label']} · Dice {row['dice']:.3f}"]
    if "p_covid" in row and pd.notna(row["p_covid"]):
        lines.append(f"p(COVID-19) {row['p_covid']:.3f}: {entry['outcome']}")
    if "loss" in row and pd.notna(row["loss"]):
        lines.append(f"loss {row['loss']:.3f}")
    case = {"title": "\n".join(lines), "gray": entry["gray"],
            "truth": entry["truth"], "truth_lung": entry.get("truth_lung"),
            "preds": [("prediction", entry["pred"], entry.get("lung"))]}
    if "attention" in entry:
        case["attention"] = entry["attention"]
    return case


def top_losses(per_image: pd.DataFrame, n: int = 4) -> pd.DataFrame:
    "The `n` images of highest per-image loss, one of them COVID-19 when the split has any (empty-truth images can fill them all)."
    top = per_image.sort_values("loss", ascending=False)
    picked = top.head(n)
    covid = top[top["class"] == "COVID-19"]
    if len(covid) and not (picked["class"] == "COVID-19").any():
        picked = pd.concat([picked.head(n - 1), covid.head(1)])
    return picked


def report_picks(per_image: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    "The report's case figures: (title, rows) for the best/median/worst COVID-19 images, the mistakes and the top losses."
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
    return picks


def compare_picks(dice: pd.DataFrame, names: list[str]) -> pd.DataFrame:
    """The images a comparison shows through every model, from a table of `image`, `file`, `class` and one Dice
    column per run: the best, median and worst COVID-19 image by mean Dice, the most outlined empty-truth image,
    and the two the runs disagree on most."""
    merged = dice.assign(mean=dice[names].mean(axis=1), spread=dice[names].max(axis=1) - dice[names].min(axis=1))
    covid = merged[merged["class"] == "COVID-19"].sort_values("mean")
    empty = merged[merged["class"] != "COVID-19"].sort_values("mean")  # empty truth: the worst is the most outlined
    picks = pd.concat([covid.tail(1), covid.iloc[[len(covid) // 2]] if len(covid) else covid.head(0), covid.head(1),
                       empty.head(1), merged.sort_values("spread", ascending=False).head(2)]).drop_duplicates("image")
    return picks.assign(dice=picks["mean"])
