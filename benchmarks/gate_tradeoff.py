"""A run's decision trade-off on one split: COVID-19 Dice against the share of empty-truth images left
empty, as the threshold moves, for the image head's probability and for the older pixel-evidence score.

    python benchmarks/gate_tradeoff.py RUN --split Val --data ../shared/data/covid-qu-ex --out DIR

Scores `model.pth` like `covfast evaluate` (per-image Dice at the masks' resolution) once without any
decision, then empties the images whose score is at or below each threshold. For a run with the image
head there are two curves on the same predictions: the head's probability, and the evidence score
(mean infection margin of the 2% most confident pixels) the older gate used; where the head's curve
lies above the evidence curve, the gate adds nothing. The thresholds are quantiles of the split's own
empty-truth scores: this maps the curves, it does not choose a point on them (`covfast calibrate`
chooses on Val). Writes DIR/gate_tradeoff.csv and DIR/gate_tradeoff.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from covfast.evaluate import score_items, split_items  # noqa: E402
from covfast.decision import evidence_scores, image_probability  # noqa: E402
from covfast.inference import iter_outputs, load_run  # noqa: E402


def scores_of(learn, items: pd.DataFrame) -> dict[str, np.ndarray]:
    "Per image, each score a decision can threshold: the head's probability (if any) and the pixel evidence."
    head, evidence = [], []
    for _, out, _ in iter_outputs(learn, items):
        prob = image_probability(out)
        head.append(float(prob[0]) if prob is not None else np.nan)
        evidence.append(float(evidence_scores(out.infection, 0.02)[0]))
    out = {"pixel evidence (top 2%)": np.array(evidence)}
    if not np.isnan(head).any():
        out["image head probability"] = np.array(head)
    return out


def tradeoff(run: str, split: str, data: str | None, shares: np.ndarray) -> tuple[pd.DataFrame, dict]:
    learn, loaded = load_run(run, device="cpu")
    items = split_items(data or loaded.spec.data_root, split, loaded.spec.classes)
    per_image = score_items(learn, items, decided=False)  # each decision is applied below, per threshold
    covid, empty_truth = (per_image["class"] == "COVID-19").to_numpy(), (per_image.tp + per_image.fn == 0).to_numpy()
    labels = per_image["class"].to_numpy()

    def at(score: str, values: np.ndarray, threshold: float) -> dict:
        "Scores with the masks of images whose score is at or below `threshold` emptied."
        dice = np.where(values > threshold, per_image.dice, empty_truth.astype(float))
        return {"score": score, "threshold": threshold, "empty_truth_left_empty": dice[~covid].mean(),
                **{f"{c}_left_empty".replace("-", "").lower(): dice[labels == c].mean() for c in ("Non-COVID", "Normal")
                   if (labels == c).any()},
                "covid_dice": dice[covid].mean(), "mean_dice": dice.mean()}

    scores = scores_of(learn, items)
    rows = [at(name, v, t) for name, v in scores.items() for t in [-np.inf, *np.quantile(v[~covid], shares)]]
    decision = loaded.decision
    own = (at("image head probability", scores["image head probability"], decision.threshold)
           if "image head probability" in scores else
           at("pixel evidence (top 2%)", scores["pixel evidence (top 2%)"], decision.gate_margin if decision.gate_topk else -np.inf))
    return pd.DataFrame(rows), own


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--split", default="Val")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    table, own = tradeoff(args.run, args.split, args.data, np.round(np.arange(0.05, 1.0, 0.05), 2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gate_tradeoff.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"the run's own decision ({own['score']}, threshold {own['threshold']:.4f}): empty-truth left empty "
          f"{own['empty_truth_left_empty']:.4f}, COVID-19 Dice {own['covid_dice']:.4f}, mean {own['mean_dice']:.4f}")
    fig, ax = plt.subplots(figsize=(5.5, 4))
    for score, curve in table.groupby("score", sort=False):
        ax.plot(curve.empty_truth_left_empty, curve.covid_dice, "o-", ms=3, label=score)
    ax.plot(own["empty_truth_left_empty"], own["covid_dice"], "ks", label="the run's own threshold")
    ax.set_xlabel(f"{args.split} empty-truth images left empty")
    ax.set_ylabel(f"{args.split} COVID-19 Dice (per image)")
    ax.set_title(Path(args.run).name, fontsize=8)
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "gate_tradeoff.png", dpi=120)
    print(f"wrote {out / 'gate_tradeoff.csv'} and {out / 'gate_tradeoff.png'}")


if __name__ == "__main__":
    main()
