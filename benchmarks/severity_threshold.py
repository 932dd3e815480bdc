"""Does a pixel threshold on the infection probability grade severity better than argmax (0.5), without costing Dice?

    python benchmarks/severity_threshold.py RUN [RUN ...] [--data DIR] [--out DIR]

Small lesions are over-outlined (docs/results.md): a higher threshold shrinks every outline, a lower one grows
it. For each run, on Val (where a threshold would be chosen) and on Test (where it is reported), with the run's
own image-level decision (the head keeps or empties each X-ray as `covfast evaluate` does) and the pixel rule
`infection probability > t` for each t of THRESHOLDS, on the COVID-19 X-rays: the mean per-image Dice, the
severity band agreement and MAE with the model's own lungs, and the correlation of predicted and true
infection % of lung; and on the empty-truth X-rays the share left empty. One model pass per split; writes
DIR/severity_threshold.csv and prints a table per run.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F

from covfast.data import read_mask
from covfast.evaluate import split_items
from covfast.inference import iter_outputs, load_run
from covfast.metrics import band_agreement, infection_pct, severity_correlation, severity_mae

from segmentation_ceiling import cut, dice  # noqa: E402  (benchmarks/ is the script's folder)

THRESHOLDS = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)


def score(run: str, split: str, data: str | None) -> pd.DataFrame:
    "One row per (image, threshold): class, Dice, true and predicted infection % of lung, whether it is left empty."
    learn, loaded = load_run(run, device="cpu")
    items = split_items(data or loaded.spec.data_root, split, loaded.spec.classes)
    rows = []
    for i, out, _ in iter_outputs(learn, items):
        item = items.iloc[i]
        truth = read_mask(item.infection_mask).astype(bool)
        lung = read_mask(item.lung_mask).astype(bool)
        up = lambda t: F.interpolate(t.float(), size=truth.shape, mode="bilinear", align_corners=False)  # noqa: E731
        prob = F.softmax(up(out.infection), 1)[0, 1].numpy()
        own = (F.softmax(up(out.lung), 1)[0, 1].numpy() > 0.5) if out.has("lung") else lung
        keep = loaded.decision.keep(out)
        kept = True if keep is None else bool(keep[0])
        true_pct = infection_pct(truth, lung)
        for t in THRESHOLDS:
            pred = (prob > t) & kept
            rows.append({"run": Path(run).name, "split": split, "file": item["name"], "class": item.label, "threshold": t,
                         "dice": dice(pred, truth), "true_pct": true_pct,
                         "pred_pct": infection_pct(pred, own) if own.any() else float("nan"), "empty": not pred.any()})
    return pd.DataFrame(rows)


def summary(table: pd.DataFrame) -> pd.DataFrame:
    "Per run, split and threshold: the COVID-19 figures and the empty-truth X-rays left empty."
    out = []
    for (run, split, t), g in table.groupby(["run", "split", "threshold"]):
        covid, empty = g[g["class"] == "COVID-19"], g[g["class"] != "COVID-19"]
        out.append({"run": run, "split": split, "threshold": t, "covid_dice": covid.dice.mean(),
                    "covid_band_agreement": band_agreement(covid.pred_pct, covid.true_pct),
                    "covid_severity_mae": severity_mae(covid.pred_pct, covid.true_pct),
                    "covid_severity_correlation": severity_correlation(covid.pred_pct, covid.true_pct),
                    "empty_left_empty": empty["empty"].mean() if len(empty) else float("nan")})
    return pd.DataFrame(out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    table = pd.concat([score(run, split, args.data) for run in args.runs for split in ("Val", "Test")], ignore_index=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "severity_threshold.csv", index=False)
    figures = summary(table)
    print("| run | split | pixel threshold | COVID-19 Dice | COVID-19 band agreement, own lungs | severity MAE | "
          "correlation | empty-truth left empty |")
    print("|---|---|---|---|---|---|---|---|")
    for r in figures.itertuples():
        print(f"| {r.run} | {r.split} | {r.threshold} | {cut(r.covid_dice)} | {cut(r.covid_band_agreement)} | "
              f"{cut(r.covid_severity_mae)} | {cut(r.covid_severity_correlation)} | {cut(r.empty_left_empty)} |")
    print(f"wrote {out / 'severity_threshold.csv'}")


if __name__ == "__main__":
    with torch.no_grad():
        main()
