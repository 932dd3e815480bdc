"""The X-ray files a user names: files as given, image files inside folders, a COVID-QU-Ex tree's masks left out.

Light on purpose (no torch, no fastai): the CLI checks what `covfast predict` was given with it before the
model's libraries load, so a wrong path is refused at once.
"""

from __future__ import annotations

from pathlib import Path

from .dataset import SUBDIRS
from .errors import CovfastError
from .portable import DICOM_SUFFIXES

__all__ = ["IMAGE_SUFFIXES", "MASK_FOLDERS", "check_paths", "collect_images"]

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
