"""Run directory I/O: names, config.json, history.csv, atomic checkpoints, safe weight loading."""

from __future__ import annotations

import json
import os
import pickle
import platform
import tempfile
from datetime import datetime
from pathlib import Path
from typing import Any

import fastai
import numpy as np
import pandas as pd
import timm
import torch
import torchvision

from . import __version__
from .errors import CovfastError

__all__ = ["HISTORY_COLUMNS", "CALIBRATION_FILE", "versions", "new_run_dir", "resolve_run", "write_json", "read_json", "read_history",
           "write_history", "atomic_save", "plain", "load_weights"]

HISTORY_COLUMNS = ["epoch", "train_loss", "train_dice", "valid_loss", "valid_dice_covid",
                   "valid_dice_noncovid", "valid_dice_mean", "lr", "seconds", "valid_dice_normal", "valid_auc"]
# written by `covfast calibrate`, read by `inference.load_run`: the image-level decision's threshold
CALIBRATION_FILE = "calibration.json"


def versions() -> dict[str, str]:
    "The versions a run was made with (config.json records them)."
    return {"covfast": __version__, "fastai": fastai.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "python": platform.python_version()}


def new_run_dir(runs_dir: str | Path, name: str | None, arch_slug: str) -> Path:
    "Create runs_dir/name (default `<arch>-<YYYYmmdd-HHMMSS>`); an existing name is refused, never reused."
    name = name or f"{arch_slug}-{datetime.now():%Y%m%d-%H%M%S}"
    if not name or "/" in name or name in (".", ".."):
        raise CovfastError(f"run name {name!r} must be a plain folder name")
    path = Path(runs_dir) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        path.mkdir()
    except FileExistsError:
        raise CovfastError(f"run directory {path} already exists; choose another --name, or --resume it") from None
    return path


def resolve_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    "A run directory from its path or its name under `runs_dir`."
    for path in (Path(run), Path(runs_dir) / str(run)):
        if (path / "config.json").is_file():
            return path
    raise CovfastError(f"no run directory {run!r} (looked for config.json in {Path(run)} and {Path(runs_dir) / str(run)})")


def _atomic_write(path: Path, write) -> None:
    "Write through a temporary file in the same folder and rename: a kill never leaves half a file."
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def read_json(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CovfastError(f"cannot read {path}: {e}") from None


def read_history(run_dir: str | Path) -> pd.DataFrame:
    "history.csv, with every column of HISTORY_COLUMNS (older runs lack the last ones: NaN)."
    path = Path(run_dir) / "history.csv"
    return pd.read_csv(path).reindex(columns=HISTORY_COLUMNS) if path.is_file() else pd.DataFrame(columns=HISTORY_COLUMNS)


def write_history(run_dir: str | Path, history: pd.DataFrame) -> None:
    _atomic_write(Path(run_dir) / "history.csv", lambda tmp: history[HISTORY_COLUMNS].to_csv(tmp, index=False))


def atomic_save(obj: Any, path: str | Path) -> None:
    "torch.save through a temporary file and a rename."
    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def plain(obj: Any) -> Any:
    "Tensors, numbers, strings and plain containers only, so the file loads with weights_only=True."
    if isinstance(obj, np.generic):  # numpy scalars from fastai's schedules (np.float64 is also a float)
        return obj.item()
    if isinstance(obj, torch.Tensor) or obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "L":  # fastcore's L holds fastai's hypers
        return [plain(v) for v in obj]
    raise TypeError(f"cannot store {type(obj).__name__} in a weights-only file")


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    "Load a state_dict or checkpoint with weights_only=True: a file that would run code is refused."
    path = Path(path)
    if not path.is_file():
        raise CovfastError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
        raise CovfastError(f"refusing {path}: it is not a plain weights file; it holds Python objects that "
                           f"would run code when unpickled ({found[:150] or 'weights_only load failed'})") from None
    except (RuntimeError, EOFError, OSError) as e:
        raise CovfastError(f"cannot read weights {path}: {str(e).splitlines()[0][:150]}") from None
