"""New X-rays -> masks at the input's resolution, red overlays and infection percentages."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .config import Config
from .data import _cached_xray, read_mask
from .errors import CovfastError
from .inference import iter_logits, load_run, upsample_mask
from .metrics import image_probability, infection_pct, learner_threshold

__all__ = ["IMAGE_SUFFIXES", "overlay", "collect_images", "predict"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")


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
    config = config or Config()
    files = collect_images(paths)
    if lung_masks is not None and not Path(lung_masks).is_dir():
        raise CovfastError(f"--lung-masks {lung_masks} is not a folder; pass the folder of 0/255 lung masks named like the images")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CovfastError(f"--out {out} is a file; pass a folder (new, or without predictions.csv)")
    learn, cfg, run_dir = load_run(run, config.runs_dir, device, precision=config.precision)
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
    threshold = learner_threshold(learn)
    if good:
        items = pd.DataFrame({"image": [str(f) for f in good]})
        for i, logits, _ in iter_logits(learn, items, bs=config.bs, progress=progress):
            f = good[i]
            gray = _cached_xray(str(f))
            mask = upsample_mask(logits, gray.shape, threshold)
            prob = image_probability(logits[None])
            stem = _unique_stem(f, taken)
            Image.fromarray(mask.astype(np.uint8) * 255).save(out / "masks" / f"{stem}.png")
            Image.fromarray(overlay(gray, mask)).save(out / "overlays" / f"{stem}.png")
            row = {"file": str(f), "width": gray.shape[1], "height": gray.shape[0],
                   # the image head's probability and the run's decision on it (NaN / blank for runs without the head)
                   "p_covid": float(prob[0]) if prob is not None else float("nan"),
                   "decision": ("" if prob is None else "COVID-19 infection" if prob[0] > threshold else "no COVID-19 infection"),
                   "infected_pixels": int(mask.sum()),
                   "infection_pct_image": 100.0 * mask.mean(), "infection_pct_lung": float("nan"),
                   "mask": f"masks/{stem}.png", "overlay": f"overlays/{stem}.png"}
            lung_path = Path(lung_masks) / f.name if lung_masks else None
            if lung_path is not None and lung_path.is_file():
                try:
                    lung = read_mask(lung_path).astype(bool)
                    if lung.shape != mask.shape:
                        raise ValueError(f"{lung.shape[1]}x{lung.shape[0]} against the X-ray's {mask.shape[1]}x{mask.shape[0]}")
                    row["infection_pct_lung"] = infection_pct(mask, lung)
                except Exception as e:  # the prediction stands; only its % of lung is missing
                    reason = str(e).split(" besides")[0] if isinstance(e, CovfastError) else f"{e.__class__.__name__}: {str(e)[:100]}"
                    failures.append(f"{lung_path}: lung mask not used ({reason}); infection % of lung left empty")
                    if on_error:
                        on_error(failures[-1])
            rows.append(row)
    table = pd.DataFrame(rows, columns=["file", "width", "height", "p_covid", "decision", "infected_pixels", "infection_pct_image",
                                        "infection_pct_lung", "mask", "overlay"])
    table.to_csv(out / "predictions.csv", index=False)
    return table, failures, out
