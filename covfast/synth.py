"""A synthetic COVID-QU-Ex tree: lungs, ribs, soft tissue and noise, with hazy COVID opacities.

Learnable only through anatomy: COVID-19 images carry patchy ground-glass haze inside the lungs
(the infection mask); Non-COVID images carry compact dense consolidations inside the lungs with
an empty mask; every class may carry bright blobs outside the lungs. A model that paints every
opacity, or anything outside the lungs, scores badly. It proves the pipeline, not accuracy.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable, Iterable

import cv2
import numpy as np
from PIL import Image

from .config import CLASSES, MAXIMUMS
from .dataset import DATASET_DIR, SPLITS, SUBDIRS
from .errors import CovfastError

__all__ = ["synth_item", "write_synthetic", "synthetic_name", "is_synthetic", "MARKER"]

# Written beside the dataset folder so `--force` only ever replaces a tree synth made.
MARKER = ".covfast-synth.json"
MIN_INFECTED = 0.012  # smallest COVID infection as a share of the image, so it survives resizing


def is_synthetic(root: str | Path) -> bool:
    "Whether the tree at `root` (the download folder or its 'Infection Segmentation Data') was written by `covfast synth`."
    root = Path(root)
    return (root / MARKER).is_file() or (root.parent / MARKER).is_file()


def synthetic_name(label: str, number: int) -> str:
    "File names in COVID-QU-Ex's own styles (spaces and mixed case included)."
    return {"COVID-19": f"covid_{number}.png", "Non-COVID": f"non_COVID ({number}).png",
            "Normal": f"Normal ({number}).png"}[label]


def _blur(a: np.ndarray, sigma: float) -> np.ndarray:
    return cv2.GaussianBlur(a, (0, 0), sigmaX=max(sigma, 0.3), borderType=cv2.BORDER_REFLECT)


def _lungs(rng: np.random.Generator, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    "Two lung fields, narrow at the apex, with the heart's notch in the patient's left lung."
    lungs = np.zeros(x.shape, bool)
    cy, ry = 0.5 + rng.normal(0, 0.02), 0.3 + rng.normal(0, 0.02)
    for side in (-1, 1):  # -1: image left = patient's right lung
        cx = 0.5 + side * (0.2 + rng.normal(0, 0.01))
        rx = 0.155 + rng.normal(0, 0.01)
        t = np.clip((y - (cy - ry)) / (2 * ry), 0, 1)  # 0 at the apex, 1 at the base
        width = rx * (0.45 + 0.55 * np.sqrt(t))
        lungs |= ((x - cx) / width) ** 2 + ((y - cy) / ry) ** 2 < 1
    heart = ((x - 0.56) / 0.13) ** 2 + ((y - 0.68) / 0.12) ** 2 < 1
    return lungs & ~heart


def _blobs(rng: np.random.Generator, x, y, inside: np.ndarray, n: int, sigma: tuple[float, float],
           low_zone: float) -> np.ndarray:
    "Sum of `n` anisotropic Gaussians centred on random pixels of `inside`, biased to y >= low_zone."
    ys, xs = np.nonzero(inside)
    field = np.zeros(x.shape, np.float32)
    size = x.shape[0]
    for _ in range(n):
        weights = np.where(ys / size >= low_zone, 3.0, 1.0)
        i = rng.choice(len(ys), p=weights / weights.sum())
        sx, sy = rng.uniform(*sigma, size=2)
        field += np.exp(-((x - xs[i] / size) ** 2 / (2 * sx**2) + (y - ys[i] / size) ** 2 / (2 * sy**2)))
    return field


def synth_item(label: str, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    "One (image, infection mask, lung mask) triple, all uint8 `size`x`size`, masks 0/255."
    y, x = (np.mgrid[0:size, 0:size].astype(np.float32) + 0.5) / size
    lungs = _lungs(rng, x, y)
    body = ((x - 0.5) / 0.48) ** 2 + ((y - 0.58) / 0.62) ** 2 < 1
    img = np.where(body, 0.42 + 0.25 * ((x - 0.5) / 0.48) ** 2, 0.04).astype(np.float32)
    img += 0.22 * (np.abs(x - 0.5) < 0.045) * body  # spine and mediastinum
    img += 0.14 * ((((x - 0.56) / 0.14) ** 2 + ((y - 0.67) / 0.13) ** 2) < 1)  # heart shadow
    soft_lungs = _blur(lungs.astype(np.float32), size / 80)
    img = img * (1 - 0.62 * soft_lungs) + 0.05 * y * soft_lungs  # air is dark, the bases less so
    # ribs: bands that curve down towards the sides, over both lungs
    phase, spacing = rng.uniform(0.12, 0.16), rng.uniform(0.065, 0.08)
    for k in range(9):
        centre = phase + k * spacing + 2.5 * (np.abs(x - 0.5) - 0.15) ** 2
        img += 0.09 * (np.abs(y - centre) < 0.012) * body * (np.abs(x - 0.5) > 0.05)
    img += 0.12 * (np.abs(y - (0.15 + 0.4 * (np.abs(x - 0.5) - 0.2) ** 2)) < 0.013) * body  # clavicles

    infection = np.zeros_like(lungs)
    if label == "COVID-19":  # patchy ground-glass haze, peripheral and basal, often both lungs
        while infection.mean() < MIN_INFECTED:
            field = _blobs(rng, x, y, lungs, int(rng.integers(2, 5)), (0.05, 0.1), low_zone=0.5)
            texture = _blur(rng.normal(0, 1, x.shape).astype(np.float32), size / 40)
            field = field * (0.75 + 0.25 * texture / (texture.std() + 1e-6)) * soft_lungs
            infection = (field > 0.45) & lungs
        img += 0.3 * np.clip(field, 0, 1.2)
    elif label == "Non-COVID":  # compact, dense, sharp-edged consolidation: an opacity that is not COVID
        field = _blobs(rng, x, y, lungs, int(rng.integers(1, 3)), (0.025, 0.045), low_zone=0.0)
        img += 0.4 * _blur((field > 0.5).astype(np.float32), size / 160) * soft_lungs
    if rng.random() < 0.6:  # bright blobs outside the lungs (electrodes, soft tissue) in any class
        field = _blobs(rng, x, y, body & (_blur(lungs.astype(np.float32), size / 30) < 0.02),
                       int(rng.integers(1, 3)), (0.02, 0.04), low_zone=0.0)
        img += 0.3 * np.clip(field, 0, 1)

    img = _blur(img, size / 200) + rng.normal(0, 0.025, img.shape).astype(np.float32)
    img = img * rng.uniform(0.85, 1.1) + rng.uniform(-0.05, 0.05)  # exposure differs between machines
    as_png = lambda a: (np.clip(a, 0, 1) * 255).round().astype(np.uint8)
    return as_png(img), infection.astype(np.uint8) * 255, lungs.astype(np.uint8) * 255


def _tree_files(out: Path, per_class: int) -> list[Path]:
    "Every file a synthetic tree of `per_class` images per class and split holds under `out`."
    return [out / DATASET_DIR / split / label / sub / synthetic_name(label, si * per_class + i + 1)
            for si, split in enumerate(SPLITS) for label in CLASSES for i in range(per_class) for sub in SUBDIRS.values()]


def _remove(files: list[Path], top: Path) -> None:
    "Delete `files`, then the folders under `top` they leave empty (a folder holding anything else stays)."
    for f in files:
        f.unlink(missing_ok=True)
    for folder in sorted((p for p in top.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True) + [top]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()


def write_synthetic(
    out: str | Path,  # the folder to hold "Infection Segmentation Data"
    per_class: int = 20,  # images per class in each split
    size: int = 256,  # image side in pixels
    seed: int = 0,
    force: bool = False,  # replace a tree an earlier `synth` wrote with other settings, or write beside other files
    progress: Callable[[Iterable, int], Iterable] | None = None,
) -> Path:
    "Write a synthetic tree in the exact COVID-QU-Ex layout; the same arguments give the same bytes."
    if per_class < 1 or not 32 <= size <= MAXIMUMS["img_size"]:
        raise CovfastError(f"--per-class must be >= 1 and --size between 32 and {MAXIMUMS['img_size']} (got {per_class}, {size})")
    if not 0 <= seed <= MAXIMUMS["seed"]:
        raise CovfastError(f"--seed must be between 0 and {MAXIMUMS['seed']} (got {seed})")
    out = Path(out).expanduser()
    target = out / DATASET_DIR
    params = {"per_class": per_class, "size": size, "seed": seed}
    if out.exists() and not out.is_dir():
        raise CovfastError(f"{out} is a file; pass a folder for the synthetic tree")
    if out.is_dir() and any(out.iterdir()):
        marker = out / MARKER
        if marker.is_file():
            try:
                made = json.loads(marker.read_text())
                old = _tree_files(out, made["per_class"])
            except (ValueError, KeyError, TypeError):
                raise CovfastError(f"{marker} is not the record covfast synth writes; choose another OUT") from None
            if made != params and not force:
                raise CovfastError(f"{target} already holds a synthetic tree made with other settings "
                                   f"({marker.read_text().strip()}); choose another OUT or add --force to replace it")
            _remove(old, target)  # only what that tree holds: anything else in OUT stays
        elif not force:
            raise CovfastError(f"{out} holds files covfast synth did not write; choose an empty or new OUT, or add --force "
                               f"to write the tree beside them (nothing of theirs is removed)")
        elif target.exists():
            raise CovfastError(f"{target} already exists and was not made by covfast synth; choose another OUT")
    jobs = [(s, c, i) for s in SPLITS for c in CLASSES for i in range(per_class)]
    it = progress(jobs, len(jobs)) if progress is not None else jobs
    for split, label, i in it:
        si, ci = SPLITS.index(split), CLASSES.index(label)
        rng = np.random.default_rng([seed, si, ci, i])  # per item, so the order of writing cannot matter
        arrays = synth_item(label, size, rng)
        name = synthetic_name(label, si * per_class + i + 1)
        for sub, arr in zip(SUBDIRS.values(), arrays):
            folder = target / split / label / sub
            folder.mkdir(parents=True, exist_ok=True)
            Image.fromarray(arr, mode="L").save(folder / name)
    (out / MARKER).write_text(json.dumps(params) + "\n")
    return out
