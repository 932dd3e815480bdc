"""Run defaults: packaged defaults < ./settings.ini < COVFAST_* environment < CLI flags."""

from __future__ import annotations

import configparser
import dataclasses
import math
import os
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .errors import CovfastError
# the largest X-ray covfast reads (PNG, JPEG or DICOM), defined where the X-ray readers live
from .portable import MAX_PIXELS

__all__ = ["CLASSES", "DEFAULT_CLS_WEIGHT", "DEFAULT_LUNG_WEIGHT", "MINIMUMS", "MAXIMUMS", "MAX_PIXELS", "Config", "load_config", "parse_classes", "parse_lr", "SETTINGS_SECTION"]

# The three class folders of COVID-QU-Ex, in the dataset's order.
CLASSES: tuple[str, ...] = ("COVID-19", "Non-COVID", "Normal")
# covfast trains on all three by default (Normal X-rays are most of what a user sees); `--classes
# COVID-19,Non-COVID` is the reference study's set, for comparisons with it.
DEFAULT_CLASSES: tuple[str, ...] = CLASSES
# Weight of the image-level head's BCE beside the segmentation loss. 0.3 rather than 1: on Val (128 px,
# 6 epochs, from scratch) the ResNet34 U-Net scored better on every figure with it, and the Attention
# U-Net kept more COVID-19 Dice for some empty masks (docs/results.md, "A lighter head loss").
DEFAULT_CLS_WEIGHT: float = 0.3
# Weight of the lung output's loss (cross-entropy + dice_weight x Dice on the lung masks) beside the infection's.
DEFAULT_LUNG_WEIGHT: float = 1.0
SETTINGS_SECTION = "covfast"


@dataclass(frozen=True)
class Config:
    "Every run default a command may need; the packaged defaults are the field defaults."
    data_path: str = "data/covidqu"
    # folder that holds the run directories
    runs_dir: str = "runs"
    img_size: int = 256
    bs: int = 8
    epochs: int = 30
    # a learning rate, or "auto" for lr_find's valley
    lr: str = "1e-3"
    classes: tuple[str, ...] = DEFAULT_CLASSES
    seed: int = 42
    # 0 keeps decoding in the main process, where the in-memory PNG cache survives across epochs
    num_workers: int = 0
    # auto (bf16 where the CPU or GPU runs it fast, else fp32 or fp16 on a GPU), fp32 or bf16
    precision: str = "auto"

    def replace(self, **kwargs: Any) -> "Config":
        "A copy with `kwargs` set; `None` values are ignored (an option the user did not give)."
        return dataclasses.replace(self, **{k: v for k, v in kwargs.items() if v is not None})

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["classes"] = list(self.classes)
        return d


def parse_classes(value: str | tuple[str, ...] | list[str]) -> tuple[str, ...]:
    "`'all'`, a comma-separated string or a sequence of class names -> a tuple in dataset order."
    names = value.split(",") if isinstance(value, str) else list(value)
    names = [n.strip() for n in names if n.strip()]
    if names == ["all"]:
        return CLASSES
    lookup = {c.lower(): c for c in CLASSES}
    bad = [n for n in names if n.lower() not in lookup]
    if bad or not names:
        raise CovfastError(f"unknown class {bad[0] if bad else value!r}: use 'all' or a comma-separated subset of {','.join(CLASSES)}")
    chosen = {lookup[n.lower()] for n in names}
    return tuple(c for c in CLASSES if c in chosen)


def parse_lr(value: str | float) -> float | None:
    "A learning rate as a float, or `None` for 'auto' (run lr_find first)."
    if isinstance(value, str) and value.strip().lower() == "auto":
        return None
    try:
        lr = float(value)
    except ValueError:
        raise CovfastError(f"learning rate {value!r} is neither a number nor 'auto'") from None
    if not (lr > 0 and math.isfinite(lr)):
        raise CovfastError(f"learning rate {value!r} must be a positive finite number (e.g. 1e-3), or 'auto'")
    return lr


# The smallest value of each integer setting, the same for a flag, COVFAST_* and settings.ini
# (img_size: the Attention U-Net's four poolings need 16 px).
MINIMUMS: dict[str, int] = {"img_size": 16, "bs": 1, "epochs": 1, "num_workers": 0, "seed": 0}
# The largest, where one is needed: 4096 px is 16 times COVID-QU-Ex's 256 (one such batch of 8 is 1.6 GB of
# input alone); a larger side fails deep inside torch (OverflowError, "array is too big")
MAXIMUMS: dict[str, int] = {"img_size": 4096, "seed": 2**32 - 1}  # seed: the largest NumPy and torch both accept


def _convert(name: str, raw: str, source: str) -> Any:
    "Parse the string `raw` for field `name`; errors name where the value came from."
    kind = {f.name: f.type for f in fields(Config)}[name]
    try:
        if kind == "int":
            value = int(raw)
            if value < MINIMUMS.get(name, 0):
                raise CovfastError(f"{name}={raw!r} must be an integer >= {MINIMUMS.get(name, 0)}")
            if name in MAXIMUMS and value > MAXIMUMS[name]:
                raise CovfastError(f"{name}={raw!r} must be an integer <= {MAXIMUMS[name]}")
            return value
        if name == "classes":
            return parse_classes(raw)
        if name == "lr":
            parse_lr(raw)
        if name == "precision" and raw.strip() not in ("auto", "fp32", "bf16"):
            raise CovfastError(f"precision={raw!r} is not one of auto, fp32, bf16")
        return raw.strip()
    except ValueError as e:
        if isinstance(e, CovfastError):
            raise CovfastError(f"{source}: {e}") from None
        raise CovfastError(f"{source}: {name}={raw!r} is not a valid {'positive integer' if kind == 'int' else 'value'}") from None


def load_config(
    settings: str | Path | None = "settings.ini",  # the settings file; a missing file is skipped
    env: Mapping[str, str] | None = None,  # the environment to read COVFAST_* from (default os.environ)
    **overrides: Any,  # CLI flags; None means "not given"
) -> Config:
    "The run defaults with the precedence CLI flag > COVFAST_* environment > settings.ini > packaged."
    env = os.environ if env is None else env
    names = [f.name for f in fields(Config)]
    values: dict[str, Any] = {}
    if settings is not None and Path(settings).is_file():
        parser = configparser.ConfigParser()
        try:
            parser.read(settings)
        except configparser.Error as e:
            raise CovfastError(f"{settings}: cannot parse ({e.__class__.__name__}); fix the file or delete it") from None
        if parser.has_section(SETTINGS_SECTION):
            for key, raw in parser.items(SETTINGS_SECTION):
                if key not in names:
                    raise CovfastError(f"{settings}: unknown setting {key!r} in [{SETTINGS_SECTION}]; known: {', '.join(names)}")
                values[key] = _convert(key, raw, str(settings))
    for key in names:
        var = f"COVFAST_{key.upper()}"
        if var in env:
            values[key] = _convert(key, env[var], f"environment {var}")
    for key, value in overrides.items():
        if key not in names:
            raise TypeError(f"load_config() got an unknown setting {key!r}")
        if value is not None:
            values[key] = _convert(key, str(value) if not isinstance(value, (tuple, list)) else ",".join(value), f"--{key.replace('_', '-')}")
    return Config(**values)
