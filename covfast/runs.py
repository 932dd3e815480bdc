"""Run directory I/O: names, config.json, history.csv, atomic checkpoints, safe weight loading.

Torch and fastai are imported by the functions that need them: the CLI resolves a run (and refuses a wrong
name) with this module before any of them loads."""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import pickle
import platform
import shutil
import tempfile
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import torch

from . import __version__
from .errors import CovfastError
from .spec import RunSpec

__all__ = ["HISTORY_COLUMNS", "versions", "RunLock", "new_run_dir", "run_subdir", "read_run_config", "read_run", "finite_weights", "load_model_weights", "load_checkpoint", "resolve_run", "sha256", "write_json", "read_json", "read_history",
           "write_history", "atomic_save", "plain", "load_weights"]

HISTORY_COLUMNS = ["epoch", "train_loss", "valid_loss", "train_dice", "valid_dice_covid", "valid_dice_noncovid",
                   "valid_dice_normal", "valid_dice_mean", "valid_empty_left", "valid_score", "valid_auc", "valid_dice_lung", "lr", "seconds"]


def versions() -> dict[str, str]:
    "The versions a run was made with (config.json records them)."
    import fastai
    import timm
    import torch
    import torchvision

    return {"covfast": __version__, "fastai": fastai.__version__, "torch": torch.__version__,
            "torchvision": torchvision.__version__, "timm": timm.__version__, "python": platform.python_version()}


def new_run_dir(runs_dir: str | Path, name: str | None, arch_slug: str) -> Path:
    "Create runs_dir/name (default `<arch>-<YYYYmmdd-HHMMSS>`); an existing name is refused, never reused."
    if name is not None and not name.strip():
        raise CovfastError("--name is empty; give the run a name, or leave --name out for <arch>-<time>")
    name = name or f"{arch_slug}-{datetime.now():%Y%m%d-%H%M%S}"
    if "/" in name or name in (".", ".."):
        raise CovfastError(f"run name {name!r} must be a plain folder name")
    path = Path(runs_dir) / name
    if path.parent.exists() and not path.parent.is_dir():
        raise CovfastError(f"runs_dir {path.parent} is a file, not a folder; set runs_dir (settings.ini, "
                           f"COVFAST_RUNS_DIR) to a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.mkdir()
    except FileExistsError:
        if _stillborn(path):  # a run killed before its config.json was written: nothing in it to keep
            return path
        raise CovfastError(f"run directory {path} already exists; choose another --name, or --resume it") from None
    except OSError as e:
        raise CovfastError(f"cannot create run directory {path}: {e.strerror}; check runs_dir") from None
    return path


def _stillborn(path: Path) -> bool:
    "A run folder holding nothing but covfast's own leftovers (its lock, half-written temporary files): no run in it."
    return path.is_dir() and not path.is_symlink() and all(
        p.name == ".lock" or (p.name.startswith(".") and p.name.endswith(".tmp")) for p in path.iterdir())


class RunLock:
    """One writer per run directory: an OS-level lock (`fcntl.flock`) on `<run>/.lock`, held for the life
    of a training process and released by the OS when it ends, however it ends (a crash or a kill leaves
    no stale lock). The file records the holder's process id for the error a second writer gets."""

    def __init__(self, run_dir: str | Path):
        self.path = Path(run_dir) / ".lock"
        self._fd: int | None = None

    def acquire(self) -> "RunLock":
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 64, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise CovfastError(f"run {self.path.parent} is being written by process {holder}; wait for it to end "
                               f"(or stop it) before resuming, or train under another --name") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._fd = fd
        return self

    def release(self) -> None:
        if self._fd is not None:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def resolve_run(run: str | Path, runs_dir: str | Path = "runs") -> Path:
    """A run directory from its path or its name under `runs_dir`. A path of more than one part (runs/x, /a/b)
    is a path only: it is not looked for under `runs_dir` too (runs/runs/x)."""
    given = Path(run)
    places = [given] if given.is_absolute() or len(given.parts) > 1 else [given, Path(runs_dir) / str(run)]
    for path in places:
        if (path / "config.json").is_file():
            return path
    for path in places:
        if _stillborn(path):
            raise CovfastError(f"{path} holds no run: it was stopped before its config.json was written; train it again "
                               f"with --name {path.name}")
    raise CovfastError(f"no run directory {run!r} (looked for config.json in {' and '.join(map(str, places))})")


def run_subdir(run_dir: str | Path, *parts: str) -> Path:
    """A folder inside a run directory (eval/Test, report, predictions), made if needed; one that is a symbolic link,
    or leads out of the run directory, is refused: covfast writes a run's outputs inside it."""
    run_dir = Path(run_dir)
    path = run_dir.joinpath(*parts)
    for step in [run_dir.joinpath(*parts[:i + 1]) for i in range(len(parts))]:
        if step.is_symlink():
            raise CovfastError(f"{step} is a symbolic link; covfast writes a run's outputs inside the run directory: "
                               f"remove the link (or move what it points at into {run_dir})")
    path.mkdir(parents=True, exist_ok=True)
    if run_dir.resolve() not in path.resolve().parents:
        raise CovfastError(f"{path} leads out of {run_dir}; covfast writes a run's outputs inside the run directory")
    return path


def _atomic_write(path: Path, write) -> None:
    "Write through a temporary file in the same folder and rename: a kill never leaves half a file."
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        try:
            write(tmp)
        except RuntimeError as e:  # torch.save's writer says "file write failed", not OSError, when the disk fills
            if "write" not in str(e).lower():
                raise
            full = shutil.disk_usage(path.parent).free < (1 << 20)
            raise OSError(errno.ENOSPC if full else errno.EIO, "No space left on device" if full else
                          f"the file could not be written ({str(e).strip().splitlines()[-1][:80]})", str(path)) from None
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; run files get the user's umask like any other file
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def sha256(path: str | Path) -> str:
    "A file's SHA-256, read in 1 MB pieces."
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def write_json(path: str | Path, data: dict[str, Any]) -> None:
    _atomic_write(Path(path), lambda tmp: Path(tmp).write_text(json.dumps(data, indent=2, default=str) + "\n"))


def read_json(path: str | Path) -> dict[str, Any]:
    try:
        return json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError, UnicodeDecodeError, RecursionError) as e:
        first = str(e).splitlines()[0][:150] if str(e) else e.__class__.__name__
        raise CovfastError(f"cannot read {path}: {first}; it is not the JSON covfast writes") from None


def read_history(run_dir: str | Path) -> pd.DataFrame:
    "history.csv, with every column of HISTORY_COLUMNS (older runs lack some: NaN); checked: one line naming what is wrong."
    path = Path(run_dir) / "history.csv"
    if not path.is_file():
        return pd.DataFrame(columns=HISTORY_COLUMNS)
    fix = "restore it, or delete it to resume from checkpoint.pth (which holds the history too)"
    try:
        history = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, ValueError) as e:
        raise CovfastError(f"{path} is not a table covfast wrote ({e.__class__.__name__}); {fix}") from None
    if "epoch" not in history.columns:
        raise CovfastError(f"{path} has no epoch column; {fix}")
    history = history.reindex(columns=HISTORY_COLUMNS)
    numbers = history.apply(pd.to_numeric, errors="coerce")
    bad = [c for c in HISTORY_COLUMNS if (numbers[c].isna() & history[c].notna()).any()] + (
        ["epoch"] if numbers.epoch.isna().any() else [])
    if bad:
        raise CovfastError(f"{path}: column {bad[0]} holds values that are not numbers; {fix}")
    return numbers.astype({"epoch": int})


def write_history(run_dir: str | Path, history: pd.DataFrame) -> None:
    _atomic_write(Path(run_dir) / "history.csv", lambda tmp: history[HISTORY_COLUMNS].to_csv(tmp, index=False))


def atomic_save(obj: Any, path: str | Path) -> None:
    "torch.save through a temporary file and a rename."
    import torch

    _atomic_write(Path(path), lambda tmp: torch.save(obj, tmp))


def plain(obj: Any) -> Any:
    "Tensors, numbers, strings and plain containers only, so the file loads with weights_only=True."
    import torch

    if isinstance(obj, np.generic):  # numpy scalars from fastai's schedules (np.float64 is also a float)
        return obj.item()
    if isinstance(obj, torch.Tensor):  # fastai's TensorBase subclasses would need unpickling: store plain tensors
        return obj.detach().as_subclass(torch.Tensor) if type(obj) is not torch.Tensor else obj
    if obj is None or isinstance(obj, (bool, int, float, str)):
        return obj
    if isinstance(obj, dict):
        return {plain(k): plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)) or type(obj).__name__ == "L":  # fastcore's L holds fastai's hypers
        return [plain(v) for v in obj]
    raise TypeError(f"cannot store {type(obj).__name__} in a weights-only file")


def read_run_config(run_dir: str | Path) -> dict[str, Any]:
    "A run's config.json as written: its settings (`RunSpec.from_json` reads them) and what the run recorded."
    path = Path(run_dir) / "config.json"
    cfg = read_json(path)
    if not isinstance(cfg, dict):
        raise CovfastError(f"{path} holds {type(cfg).__name__}, not the object covfast writes; restore it from a "
                           f"backup or train the run again")
    return cfg


def read_run(run_dir: str | Path) -> tuple[RunSpec, dict[str, Any]]:
    "A run's settings (`RunSpec`, checked and upgraded from any covfast version) and its config.json record."
    cfg = read_run_config(run_dir)
    return RunSpec.from_json(cfg, Path(run_dir) / "config.json"), cfg


def finite_weights(state_dict: dict[str, torch.Tensor]) -> bool:
    "Whether every floating-point tensor of a state_dict is finite (no NaN, no inf)."
    import torch

    return all(bool(torch.isfinite(t).all()) for t in state_dict.values() if t.is_floating_point())


def load_model_weights(model: torch.nn.Module, state_dict: dict[str, torch.Tensor], path: str | Path) -> None:
    "Load weights read from `path` into `model`; non-finite weights, or weights of another shape of model, are refused in one line."
    if not finite_weights(state_dict):
        raise CovfastError(f"{path} holds non-finite weights (NaN or inf): the run diverged; train it again with a lower --lr")
    if hasattr(model, "unet") and state_dict and all(k.startswith("layers.") for k in state_dict):
        # a DynamicUnet saved bare, before covfast wrapped it for named outputs (runs made without the image head)
        state_dict = {f"unet.{k}": v for k, v in state_dict.items()}
    try:
        model.load_state_dict(state_dict)
    except RuntimeError as e:
        first = str(e).splitlines()[0] if str(e) else "mismatch"
        n = str(e).count("size mismatch") + str(e).count("Missing key") + str(e).count("Unexpected key")
        raise CovfastError(f"{path} does not fit the model its config.json describes ({first[:100]}; {n} problem(s)): "
                           f"the weights or config.json (arch, features, cls_weight) were changed by hand") from None


def load_weights(path: str | Path, map_location: str | torch.device = "cpu") -> Any:
    "Load a state_dict or checkpoint with weights_only=True: a file that would run code is refused."
    import torch

    path = Path(path)
    if not path.is_file():
        raise CovfastError(f"weights file {path} does not exist")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        found = next((line.strip() for line in str(e).splitlines() if "Unsupported global" in line), "")
        if not found:  # not a pickle of objects at all: text, an image, a truncated file
            raise CovfastError(f"cannot read weights {path}: it is not a weights file covfast wrote") from None
        raise CovfastError(f"refusing {path}: it is not a plain weights file; it holds Python objects that "
                           f"would run code when unpickled ({found[:150]})") from None
    except (RuntimeError, EOFError, OSError, ValueError, IndexError, KeyError, AttributeError) as e:
        # torch.load's errors for a file that is not a weights file (text, a truncated zip, a link to either)
        first = str(e).splitlines()[0][:150] if str(e) else e.__class__.__name__
        raise CovfastError(f"cannot read weights {path}: {first}; it is not a weights file covfast wrote") from None


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    "A run's checkpoint.pth (weights_only), checked for what resuming needs: weights, optimizer state and a whole epoch."
    ckpt = load_weights(path)
    missing = [k for k in ("model", "opt", "epoch") if not isinstance(ckpt, dict) or k not in ckpt]
    if missing or isinstance(ckpt["epoch"], bool) or not isinstance(ckpt["epoch"], int) or ckpt["epoch"] < 0:
        what = f"lacks {', '.join(missing)}" if missing else f"has epoch {ckpt['epoch']!r}, not a whole number"
        raise CovfastError(f"{path} {what}: it is not a checkpoint covfast wrote; delete it to train the run again from "
                           f"epoch 1 under another --name")
    return ckpt
