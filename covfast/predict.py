"""New X-rays -> masks at the input's resolution, red overlays and infection percentages."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from datetime import datetime
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.torch_core import TensorImage, to_device
from fastai.vision.augment import Resize
from PIL import Image

from .config import Config
from .data import InfectionMask, _cached_xray, mask_pixels, read_mask, xray_pixels
from .errors import CovfastError
from .metrics import learner_gate, predicted_infection

__all__ = ["IMAGE_SUFFIXES", "iter_logits", "validation_batch", "overlay", "collect_images", "predict"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


def _input_size(learn) -> tuple[int, int]:
    "(width, height) of the learner's validation Resize."
    for tfm in learn.dls.valid.after_item.fs:
        if isinstance(tfm, Resize):
            return tuple(tfm.size)
    raise CovfastError("the learner's validation transforms hold no Resize; build it with load_run or covfast_learner")


def _resized(pixels: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, resample))


def _batch_pixels(rows: pd.DataFrame, size: tuple[int, int], with_labels: bool) -> tuple[np.ndarray, ...]:
    """uint8 X-rays (B, H, W) and masks, resized as the validation `Resize` does (Squish: bilinear for
    images, nearest for masks). Decoding and resizing release the GIL, so this runs in a helper thread."""
    x = np.stack([_resized(xray_pixels(p), size, Image.BILINEAR) for p in rows.image])
    if not with_labels:
        return (x,)
    y = np.stack([_resized(mask_pixels(m), size, Image.NEAREST) for m in rows.infection_mask])
    return x, y


def validation_batch(learn, pixels: tuple[np.ndarray, ...]) -> tuple:
    """The batch fastai's validation DataLoader would make of these images, from `_batch_pixels`.

    fastai's per-item pipeline (PILImage, Resize, ToTensor, collation) cost about 3 ms of Python per
    item, some 10% of the Attention U-Net's CPU prediction at 128 px; the resizing here is the same
    PIL operation on one channel instead of three identical ones, and the batch transforms
    (IntToFloatTensor, Normalize) are the DataLoader's own. tests/test_predict.py checks the pixels match.
    """
    dl = learn.dls.valid
    x = torch.from_numpy(pixels[0])[:, None].expand(-1, 3, -1, -1).contiguous()
    b = (TensorImage(x),) if len(pixels) == 1 else (TensorImage(x), InfectionMask(torch.from_numpy(pixels[1])))
    return dl.after_batch(to_device(b, dl.device))


@torch.no_grad()
def iter_logits(learn, items: pd.DataFrame, bs: int | None = None, with_labels: bool = False,
                progress=None, gated: bool = True) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """(row index, gated logits (2, h, w) at model resolution, target or None) for every item, batched.

    Items get the learner's own validation transforms (resize, normalisation), so prediction sees
    exactly what validation saw, and the learner's own `EmptyGate` (`gated=False`: the raw logits);
    evaluate and predict share this one path. The next batch's PNGs are decoded in a helper thread
    while the model runs on this one.
    """
    bs = bs or learn.dls.bs
    size = _input_size(learn)
    gate = learner_gate(learn)
    starts = range(0, len(items), bs)
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(_batch_pixels, items.iloc[0:bs], size, with_labels) if len(items) else None
        for start in (progress(starts, len(starts)) if progress is not None else starts):
            pixels = ahead.result()
            if start + bs < len(items):
                ahead = pool.submit(_batch_pixels, items.iloc[start + bs:start + 2 * bs], size, with_labels)
            batch = validation_batch(learn, pixels)
            # a plain Tensor: fastai's typed tensors would send every op of the forward through Python
            xb = batch[0].as_subclass(torch.Tensor)
            logits = learn.model(xb).float()
            if gated and gate is not None:
                logits = gate.apply(logits)
            yb = batch[1].as_subclass(torch.Tensor) if with_labels else None
            for i in range(len(xb)):
                yield start + i, logits[i], (yb[i] if yb is not None else None)


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
        for i, logits, _ in iter_logits(learn, items, bs=config.bs, progress=progress):
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
