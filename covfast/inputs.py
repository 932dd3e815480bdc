"""The X-ray files a user names, and reading them: files as given, image files inside folders, a COVID-QU-Ex
tree's masks left out; X-rays and masks decoded once per process.

Light on purpose (no torch, no fastai): the CLI checks what `covfast predict` was given with it before the
model's libraries load, so a wrong path is refused at once.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np
from PIL import Image

from . import portable
from .dataset import SUBDIRS
from .errors import CovfastError
from .portable import DICOM_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "MASK_FOLDERS", "check_paths", "collect_images", "read_xray", "read_mask", "clear_cache",
           "xray_pixels", "mask_pixels"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", *DICOM_SUFFIXES)
# the mask folders of a COVID-QU-Ex tree: the PNGs in them are masks, not X-rays
MASK_FOLDERS = (SUBDIRS["infection_mask"], SUBDIRS["lung_mask"])


def check_paths(paths: list[str | Path]) -> None:
    "Refuse, in one line, the first of `paths` that does not exist."
    for p in map(Path, paths):
        if not p.exists():
            raise CovfastError(f"{p} does not exist; pass image files or folders of images")


def collect_images(paths: list[str | Path], say=None) -> list[Path]:
    """Files as given, and the image files (by suffix) inside folders, sorted; a missing path is an error. Inside a
    folder, the PNGs under a COVID-QU-Ex tree's mask folders ('infection masks', 'lung masks') are skipped, and
    `say` is told how many (a file named on its own is always taken)."""
    check_paths(paths)
    files, skipped = [], 0
    for p in map(Path, paths):
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file() and f.suffix.lower() in IMAGE_SUFFIXES)
            masks = [f for f in found if set(f.relative_to(p).parts[:-1]) & set(MASK_FOLDERS)]
            skipped += len(masks)
            masks = set(masks)
            files.extend(f for f in found if f not in masks)
        elif p.is_file():
            files.append(p)
        else:
            raise CovfastError(f"{p} is neither a file nor a folder; pass image files or folders of images")
    if skipped and say:
        say(f"skipped {skipped} masks under '{MASK_FOLDERS[0]}/' and '{MASK_FOLDERS[1]}/' folders (a COVID-QU-Ex tree's "
            f"masks, not X-rays); name a mask file itself to predict on it")
    if not files:
        raise CovfastError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in {', '.join(map(str, paths))}"
                           + (f" besides {skipped} masks in mask folders" if skipped else ""))
    return files


def read_xray(path: str | Path) -> np.ndarray:
    """Any PNG/JPEG X-ray (8- or 16-bit, grayscale or RGB), or a DICOM one, -> uint8 HxW grayscale (`portable.read_xray`,
    what an export's standalone prediction reads with too); what cannot be read is one CovfastError."""
    try:
        return portable.read_xray(path)
    except portable.XrayError as e:
        raise CovfastError(str(e)) from None


def read_mask(path: str | Path) -> np.ndarray:
    "A 0/255 mask PNG -> uint8 0/1; any other value is an error that names the file."
    with Image.open(path) as im:
        arr = np.asarray(im)
    if arr.ndim == 3:
        arr = arr[..., 0]
    bad = np.setdiff1d(np.unique(arr), (0, 255))
    if bad.size:
        raise CovfastError(f"non-binary mask {path}: holds {', '.join(map(str, bad[:5]))} besides 0 and 255; "
                           f"run `covfast data check` on the tree")
    return (arr > 127).astype(np.uint8)


# Decode each PNG once per process: on CPU the model is the only thing an epoch should pay for.
_cached_xray = lru_cache(maxsize=None)(read_xray)
_cached_mask = lru_cache(maxsize=None)(read_mask)


def clear_cache() -> None:
    "Forget every decoded PNG (after files changed on disk)."
    _cached_xray.cache_clear()
    _cached_mask.cache_clear()


def xray_pixels(item: str | Path | np.ndarray) -> np.ndarray:
    "An X-ray item (a file, decoded once per process, or an HxW uint8 array) as HxW uint8 gray."
    return item if isinstance(item, np.ndarray) else _cached_xray(str(item))


def mask_pixels(item: str | Path | np.ndarray) -> np.ndarray:
    "A mask item (a 0/255 file, decoded once per process, or an HxW 0/1 array) as HxW uint8 0/1."
    return item.astype(np.uint8) if isinstance(item, np.ndarray) else _cached_mask(str(item))
