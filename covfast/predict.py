"""New X-rays -> masks at the input's resolution, red overlays and infection percentages."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from .config import Config
from .data import _cached_xray, read_mask
from .errors import CovfastError
from .metrics import gate_empty, predicted_infection

__all__ = ["IMAGE_SUFFIXES", "iter_logits", "overlay", "collect_images", "predict"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


@torch.no_grad()
def iter_logits(learn, items: pd.DataFrame, gate_topk: float, bs: int | None = None, with_labels: bool = False,
                progress=None) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """(row index, gated logits (2, h, w) at model resolution, target or None) for every item, batched.

    Items go through the learner's own validation transforms (resize, normalisation), so prediction
    sees exactly what validation saw. evaluate and predict share this one path.
    """
    dl = learn.dls.test_dl(items, with_labels=with_labels, bs=bs or learn.dls.bs)
    start = 0
    for batch in (progress(dl, len(dl)) if progress is not None else dl):
        # a plain Tensor: fastai's typed tensors would send every op of the forward through Python
        xb = batch[0].as_subclass(torch.Tensor)
        logits = gate_empty(learn.model(xb).float(), gate_topk)
        yb = batch[1].as_subclass(torch.Tensor) if with_labels else None
        for i in range(len(xb)):
            yield start + i, logits[i], (yb[i] if yb is not None else None)
        start += len(xb)


def upsample_mask(logits: torch.Tensor, size: tuple[int, int]) -> np.ndarray:
    "Boolean mask at `size` (h, w): bilinear logits, then argmax (the metric's binarisation)."
    up = F.interpolate(logits[None], size=size, mode="bilinear", align_corners=False)[0]
    return predicted_infection(up, dim=0).cpu().numpy()


def overlay(gray: np.ndarray, mask: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    "RGB uint8: the X-ray in gray, blended with red exactly where `mask` is set."
    rgb = np.repeat(gray[..., None], 3, axis=2).astype(np.float32)
    red = np.array([255.0, 0.0, 0.0], np.float32)
    rgb[mask] = (1 - alpha) * rgb[mask] + alpha * red
    return np.clip(rgb + 0.5, 0, 255).astype(np.uint8)


def collect_images(paths: list[str | Path]) -> list[Path]:
    "Files as given, and the image files (by suffix) inside folders, sorted; a missing path is an error."
    files = []
    for p in map(Path, paths):
        if p.is_dir():
            files.extend(sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES))
        elif p.is_file():
            files.append(p)
        else:
            raise CovfastError(f"{p} does not exist; pass image files or folders of images")
    if not files:
        raise CovfastError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}")
    return files


def _unique_stem(path: Path, taken: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in taken:
        n += 1
        stem = f"{path.stem}-{n}"
    taken.add(stem)
    return stem


def predict(
    run: str | Path,  # run directory or its name under runs_dir
    paths: list[str | Path],  # image files and/or folders
    out: str | Path | None = None,  # output folder (default: <run>/predictions/<time>); must not hold results
    lung_masks: str | Path | None = None,  # folder of lung masks named like the images: adds % of lung
    config: Config | None = None,
    device: str | None = None,
    progress=None,
    on_error=None,  # called with one line per unreadable file
) -> tuple[pd.DataFrame, list[str], Path]:
    "Masks (0/255, input resolution), overlays and predictions.csv for new X-rays; failures are reported, not fatal."
    from .evaluate import load_run
    config = config or Config()
    files = collect_images(paths)
    learn, cfg, run_dir = load_run(run, config.runs_dir, device)
    out = Path(out) if out else run_dir / "predictions" / f"{datetime.now():%Y%m%d-%H%M%S}"
    if (out / "predictions.csv").exists():
        raise CovfastError(f"{out} already holds predictions.csv; choose another --out")
    (out / "masks").mkdir(parents=True, exist_ok=True)
    (out / "overlays").mkdir(exist_ok=True)
    failures, good = [], []
    for f in files:
        try:
            _cached_xray(str(f))  # decode once: a bad file is found here, and the loader reuses the pixels
            good.append(f)
        except Exception as e:  # PIL raises many types for a file that is not an image
            failures.append(f"{f}: not a readable image ({e.__class__.__name__}: {str(e)[:100]})")
            if on_error:
                on_error(failures[-1])
    rows, taken = [], set()
    if good:
        items = pd.DataFrame({"image": [str(f) for f in good]})
        for i, logits, _ in iter_logits(learn, items, cfg.get("gate_topk", 0.0), bs=config.bs, progress=progress):
            f = good[i]
            gray = _cached_xray(str(f))
            mask = upsample_mask(logits, gray.shape)
            stem = _unique_stem(f, taken)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{stem}.png")
            Image.fromarray(overlay(gray, mask)).save(out / "overlays" / f"{stem}.png")
            row = {"file": str(f), "width": gray.shape[1], "height": gray.shape[0], "infected_pixels": int(mask.sum()),
                   "infection_pct_image": 100.0 * mask.mean(), "infection_pct_lung": float("nan"),
                   "mask": f"masks/{stem}.png", "overlay": f"overlays/{stem}.png"}
            lung_path = Path(lung_masks) / f.name if lung_masks else None
            if lung_path is not None and lung_path.is_file():
                lung = read_mask(lung_path).astype(bool)
                if lung.shape == mask.shape and lung.any():
                    row["infection_pct_lung"] = 100.0 * (mask & lung).sum() / lung.sum()
            rows.append(row)
    table = pd.DataFrame(rows, columns=["file", "width", "height", "infected_pixels", "infection_pct_image",
                                        "infection_pct_lung", "mask", "overlay"])
    table.to_csv(out / "predictions.csv", index=False)
    return table, failures, out
