"""The empty-mask gate's trade-off for one run on one split: COVID-19 Dice against the share of
Non-COVID images left empty, as the gate's threshold moves.

    python benchmarks/gate_tradeoff.py RUN --split Val --data ../shared/data/covid-qu-ex --out DIR

Scores `model.pth` like `covfast evaluate` (per-image Dice at the masks' resolution), once without the
gate, then empties the images whose evidence score is at or below each threshold. The thresholds are
quantiles of the split's own Non-COVID scores: this maps the curve, it does not choose a point on it
(`covfast calibrate` chooses on Train). Writes DIR/gate_tradeoff.csv and DIR/gate_tradeoff.png.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib
import numpy as np
import pandas as pd

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from covfast.calibrate import evidence_of  # noqa: E402
from covfast.evaluate import score_items, split_items  # noqa: E402
from covfast.inference import load_run  # noqa: E402
from covfast.metrics import learner_gate  # noqa: E402

# the two plain baselines at 128 px / 6 epochs: (share of Non-COVID left empty, COVID-19 Dice)
PEERS = {"smp Unet-ResNet34": ((0.27, 0.687), (3, -12)), "fastai unet_learner resnet34": ((0.035, 0.687), (3, -24))}


def tradeoff(run: str, split: str, data: str | None, shares: np.ndarray) -> tuple[pd.DataFrame, dict]:
    learn, cfg, _ = load_run(run, device="cpu")
    items = split_items(data or cfg["data_root"], split, tuple(cfg["classes"]))
    evidence = evidence_of(learn, items)
    per_image = score_items(learn, items, gated=False)  # the gate is applied below, per threshold
    covid, empty_truth = (per_image["class"] == "COVID-19").to_numpy(), (per_image.tp + per_image.fn == 0).to_numpy()

    def at(threshold: float) -> dict:
        "Scores with the masks of images whose evidence is at or below `threshold` emptied."
        dice = np.where(evidence > threshold, per_image.dice, empty_truth.astype(float))
        return {"threshold": threshold, "noncovid_empty": dice[~covid].mean(), "covid_dice": dice[covid].mean(),
                "mean_dice": dice.mean()}

    rows = [at(t) for t in [-np.inf, *np.quantile(evidence[~covid], shares)]]
    return pd.DataFrame(rows), at(learner_gate(learn).margin)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--split", default="Val")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    table, current = tradeoff(args.run, args.split, args.data, np.round(np.arange(0.05, 1.0, 0.05), 2))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "gate_tradeoff.csv", index=False)
    print(table.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    print(f"the run's own gate (threshold {current['threshold']:.4f}): Non-COVID empty {current['noncovid_empty']:.4f}, "
          f"COVID-19 Dice {current['covid_dice']:.4f}, mean {current['mean_dice']:.4f}")
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(table.noncovid_empty, table.covid_dice, "o-", ms=3, label=Path(args.run).name)
    ax.plot(current["noncovid_empty"], current["covid_dice"], "s", label="the run's gate")
    for name, ((x, y), offset) in PEERS.items():
        ax.plot(x, y, "x", color="gray")
        ax.annotate(name, (x, y), fontsize=7, xytext=offset, textcoords="offset points", color="gray")
    ax.set_xlabel(f"{args.split} Non-COVID images left empty")
    ax.set_ylabel(f"{args.split} COVID-19 Dice (per image)")
    ax.legend(fontsize=7)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "gate_tradeoff.png", dpi=120)
    print(f"wrote {out / 'gate_tradeoff.csv'} and {out / 'gate_tradeoff.png'}")


if __name__ == "__main__":
    main()
