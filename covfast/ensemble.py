"""An ensemble: a run made of trained runs, whose outputs are the mean of its members' probabilities.

`make_ensemble` writes a run directory whose config.json names its members (their paths and their model.pth
SHA-256) and whose `RunSpec` has the arch 'ensemble'; it holds no weights of its own. `load_run` builds its
`EnsembleModel` from the members' own weights, refusing a member whose model.pth changed since, so every
command that takes a run (calibrate, evaluate, report, compare, predict, serve, show_results) takes an ensemble.

What the model computes, per output: each member sees the X-ray at its own input size, its outputs become
probabilities (softmax over the infection and lung channels, the sigmoid of the image logit), the maps are
resized (bilinear) to the ensemble's grid (the largest member's input size) and averaged. It returns the means
as logits (log-probabilities; the image logit of the mean probability), so covfast's activations give the mean
probabilities back and the run's decision reads them like any model's.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from .archs import ENSEMBLE
from .dataset import canonical_root
from .errors import CovfastError
from .outputs import ModelOutput, activate, model_output
from .runs import (load_model_weights, load_weights, new_run_dir, read_run, resolve_run, sha256, versions,
                   write_json)
from .spec import RunSpec

__all__ = ["EnsembleModel", "Member", "make_ensemble", "ensemble_members", "ensemble_model", "weights_digest"]

# a probability is clamped to [EPS, 1 - EPS] before its log: a member that is certain must not give -inf
EPS = 1e-7


@dataclass(frozen=True)
class Member:
    "One member of an ensemble: its run directory, settings and the SHA-256 its model.pth had when the ensemble was made."
    dir: Path
    spec: RunSpec
    sha256: str


def as_logits(probs: dict[str, torch.Tensor]) -> ModelOutput:
    "Logits whose activation gives `probs` back: log-probabilities, and the image logit log(p / (1 - p))."
    return model_output(**{n: torch.logit(p, eps=EPS) if n == "covid" else p.clamp(EPS, 1.0).log()
                           for n, p in probs.items()})


class EnsembleModel(nn.Module):
    "The mean of its members' probabilities (see the module's docstring), returned as logits."

    def __init__(self, members: list[nn.Module], sizes: list[int], outputs: tuple[str, ...]):
        super().__init__()
        self.members = nn.ModuleList(members)
        self.sizes = list(sizes)
        self.outputs = tuple(outputs)  # the outputs every member has: the ones the ensemble averages

    def forward(self, x: torch.Tensor) -> ModelOutput:
        grid = tuple(x.shape[-2:])
        total: dict[str, torch.Tensor] = {}
        for member, size in zip(self.members, self.sizes):
            # a member smaller than the grid sees the X-ray at its own size (antialiased, as PIL resizes)
            xm = x if grid == (size, size) else F.interpolate(x, size=(size, size), mode="bilinear",
                                                                align_corners=False, antialias=True)
            probs = activate(member(xm), self.outputs)
            for name in self.outputs:
                p = probs[name]
                if p.ndim == 4 and tuple(p.shape[-2:]) != grid:
                    p = F.interpolate(p, size=grid, mode="bilinear", align_corners=False)
                total[name] = p if name not in total else total[name] + p
        return as_logits({n: t / len(self.members) for n, t in total.items()})


def _member_dir(entry: dict, ensemble_dir: Path) -> Path:
    "A member's directory as config.json records it: relative to the ensemble's parent folder, or absolute."
    path = Path(entry["run"])
    return path if path.is_absolute() else ensemble_dir.parent / path


def ensemble_members(run_dir: str | Path, record: dict) -> list[Member]:
    "The members an ensemble's config.json names, checked: each still there, with the model.pth it was made of."
    run_dir = Path(run_dir)
    entries = record.get("members")
    if not isinstance(entries, list) or len(entries) < 2 or not all(isinstance(e, dict) and {"run", "model_sha256"} <= set(e)
                                                                     for e in entries):
        raise CovfastError(f"{run_dir / 'config.json'} names no members: it was not written by covfast ensemble or was "
                           f"edited; make the ensemble again")
    members = []
    for entry in entries:
        path = _member_dir(entry, run_dir)
        if not (path / "config.json").is_file() or not (path / "model.pth").is_file():
            raise CovfastError(f"ensemble {run_dir.name}: its member {path} is gone (no config.json or model.pth there); "
                               f"put it back, or make the ensemble again of the runs you have")
        if sha256(path / "model.pth") != entry["model_sha256"]:
            raise CovfastError(f"ensemble {run_dir.name}: its member {path.name} changed since the ensemble was made "
                               f"(model.pth's SHA-256 differs: trained again or replaced); make the ensemble again "
                               f"with covfast ensemble ... --name NEWNAME")
        members.append(Member(path, read_run(path)[0], entry["model_sha256"]))
    return members


def ensemble_model(run_dir: str | Path, spec: RunSpec, record: dict, build: Callable[[RunSpec], nn.Module]) -> EnsembleModel:
    """The `EnsembleModel` of an ensemble run (its spec and config.json record): each member's model (`build(spec)`)
    with its own model.pth (weights_only, checked against the SHA-256 recorded), averaging the outputs they all have."""
    members = ensemble_members(run_dir, record)
    models = []
    for m in members:
        model = build(m.spec)
        load_model_weights(model, load_weights(m.dir / "model.pth"), m.dir / "model.pth")
        models.append(model.eval())
    outputs = ("infection",) + (("covid",) if spec.image_head else ()) + (("lung",) if spec.lungs else ())
    return EnsembleModel(models, [m.spec.img_size for m in members], outputs)


def weights_digest(run_dir: str | Path, record: dict) -> str:
    """What a run's predictions depend on, as one SHA-256: its model.pth's, or for an ensemble (its config.json
    `record` says so), of its members' as the record lists them, in order."""
    if record.get("arch") != ENSEMBLE:
        return sha256(Path(run_dir) / "model.pth")
    return hashlib.sha256(",".join(e["model_sha256"] for e in record.get("members", [])).encode()).hexdigest()


def _check_members(dirs: list[Path]) -> list[tuple[RunSpec, dict]]:
    "Each run's spec and record, refused in one line when it cannot be a member."
    if len(dirs) < 2:
        raise CovfastError("an ensemble needs two runs or more: covfast ensemble RUN RUN... --name NAME")
    if len({d.resolve() for d in dirs}) < len(dirs):
        raise CovfastError("the same run is named twice; name each member once")
    runs = [read_run(d) for d in dirs]
    for d, (spec, record) in zip(dirs, runs):
        if spec.arch == ENSEMBLE:
            raise CovfastError(f"{d} is an ensemble itself; name its members instead")
        # an interrupted or diverged run is a member with its best finished epoch; a running one would change
        if record.get("status") == "running" or not (d / "model.pth").is_file():
            why = "it is still training (or was killed while it did)" if (d / "model.pth").is_file() else "it has no model.pth"
            raise CovfastError(f"{d} is not a finished run: {why}; finish it with covfast train {spec.arch} --resume {d}, "
                               f"or leave it out")
        if spec.gate_topk:
            raise CovfastError(f"{d} decides with the pixel-evidence gate of runs made before the image head; an "
                               f"ensemble averages image probabilities: train it again, or leave it out")
    first_spec = runs[0][0]
    for d, (spec, _) in zip(dirs[1:], runs[1:]):
        if tuple(sorted(spec.classes)) != tuple(sorted(first_spec.classes)):
            raise CovfastError(f"{dirs[0].name} was trained on {', '.join(first_spec.classes)} but {d.name} on "
                               f"{', '.join(spec.classes)}: members must share their classes")
        if canonical_root(spec.data_root) != canonical_root(first_spec.data_root):
            raise CovfastError(f"{dirs[0].name} was trained on {first_spec.data_root} but {d.name} on {spec.data_root}: "
                               f"members must know the same data (calibrate and evaluate read it)")
    return runs


def make_ensemble(runs: list[str | Path], name: str | None = None, runs_dir: str | Path = "runs",
                  say: Callable[[str], None] = print) -> Path:
    """A new run directory (under `runs_dir`) that is the ensemble of `runs`: config.json only. Members must be
    finished runs sharing their classes and their data; the outputs every member has are averaged."""
    dirs = [resolve_run(r, runs_dir) for r in runs]
    specs = _check_members(dirs)
    first = specs[0][0]
    heads = [s.image_head for s, _ in specs]
    lungs = [s.lungs for s, _ in specs]
    spec = RunSpec(ENSEMBLE, data_root=first.data_root, img_size=max(s.img_size for s, _ in specs),
                   bs=min(s.bs for s, _ in specs), epochs=1, lr="auto", classes=first.classes,
                   seed=first.seed, precision="auto", pretrained=False, dice_weight=1.0,
                   cls_weight=1.0 if all(heads) else 0.0, lung_weight=1.0 if all(lungs) else 0.0, augment=False)
    run_dir = new_run_dir(runs_dir, name, ENSEMBLE)
    parent = run_dir.parent.resolve()
    members = []
    for d, (s, _) in zip(dirs, specs):
        where = d.resolve()
        members.append({"run": str(where.relative_to(parent)) if parent in where.parents else str(where),
                        "name": d.name, "arch": s.arch, "img_size": s.img_size,
                        "model_sha256": sha256(d / "model.pth")})
    write_json(run_dir / "config.json", {**spec.to_json(), "members": members, "status": "complete",
                                         "pretrained": False, "created": datetime.now().isoformat(timespec="seconds"),
                                         "versions": versions()})
    dropped = [what for what, have in (("the image head", heads), ("the lung output", lungs)) if any(have) and not all(have)]
    say(f"Made ensemble {run_dir}: the mean of {len(dirs)} runs ({', '.join(d.name for d in dirs)}), "
        f"input {spec.img_size} px, outputs infection{', image probability' if spec.image_head else ''}"
        f"{', lungs' if spec.lungs else ''}"
        + (f"; left out {' and '.join(dropped)}, which not every member has" if dropped else ""))
    if spec.image_head:
        say(f"Next: covfast calibrate {run_dir.name} (its threshold on Val), then evaluate, report, compare or predict.")
    return run_dir
