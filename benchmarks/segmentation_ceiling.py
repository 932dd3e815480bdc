"""Where a run's COVID-19 Dice goes: the segmentation alone, with no image-level decision, and what
would or would not lift it.

    python benchmarks/segmentation_ceiling.py RUN --split Test [--data DIR] [--out DIR]

Scores `model.pth` on the split's COVID-19 images like `covfast evaluate` (per-image Dice at the masks'
own resolution) but with every image outlined, so no threshold of the run's decision can score higher
than this. Beside it, on the same images:

- the pixel threshold on the infection probability (argmax is 0.5): does the model under- or over-segment?
- test-time augmentation with a horizontal flip (mean of the two probabilities): chest X-rays are not
  mirror-symmetric, which is why training does not flip them; does prediction gain from it anyway?
- the prediction kept inside the *true* lung mask: what a perfect lung segmentation could add at most;
- for a model with the lung output, the prediction kept inside its own predicted lungs;
- the truth itself taken down to the model's input size and back up: the Dice the input resolution
  allows;
- Dice by quartile of lesion size (infection pixels / image pixels).

Prints a table and writes DIR/segmentation_ceiling.csv (one row per COVID-19 image).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

from covfast.data import read_mask
from covfast.evaluate import split_items
from covfast.inference import iter_outputs, load_run
from covfast.metrics import confusion_counts, dice_from_counts

THRESHOLDS = (0.3, 0.4, 0.5, 0.6)


class Mirrored(nn.Module):
    "The model's outputs for the mirror image of its input, flipped back (the image logit as it is)."

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor):
        return self.model(x.flip(-1)).map(lambda t: t.flip(-1) if t.ndim == 4 else t)


def cut(value: float, digits: int = 4) -> str:
    "A figure cut (not rounded) to `digits` decimals, as covfast's docs quote them."
    return f"{np.floor(value * 10**digits) / 10**digits:.{digits}f}"


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    "Per-image Dice by covfast's own definition (`metrics`), as `covfast evaluate` scores it."
    tp, fp, fn = confusion_counts(torch.from_numpy(pred)[None], torch.from_numpy(truth)[None])[0].tolist()
    return float(dice_from_counts(tp, fp, fn))


def infection_probabilities(learn, items: pd.DataFrame) -> tuple[list[torch.Tensor], list[torch.Tensor], list]:
    """Per image, the infection probability at the model's resolution, no decision: plain, and the mean of the
    image's and its mirror image's (horizontal-flip TTA); and the lung probability (None without the lung output)."""
    probability = lambda out, name="infection": F.softmax(out.get(name)[0], 0)[1]  # noqa: E731
    outputs = [out for _, out, _ in iter_outputs(learn, items)]
    plain = [probability(out) for out in outputs]
    lungs = [probability(out, "lung") if out.has("lung") else None for out in outputs]
    model, learn.model = learn.model, Mirrored(learn.model)
    try:
        mirrored = [probability(out) for _, out, _ in iter_outputs(learn, items)]
    finally:
        learn.model = model
    return plain, [(p + m) / 2 for p, m in zip(plain, mirrored)], lungs


def ceiling(run: str, split: str, data: str | None) -> pd.DataFrame:
    learn, loaded = load_run(run, device="cpu")
    items = split_items(data or loaded.spec.data_root, split, ("COVID-19",))
    plain, flipped, lungs = infection_probabilities(learn, items)
    rows = []
    for i, item in items.iterrows():
        truth = read_mask(item.infection_mask).astype(bool)
        lung = read_mask(item.lung_mask).astype(bool)
        up = lambda p: F.interpolate(p[None, None], size=truth.shape, mode="bilinear", align_corners=False)[0, 0].numpy()
        prob, prob_tta = up(plain[i]), up(flipped[i])
        small = np.asarray(Image.fromarray(truth.astype(np.uint8) * 255).resize(tuple(plain[i].shape[::-1]), Image.NEAREST)) > 127
        row = {"file": item["name"], "lesion_share": truth.mean()}
        row.update({f"dice_pixel_{t}": dice(prob > t, truth) for t in THRESHOLDS})
        row.update({f"dice_hflip_tta_{t}": dice(prob_tta > t, truth) for t in THRESHOLDS})
        row["dice_in_true_lung"] = dice((prob > 0.5) & lung, truth)
        if lungs[i] is not None:
            row["dice_in_pred_lung"] = dice((prob > 0.5) & (up(lungs[i]) > 0.5), truth)
        row["dice_truth_round_trip"] = dice(up(torch.from_numpy(small.astype(np.float32))) > 0.5, truth)
        rows.append(row)
    return pd.DataFrame(rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run")
    ap.add_argument("--split", default="Test")
    ap.add_argument("--data", default=None)
    ap.add_argument("--out", default=".")
    args = ap.parse_args()
    table = ceiling(args.run, args.split, args.data)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / "segmentation_ceiling.csv", index=False)
    n = len(table)
    print(f"{Path(args.run).name}, {args.split}, {n} COVID-19 images, mean per-image Dice with every image outlined:")
    for t in THRESHOLDS:
        note = " (argmax: the run's own masks)" if t == 0.5 else ""
        print(f"  infection probability > {t}: {cut(table[f'dice_pixel_{t}'].mean())}{note};"
              f" with horizontal-flip TTA: {cut(table[f'dice_hflip_tta_{t}'].mean())}")
    print(f"  argmax kept inside the true lung mask: {cut(table.dice_in_true_lung.mean())}")
    if "dice_in_pred_lung" in table:
        print(f"  argmax kept inside the model's own predicted lungs: {cut(table.dice_in_pred_lung.mean())}")
    print(f"  the truth at the model's input size and back: {cut(table.dice_truth_round_trip.mean())}")
    quartile = pd.qcut(table.lesion_share, 4)
    for band, group in table.groupby(quartile, observed=True):
        print(f"  lesion share {band.left:.4f}-{band.right:.4f} of the image: {len(group)} images,"
              f" Dice {cut(group['dice_pixel_0.5'].mean())}")
    print(f"  images with Dice < 0.3: {cut((table['dice_pixel_0.5'] < 0.3).mean())}")
    print(f"wrote {out / 'segmentation_ceiling.csv'}")


if __name__ == "__main__":
    main()
