"""Compare runs on one split: metrics side by side, paired per-image Dice differences, one figure grid."""

from __future__ import annotations

import html
import os
from datetime import datetime
from pathlib import Path

import pandas as pd

from .cases import compare_picks, infer_cases
from .config import Config
from .errors import CovfastError
from .evaluate import evaluated
from .figures import case_figure
from .inference import load_run
from .metrics import bootstrap_ci
from .pages import COLUMNS, html_page, html_table, metrics_link, synthetic_banner
from .runs import read_run, resolve_run
from .synth import is_synthetic

__all__ = ["paired_differences", "compare"]


def paired_differences(base: pd.DataFrame, other: pd.DataFrame, n_boot: int = 1000) -> pd.DataFrame:
    "Per class and overall: mean of other - base Dice on the same images, bootstrap 95% CI, and wins."
    # an image is its class folder and file name: the stored paths differ when runs were scored from other folders
    joined = base.merge(other, on=["class", "file"], suffixes=("_a", "_b"))
    if joined.empty:
        raise CovfastError("the runs were evaluated on different images; evaluate them on the same --data and --split")
    joined["diff"] = joined.dice_b - joined.dice_a
    rows = []
    for name, g in [*joined.groupby("class"), ("All", joined)]:
        lo, hi = bootstrap_ci(g["diff"].to_numpy(), n_boot)
        rows.append({"group": name, "n": len(g), "mean_dice_difference": g["diff"].mean(), "ci_low": lo, "ci_high": hi,
                     "b_better": int((g["diff"] > 1e-9).sum()), "a_better": int((g["diff"] < -1e-9).sum()),
                     "ties": int((g["diff"].abs() <= 1e-9).sum())})
    return pd.DataFrame(rows)


def compare(
    runs: list[str | Path],  # two or more run directories or names
    split: str = "Test",
    out: str | Path | None = None,  # output folder (default: runs_dir/compare-<time>)
    config: Config | None = None,
    device: str | None = None,
    progress=None,
    allow_calibration_split: bool = False,  # compare on a split a run's threshold was calibrated on anyway
) -> Path:
    "Write index.html, metrics.csv, paired.csv and grid.png comparing `runs` on `split`; returns the page."
    config = config or Config()
    if len(runs) < 2:
        raise CovfastError("compare needs at least two runs")
    split = split.capitalize()
    dirs = [resolve_run(r, config.runs_dir) for r in runs]
    names = [d.name for d in dirs]
    if len(set(names)) < len(names):
        raise CovfastError(f"the same run is named twice: {', '.join(names)}")
    classes = [tuple(sorted(read_run(d)[0].classes)) for d in dirs]
    if len(set(classes)) > 1:
        said = "; ".join(f"{n}: {', '.join(c)}" for n, c in zip(names, classes))
        raise CovfastError(f"the runs were trained on different classes ({said}): their figures do not compare; "
                           f"compare runs of the same classes")
    learners = [load_run(d, config.runs_dir, device, precision=config.precision) for d in dirs]  # each run once
    results = [evaluated(d, split, config=config, device=device, progress=progress,
                         allow_calibration_split=allow_calibration_split, learner=lr)[:2] for d, lr in zip(dirs, learners)]
    out = Path(out) if out else Path(config.runs_dir) / f"compare-{datetime.now():%Y%m%d-%H%M%S}"
    if (out / "index.html").exists():
        raise CovfastError(f"{out} already holds a comparison; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    cols = ["dice", "iou", "dice_pooled", "sensitivity", "specificity", "flagged", "auc", "lung_dice", "severity_mae",
            "severity_mae_pred_lung"]
    results = [(per, s.reindex(columns=list(dict.fromkeys([*s.columns, *cols])))) for per, s in results]  # runs from before the lung output
    metrics = pd.concat([s.set_index("group")[["n", *cols]].add_prefix(f"{n}: ") for n, (_, s) in zip(names, results)], axis=1)
    metrics.to_csv(out / "metrics.csv")
    # on the page: one row per class and metric, one column per run, so the runs read side by side
    side_by_side = pd.concat({n: s.set_index("group")[["n", *cols]].stack() for n, (_, s) in zip(names, results)}, axis=1)
    side_by_side = side_by_side.rename_axis(["group", "metric"]).reset_index()
    side_by_side["metric"] = [COLUMNS.get(m, (m,))[0] for m in side_by_side.metric]
    counts = side_by_side.metric == "n"  # image counts print as integers, whatever column they share
    side_by_side[names] = side_by_side[names].astype(object)
    side_by_side.loc[counts, names] = side_by_side.loc[counts, names].map(int)
    paired = pd.concat([paired_differences(results[0][0], per).assign(a=names[0], b=n)
                        for n, (per, _) in zip(names[1:], results[1:])], ignore_index=True)
    paired.to_csv(out / "paired.csv", index=False)
    # the same images through every model: COVID best/median/worst by mean Dice, and the biggest disagreement
    dice = results[0][0][["image", "file", "class"]].copy()
    for n, (per, _) in zip(names, results):
        dice[n] = dice.set_index(["class", "file"]).index.map(per.set_index(["class", "file"]).dice)
    rows = compare_picks(dice, names)
    through = [infer_cases(learn, rows) for learn, _ in learners]
    cases = [{"title": f"{first['row']['file']}\n{first['row']['label']}", "gray": first["gray"], "truth": first["truth"],
              "truth_lung": first["truth_lung"],
              "preds": [(f"{n}\nDice {rows.iloc[r][n]:.3f}", entries[r]["pred"], entries[r]["lung"])
                        for n, entries in zip(names, through)]}
             for r, first in enumerate(through[0])]
    case_figure(cases, out / "grid.png", "The same images through every model")
    sections = [("Runs", "<ul>" + "".join(_run_item(n, d, out) for n, d in zip(names, dirs)) + "</ul>"),
                (f"Metrics on {split}", html_table(side_by_side, other="this run's value of the figure")),
                (f"Paired per-image Dice difference (b - a, a = {names[0]})", html_table(paired)),
                ("The same images through every model", "<img src='grid.png' alt='comparison grid'>")]
    synthetic = any(is_synthetic(read_run(d)[0].data_root) for d in dirs)
    (out / "index.html").write_text(html_page(f"covfast comparison ({split})", sections, synthetic_banner(synthetic),
                                              metrics_link(out)))
    return out / "index.html"


def _run_item(name: str, run_dir: Path, page_dir: Path) -> str:
    "A run's line on the page: its name, linked to its report (a path relative to the page) when it has one."
    rel = lambda p: html.escape(Path(os.path.relpath(p, page_dir)).as_posix())  # noqa: E731
    report_page = run_dir / "report" / "index.html"
    link = f" (<a href='{rel(report_page)}'>report</a>)" if report_page.is_file() else ""
    return f"<li>{html.escape(name)}: {rel(run_dir)}{link}</li>"
