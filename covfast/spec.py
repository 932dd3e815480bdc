"""`RunSpec`: every setting of a run, in one frozen dataclass.

Built once from the flags given, the COVFAST_* environment and settings.ini (`RunSpec.from_flags`), written
to config.json (`to_json`) and read back by `RunSpec.from_json`, the one place that upgrades the config of
a run made by an older covfast. `train`, `lr-find`, the learner factory and the loss take it whole, so
`lr-find` builds the model `train` fits, and `--resume` refuses any flag that differs from the run's own
(`check_resume`). Where a run goes (runs_dir, --name) and what machine it runs on (--device, --workers)
are not part of it: a run may be resumed on another machine.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Mapping

from .config import CLASSES, DEFAULT_CLS_WEIGHT, DEFAULT_LUNG_WEIGHT, MAXIMUMS, MINIMUMS, Config, parse_classes, parse_lr
from .dataset import canonical_root
from .errors import CovfastError
from .archs import ARCHS, DEFAULT_FEATURES, ENSEMBLE, arch_entry, check_arch

__all__ = ["FLAGS", "RunSpec"]

# The flag that sets each field, as errors name it (gate_topk and retired have none: they come from old runs)
FLAGS: dict[str, str] = {
    "arch": "ARCH", "data_root": "--data", "img_size": "--size", "bs": "--bs", "epochs": "--epochs", "lr": "--lr",
    "classes": "--classes", "seed": "--seed", "precision": "--precision", "pretrained": "--pretrained/--no-pretrained",
    "features": "--features", "dice_weight": "--dice-weight", "cls_weight": "--cls-weight",
    "lung_weight": "--lung-weight", "augment": "--augment/--no-augment", "keep_checkpoint": "--keep-checkpoint",
}
# config.json keys that differ from the field's name: the file records beside them what the run got
# ("pretrained": whether ImageNet weights were used, "precision": the mode it ran in)
_JSON_KEYS = {"pretrained": "pretrained_requested", "precision": "precision_requested"}
_PRECISIONS = ("auto", "fp32", "bf16")


@dataclass(frozen=True)
class RunSpec:
    "Every setting of a run; the defaults are covfast's packaged ones (settings.ini and flags override them)."
    arch: str  # attention-unet, resnet18/34/50/101 or timm/NAME; 'ensemble' for a run made by covfast ensemble
    data_root: str = Config.data_path  # the dataset root (train resolves it to the folder holding the splits)
    img_size: int = Config.img_size  # side of the square the X-rays are resized to
    bs: int = Config.bs
    epochs: int = Config.epochs
    lr: str = Config.lr  # a peak learning rate, or "auto" (lr_find's valley)
    classes: tuple[str, ...] = CLASSES
    seed: int = Config.seed
    precision: str = Config.precision  # auto, fp32 or bf16, as asked (config.json records what it came to)
    pretrained: bool = True  # ImageNet encoder weights, as asked (config.json records whether they were had)
    features: tuple[int, ...] | None = None  # channel widths of an arch that takes them (attention-unet; default DEFAULT_FEATURES); None for others
    dice_weight: float = 1.0  # the Dice term's weight beside cross-entropy's 1
    cls_weight: float = DEFAULT_CLS_WEIGHT  # the image-level head's BCE weight; 0: no head
    lung_weight: float = DEFAULT_LUNG_WEIGHT  # the lung output's loss weight; 0: no lung output
    augment: bool = True  # `xray_augmentations` on the training batches
    keep_checkpoint: bool = False  # keep checkpoint.pth once the run is complete
    gate_topk: float = 0.0  # the pixel-evidence gate of runs made before the image head (no flag sets it)
    retired: tuple[str, ...] = ()  # settings of an old run that covfast no longer trains with (it cannot be resumed)

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            try:
                object.__setattr__(self, f.name, _normal(f.name, value, self.arch))
            except ValueError as e:
                if isinstance(e, CovfastError):  # check_arch, parse_lr, parse_classes say it all themselves
                    raise
                raise CovfastError(f"{f.name} {value!r} {e}") from None
        takes_features = self.arch != ENSEMBLE and arch_entry(self.arch).features
        if self.features is None and takes_features:
            object.__setattr__(self, "features", DEFAULT_FEATURES)
        if self.features is not None and not takes_features:
            takers = ", ".join(a.name for a in ARCHS.values() if a.features)
            raise CovfastError(f"--features sets the widths of {takers}; {self.arch} takes its widths from its encoder")

    @property
    def image_head(self) -> bool:
        "Whether the model has the image-level head (its `covid` output)."
        return self.cls_weight > 0

    @property
    def lungs(self) -> bool:
        "Whether the model outlines the lungs too (its `lung` output)."
        return self.lung_weight > 0

    def replace(self, **changes: Any) -> "RunSpec":
        "A copy with `changes` (field names) set; None values are left out (a flag not given)."
        return dataclasses.replace(self, **{k: v for k, v in changes.items() if v is not None})

    @classmethod
    def from_flags(cls, arch: str, settings: Config | None = None, **flags: Any) -> "RunSpec":
        """The spec of the flags given (field names; None: not given) over `settings` (settings.ini and COVFAST_*,
        as `config.load_config` reads them) over the packaged defaults."""
        settings = settings or Config()
        unknown = set(flags) - {f.name for f in fields(cls)}
        if unknown:
            raise TypeError(f"RunSpec.from_flags() got an unknown setting {sorted(unknown)[0]!r}")
        base = cls(arch, data_root=settings.data_path, img_size=settings.img_size, bs=settings.bs, epochs=settings.epochs,
                   lr=settings.lr, classes=settings.classes, seed=settings.seed, precision=settings.precision)
        for name, value in flags.items():
            if value is not None:
                try:
                    _normal(name, value, base.arch)
                except CovfastError:
                    raise
                except ValueError as e:
                    raise CovfastError(f"{FLAGS[name].split('/')[0]} {value}: {e}") from None
        return base.replace(**flags)

    def to_json(self) -> dict[str, Any]:
        "The fields as config.json holds them (lists for tuples; the requested pretrained and precision under their own keys)."
        out = {}
        for f in fields(self):
            if f.name == "retired":
                continue
            value = getattr(self, f.name)
            out[_JSON_KEYS.get(f.name, f.name)] = list(value) if isinstance(value, tuple) else value
        return out

    @classmethod
    def from_json(cls, cfg: Mapping[str, Any], path: str | Path = "config.json") -> "RunSpec":
        """The spec of a run's config.json, from any covfast version: the one place an old run's settings are
        upgraded. A missing or malformed field is one error naming `path`, the field and the fix."""
        if not isinstance(cfg, Mapping):
            raise CovfastError(f"{path} holds {type(cfg).__name__}, not the object covfast writes; restore it or train the run again")
        missing = [k for k in ("arch", "data_root", "img_size", "bs", "epochs", "classes") if k not in cfg]
        if missing:
            raise CovfastError(f"{path} lacks {', '.join(missing)}: it was not written by covfast train or was edited; "
                               f"restore it from a backup or train the run again")
        values = {f.name: cfg[_JSON_KEYS.get(f.name, f.name)] for f in fields(cls)
                  if _JSON_KEYS.get(f.name, f.name) in cfg and f.name != "retired"}
        # config.json of older runs: what each setting was before it was recorded
        if "pretrained_requested" not in cfg:
            values["pretrained"] = cfg.get("pretrained", True)
        if "precision_requested" not in cfg:  # before --precision: fp32 on CPU, mixed precision on CUDA (--fp16)
            values["precision"] = "auto" if str(cfg.get("device", "")).startswith("cuda") and cfg.get("fp16", True) else "fp32"
        values.setdefault("cls_weight", 0.0)  # before the image head: no head
        values.setdefault("lung_weight", 0.0)  # before the lung output: none
        values.setdefault("keep_checkpoint", True)  # before --keep-checkpoint every run kept it
        retired = []
        if cfg.get("empty_weight"):  # the pixel-evidence loss term, trained before the image head
            retired.append(f"empty_weight={cfg['empty_weight']}")
        try:
            return cls(**values, retired=tuple(retired))
        except CovfastError as e:
            raise CovfastError(f"{path}: {e}; restore the file or train the run again") from None

    def differences(self, given: Mapping[str, Any]) -> list[str]:
        "The flags among `given` (field names; None: not given) whose values differ from this spec's, as 'FLAG VALUE (the run has V)'."
        unknown = set(given) - {f.name for f in fields(self)}
        if unknown:
            raise TypeError(f"unknown setting {sorted(unknown)[0]!r}")
        out = []
        for name, value in given.items():
            if value is None:
                continue
            mine = getattr(self, name)
            if name == "data_root":  # the same data, however its root is written
                value, mine = canonical_root(value), canonical_root(mine)
            try:
                normal = _normal(name, value, self.arch)
            except CovfastError:
                raise
            except ValueError as e:
                raise CovfastError(f"{FLAGS[name].split('/')[0]} {value}: {e}") from None
            if normal != mine:
                shown = lambda v: ",".join(map(str, v)) if isinstance(v, tuple) else str(v)  # noqa: E731
                flag = FLAGS[name].split("/")[0 if value is True or not isinstance(value, bool) else 1]
                out.append(f"{flag}{'' if isinstance(value, bool) else ' ' + shown(value)} (the run has {shown(mine)})")
        return out

    def check_resume(self, run_dir: str | Path, given: Mapping[str, Any]) -> None:
        "Refuse to resume this run with any flag that differs from its own settings, or a run covfast no longer trains."
        if self.arch == ENSEMBLE:
            raise CovfastError(f"{run_dir} is an ensemble of trained runs (covfast ensemble): it is not trained; resume "
                               f"its members instead")
        if given.get("arch") is not None and check_arch(given["arch"]) != self.arch:
            raise CovfastError(f"run {run_dir} trained {self.arch}, not {given['arch']}; use covfast train {self.arch} "
                               f"--resume {run_dir}")
        if self.retired:
            raise CovfastError(f"run {run_dir} was trained with {', '.join(self.retired)}, which covfast no longer trains "
                               f"with; it still evaluates and predicts, but cannot be resumed: train a new run")
        changed = self.differences({k: v for k, v in given.items() if k != "arch"})
        if changed:
            raise CovfastError(f"--resume continues {run_dir} with its own settings (config.json); {'; '.join(changed)}: "
                               f"leave {'it' if len(changed) == 1 else 'them'} out, or train a new run")


_INTS = {"img_size", "bs", "epochs", "seed"}
_FLOATS = {"dice_weight", "cls_weight", "lung_weight", "gate_topk"}
_BOOLS = {"pretrained", "augment", "keep_checkpoint"}


def _normal(name: str, value: Any, arch: str) -> Any:
    "A field's value in its one form (tuples, canonical names); a ValueError saying what is wrong with it otherwise."
    if name == "arch":
        if not isinstance(value, str):
            raise ValueError("is not an architecture name")
        return value if value == ENSEMBLE else check_arch(value)  # an ensemble's spec (covfast ensemble writes it)
    if name in _INTS:
        if isinstance(value, str) and value.strip().lstrip("-").isdigit():
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError("is not an integer")
        low, high = MINIMUMS.get(name, 0), MAXIMUMS.get(name)
        if value < low or (high is not None and value > high):
            raise ValueError(f"must be an integer >= {low}" + (f" and <= {high}" if high is not None else ""))
        return value
    if name in _FLOATS:
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise ValueError("must be a finite number >= 0")
        return float(value)
    if name in _BOOLS:
        if not isinstance(value, bool):
            raise ValueError("is not true or false")
        return value
    if name == "lr":
        if isinstance(value, bool) or not isinstance(value, (str, int, float)):
            raise ValueError("is neither a number nor 'auto'")
        parse_lr(str(value))
        return str(value).strip()
    if name == "classes":
        if not isinstance(value, (str, list, tuple)) or any(not isinstance(c, str) for c in ([] if isinstance(value, str) else value)):
            raise ValueError("is not a list of class names")
        classes = parse_classes(value)
        if "COVID-19" not in classes:
            raise ValueError("leaves out COVID-19, the infection the models outline; add it (e.g. COVID-19,Non-COVID)")
        return classes
    if name == "precision":
        if value not in _PRECISIONS:
            raise ValueError(f"is not one of {', '.join(_PRECISIONS)}")
        return value
    if name == "features":
        if value is None:
            return None
        if isinstance(value, str):
            try:
                value = tuple(int(v) for v in value.split(","))
            except ValueError:
                value = ()
        if (not isinstance(value, (list, tuple)) or len(value) < 2
                or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value)):
            raise ValueError("must be two or more positive integers, e.g. 16,32,64,128,256")
        return tuple(value)
    if name == "data_root":
        if not isinstance(value, (str, Path)):
            raise ValueError("is not a folder")
        return str(value)
    if name == "retired":
        return tuple(value)
    raise AssertionError(name)
