"""Does tidying a model's predicted lungs lift their Dice? The raw lung output against three clean-ups.

    python benchmarks/lung_cleanup.py RUN [--splits Val Test] [--data DIR] [--out DIR]

For a run with the lung output, every image of each split (all its classes) is scored like `covfast evaluate`
scores the lungs (per-image Dice at the masks' own resolution), with the lungs as the model predicts them
and after each clean-up of that mask:

- `largest2`: keep only the two largest connected regions (a chest X-ray shows two lungs; specks elsewhere,
  on labels and tubes, go);
- `min_share`: drop regions under 10% of the largest one (a lung that the mask splits in two keeps both parts);
- `holes`: fill holes inside the regions;
- `min_share+holes`, `largest2+holes`.

Choose on Val, report on Test. Prints a table and writes DIR/lung_cleanup.csv (one row per image and split).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from covfast.config import CLASSES
from covfast.data import read_mask
from covfast.decision import predicted_lung
from covfast.evaluate import split_items
from covfast.inference import iter_outputs, load_run

from segmentation_ceiling import cut, dice

MIN_SHARE = 0.1


def regions_kept(mask: np.ndarray, largest: int | None = None, min_share: float | None = None) -> np.ndarray:
    "The mask with only its `largest` biggest 8-connected regions, or those of at least `min_share` of the biggest."
    labels, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    order = np.argsort(sizes)[::-1]
    keep = order[:largest] if largest is not None else np.flatnonzero(sizes >= min_share * sizes.max())
    return np.isin(labels, keep + 1)


CLEANUPS = {
    "raw": lambda m: m,
    "largest2": lambda m: regions_kept(m, largest=2),
    "min_share": lambda m: regions_kept(m, min_share=MIN_SHARE),
    "holes": ndimage.binary_fill_holes,
    "min_share+holes": lambda m: ndimage.binary_fill_holes(regions_kept(m, min_share=MIN_SHARE)),
    "largest2+holes": lambda m: ndimage.binary_fill_holes(regions_kept(m, largest=2)),
}


def score(run: str, splits: list[str], data: str | None) -> pd.DataFrame:
    learn, loaded = load_run(run, device="cpu")
    if not loaded.spec.lungs:
        raise SystemExit(f"{run} has no lung output")
    rows = []
    for split in splits:
        items = split_items(data or loaded.spec.data_root, split, CLASSES)
        for i, out, _ in iter_outputs(learn, items):
            item = items.iloc[i]
            truth = read_mask(item.lung_mask).astype(bool)
            lung = predicted_lung(out, truth.shape)[0].numpy()
            rows.append({"split": split, "file": item["name"], "class": item.label,
                         **{name: dice(np.asarray(f(lung), dtype=bool), truth) for name, f in CLEANUPS.items()}})
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--splits", nargs="+", default=["Val", "Test"])
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    table = score(args.run, args.splits, args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "lung_cleanup.csv", index=False)
    print(f"{Path(args.run).name}: mean per-image lung Dice (all classes); images below 0.8 in brackets")
    print("| split | n | " + " | ".join(CLEANUPS) + " |")
    print("|---|---|" + "---|" * len(CLEANUPS))
    for split, g in table.groupby("split", sort=False):
        print(f"| {split} | {len(g)} | " + " | ".join(f"{cut(g[c].mean())} ({(g[c] < 0.8).sum()})" for c in CLEANUPS) + " |")
    print(f"wrote {out / 'lung_cleanup.csv'}")


if __name__ == "__main__":
    main()
