"""Scan a COVID-QU-Ex tree into a DataFrame, count it, and check every file in it."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import pandas as pd
from PIL import Image

from .config import CLASSES
from .errors import CovfastError, format_problems

__all__ = ["SPLITS", "SUBDIRS", "DATASET_DIR", "resolve_root", "canonical_root", "present_splits", "scan_tree", "find_problems",
           "dataset_summary", "check_tree", "read_png"]

SPLITS: tuple[str, ...] = ("Train", "Val", "Test")
# column name -> folder name inside each split/class folder
SUBDIRS: dict[str, str] = {"image": "images", "infection_mask": "infection masks", "lung_mask": "lung masks"}
DATASET_DIR = "Infection Segmentation Data"
COLUMNS = ["image", "infection_mask", "lung_mask", "split", "label", "name"]


def resolve_root(root: str | Path) -> Path:
    "The folder whose children are the split folders, from any of the three accepted root forms."
    root = Path(root).expanduser()
    if root.is_file():
        raise CovfastError(f"data root {root} is a file, not a folder; pass --data with the folder that holds '{DATASET_DIR}'")
    if not root.is_dir():
        raise CovfastError(f"data root {root} does not exist; pass --data with the folder that holds '{DATASET_DIR}'")
    if (root / DATASET_DIR).is_dir():
        return root / DATASET_DIR
    children = {p.name.lower() for p in root.iterdir() if p.is_dir()}
    if children & {s.lower() for s in SPLITS}:
        return root
    raise CovfastError(f"{root} holds neither '{DATASET_DIR}' nor Train/Val/Test folders; "
                       f"pass --data with the COVID-QU-Ex download folder")


def canonical_root(root: str | Path) -> str:
    """A data root in one form, whichever accepted form names it: the folder holding the splits, resolved (the
    path as given, resolved, where there is no such tree). Two roots name the same data when these are equal."""
    try:
        return str(resolve_root(root).resolve())
    except CovfastError:
        return str(Path(root).expanduser().resolve())


def _dirs(folder: Path) -> dict[str, Path]:
    return {p.name: p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")}


def _find(folder: Path, name: str, case_insensitive: bool = False) -> Path | None:
    "The sub-folder `name` of `folder` (exact name unless `case_insensitive`), or None."
    dirs = _dirs(folder)
    if name in dirs:
        return dirs[name]
    if case_insensitive:
        match = [p for n, p in dirs.items() if n.lower() == name.lower()]
        if match:
            return match[0]
    return None


def _missing(folder: Path, name: str, what: str, expected: Iterable[str]) -> str:
    stray = sorted(n for n in _dirs(folder) if n.lower() not in {e.lower() for e in expected})
    hint = f" (found unexpected {', '.join(repr(s) for s in stray)}: rename it to {name!r})" if stray else ""
    return f"missing {what} folder {folder / name}{hint}"


def _pngs(folder: Path, problems: list[str]) -> dict[str, Path]:
    "PNG files of `folder` by name; any other file is a problem (hidden files are not data)."
    out = {}
    for p in folder.iterdir():
        if p.name.startswith("."):
            continue
        if p.is_file() and p.suffix.lower() == ".png":
            out[p.name] = p
        else:
            problems.append(f"unexpected {'folder' if p.is_dir() else 'file'} {p}: only PNG files belong here")
    return out


def present_splits(root: str | Path) -> tuple[str, ...]:
    "The split folders (Train, Val, Test, any case) that the tree at `root` holds."
    base = resolve_root(root)
    return tuple(s for s in SPLITS if _find(base, s, case_insensitive=True) is not None)


def find_problems(root: str | Path, splits: Iterable[str] | None = None,
                  classes: Iterable[str] = CLASSES) -> tuple[pd.DataFrame, list[str]]:
    """Scan the tree without opening files: the paired items found, and every structural problem.

    Only `splits` (default: the split folders present; none is a problem) and `classes` are looked at,
    so a labelled set holding just a Test folder can be scored, and training needs only Train and Val."""
    base = resolve_root(root)
    problems: list[str] = []
    rows = []
    if splits is None:
        splits = present_splits(base)
        stray = sorted(n for n in _dirs(base) if n.lower() not in {s.lower() for s in SPLITS})
        if stray:  # most likely a misnamed split: say so rather than skip it
            problems.append(f"unexpected folder {base / stray[0]}: split folders are named Train, Val and Test; rename it"
                            + (f" (and {len(stray) - 1} more)" if len(stray) > 1 else ""))
        elif not splits:
            problems.append(f"no Train, Val or Test folder in {base}")
    for split in splits:
        split_dir = _find(base, split, case_insensitive=True)
        if split_dir is None:
            problems.append(_missing(base, split, "split", SPLITS))
            continue
        for label in classes:
            class_dir = _find(split_dir, label)
            if class_dir is None:
                problems.append(_missing(split_dir, label, "class", CLASSES))
                continue
            files, complete = {}, True
            for col, sub in SUBDIRS.items():
                sub_dir = _find(class_dir, sub)
                if sub_dir is None:
                    problems.append(_missing(class_dir, sub, "files", SUBDIRS.values()))
                    files[col], complete = {}, False
                else:
                    files[col] = _pngs(sub_dir, problems)
            names = set().union(*(f.keys() for f in files.values()))
            if not names and complete:
                problems.append(f"empty class folder {class_dir}: no images")
            for name in sorted(names):
                have = {col: f.get(name) for col, f in files.items()}
                if all(have.values()):
                    rows.append({**{c: str(p) for c, p in have.items()}, "split": split, "label": label, "name": name})
                    continue
                found = next(p for p in have.values() if p is not None)
                for col, p in have.items():
                    if p is None:
                        problems.append(f"unpaired file {found}: missing {class_dir / SUBDIRS[col] / name}")
    return pd.DataFrame(rows, columns=COLUMNS), problems


def scan_tree(root: str | Path, splits: Iterable[str] | None = None, classes: Iterable[str] = CLASSES) -> pd.DataFrame:
    """One row per image (image, infection_mask, lung_mask, split, label, name) of `splits` (default: those
    present) and `classes`; raises on any structural problem there."""
    df, problems = find_problems(root, splits, classes)
    if problems:
        raise CovfastError(format_problems(problems))
    return df


def dataset_summary(df: pd.DataFrame) -> pd.DataFrame:
    "Image counts split x class with totals (the reference study's Table I)."
    table = pd.crosstab(pd.Categorical(df.split, SPLITS), pd.Categorical(df.label, CLASSES),
                        margins=True, margins_name="Total", dropna=False)
    table.index.name, table.columns.name = "split", None
    return table


def read_png(path: str | Path) -> np.ndarray:
    "Decode a PNG fully (a truncated file fails here, not later) as a uint8 or uint16 array; another format is an error."
    with Image.open(path) as im:
        if im.format != "PNG":
            raise ValueError(f"it is a {im.format} file named .png; convert it to PNG")
        im.load()
        return np.asarray(im)


def _check_item(row: dict) -> list[str]:
    "Every problem of one image and its two masks."
    problems, arrays = [], {}
    for col in SUBDIRS:
        try:
            arrays[col] = read_png(row[col])
        except Exception as e:  # PIL raises many types for a damaged file
            problems.append(f"unreadable PNG {row[col]}: {e}; re-download it")
    image = arrays.get("image")
    for col in ("infection_mask", "lung_mask"):
        mask = arrays.get(col)
        if mask is None:
            continue
        if image is not None and mask.shape[:2] != image.shape[:2]:
            problems.append(f"size mismatch {row[col]}: mask {mask.shape[1]}x{mask.shape[0]} "
                            f"but image {image.shape[1]}x{image.shape[0]}")
        values = np.unique(mask)
        bad = values[(values != 0) & (values != 255)]
        if bad.size:
            problems.append(f"non-binary mask {row[col]}: holds {', '.join(map(str, bad[:5]))} besides 0 and 255")
        elif col == "infection_mask" and (row["label"] == "COVID-19") != bool(values.max(initial=0)):
            state = "empty" if row["label"] == "COVID-19" else "non-empty"
            problems.append(f"{state} infection mask {row[col]} in class {row['label']}")
    return problems


def check_tree(
    root: str | Path,
    progress: Callable[[Iterable, int], Iterable] | None = None,  # wraps the item iterator, e.g. a progress bar
    threads: int = 4,  # PNG decoding releases the GIL
    splits: Iterable[str] | None = None,  # default: the split folders present
    classes: Iterable[str] = CLASSES,
) -> tuple[pd.DataFrame, list[str]]:
    "Open every file of `splits` x `classes`: structural and per-file problems, and the items found."
    df, problems = find_problems(root, splits, classes)
    rows = df.to_dict("records")
    with ThreadPoolExecutor(threads) as pool:
        results = pool.map(_check_item, rows)
        if progress is not None:
            results = progress(results, len(rows))
        for found in results:
            problems.extend(found)
    return df, problems
