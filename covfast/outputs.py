"""A model's named outputs: the infection logits, the image-level COVID-19 logit, the lung logits.

Every covfast model returns a `ModelOutput`, and the loss, the metrics, the decision and inference read
its fields by name (`out.infection`, `out.get("covid")`), so a new output is one more `OutputKind` in
`OUTPUTS` and one more field a model fills in. It is a tuple, so everything fastai does with a model's output
(concatenation in `get_preds`, `to_float` under mixed precision, `to_detach`, reordering, distributed
gathering) rebuilds it as `type(out)(items)`, which keeps the names.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache
from typing import Callable, Iterable

import torch
import torch.nn.functional as F

__all__ = ["CODES", "LUNG_CODES", "Figure", "OutputKind", "OUTPUTS", "figure_labels", "ModelOutput", "model_output", "as_output", "activate",
           "output_figures"]


# Output channel i of a segmentation is class i: 0 background, 1 infection (the lung output: 0 background, 1 lung).
CODES: list[str] = ["background", "infection"]
LUNG_CODES: list[str] = ["background", "lung"]


@dataclass(frozen=True)
class Figure:
    "One number per X-ray that a model output adds to predictions.csv, per_image.csv, the report and the page."
    column: str  # its column in predictions.csv and per_image.csv
    label: str  # how the page and the report name it
    compute: Callable[[torch.Tensor], float]  # from the X-ray's activated output: a batch of 1, at the model's size


@dataclass(frozen=True)
class OutputKind:
    """What one model output is, declared once: how it becomes a probability, what an export's sidecar says of it,
    and the per-X-ray figures it adds to every table and page (`figures`)."""
    name: str
    activation: str  # "softmax" over its channels (a segmentation), "sigmoid" (an image logit), or "" (none)
    sidecar: str  # what model.json says of it ("" for an output an export does not carry)
    figures: tuple[Figure, ...] = ()


# Every output a covfast model may return, by name, in the order it returns them. A new output is one entry here
# (with its `figures`, it reaches predictions.csv, per_image.csv, the report and the page), the model head that
# fills it, and its loss term. The verdict, the lungs and severity are made from the first three by the decision.
OUTPUTS: dict[str, OutputKind] = {o.name: o for o in (
    OutputKind("infection", "softmax", "logits (batch, 2, H, W): channel 1 infection, channel 0 background; infection "
                                       "where 1 > 0"),
    OutputKind("covid", "sigmoid", "logit (batch,): this X-ray has COVID-19 infection; sigmoid gives the probability"),
    OutputKind("lung", "softmax", "logits (batch, 2, H, W): channel 1 lung, channel 0 background"),
    OutputKind("attention", "", ""),  # (B, 1, h, w) the Attention U-Net's finest gate: inference only, when asked for
)}


def figure_labels() -> dict[str, str]:
    "Every declared per-X-ray figure's column and label (`OutputKind.figures`)."
    return {f.column: f.label for kind in OUTPUTS.values() for f in kind.figures}


class ModelOutput(tuple):
    "A tuple of tensors with names (`names`, set per subclass by `model_output`), read as attributes."
    __slots__ = ()
    names: tuple[str, ...] = ()
    # fastcore reads a tuple's `ndim`: `detuplify` unwraps one holding one item when it is 1 (a model with the
    # infection output alone must stay a ModelOutput through `get_preds`), and `is_coll` wants it truthy
    ndim = -1

    def __new__(cls, items: Iterable[torch.Tensor] = ()):
        items = tuple(items)
        if len(items) != len(cls.names):
            raise ValueError(f"{cls.__name__} holds {', '.join(cls.names)}; got {len(items)} items")
        return super().__new__(cls, items)

    def __getattr__(self, name: str) -> torch.Tensor:
        names = type(self).names
        if name in names:
            return self[names.index(name)]
        raise AttributeError(f"the model has no {name!r} output (it has {', '.join(names)})")

    def get(self, name: str, default=None):
        "The output `name`, or `default` when the model does not have it."
        names = type(self).names
        return self[names.index(name)] if name in names else default

    def has(self, name: str) -> bool:
        return name in type(self).names

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> "ModelOutput":
        "The same outputs, each passed through `fn` (e.g. `lambda t: t[i:i + 1]` for image i)."
        return type(self)(fn(t) for t in self)

    def replace(self, **outputs: torch.Tensor | None) -> "ModelOutput":
        "A copy with `outputs` set (None removes one)."
        return model_output(**{**self.asdict(), **outputs})

    def asdict(self) -> dict[str, torch.Tensor]:
        return dict(zip(type(self).names, self))

    def __reduce__(self):
        return model_output_from, (type(self).names, tuple(self))

    def __repr__(self) -> str:
        shapes = ", ".join(f"{n}={tuple(t.shape)}" for n, t in zip(type(self).names, self))
        return f"ModelOutput({shapes})"


@lru_cache(maxsize=None)
def _output_type(names: tuple[str, ...]) -> type[ModelOutput]:
    return type("ModelOutput", (ModelOutput,), {"__slots__": (), "names": names})


def model_output_from(names: tuple[str, ...], items: Iterable[torch.Tensor]) -> ModelOutput:
    return _output_type(tuple(names))(items)


def model_output(**outputs: torch.Tensor | None) -> ModelOutput:
    "A `ModelOutput` of the given outputs (None ones left out), in `OUTPUTS` order."
    unknown = set(outputs) - set(OUTPUTS)
    if unknown:
        raise ValueError(f"unknown model output {sorted(unknown)[0]!r}; known: {', '.join(OUTPUTS)}")
    names = tuple(n for n in OUTPUTS if outputs.get(n) is not None)
    return model_output_from(names, (outputs[n] for n in names))


def as_output(x: torch.Tensor | ModelOutput) -> ModelOutput:
    "A model output as a `ModelOutput`; a bare tensor is the infection logits (a plain segmentation model)."
    return x if isinstance(x, ModelOutput) else model_output(infection=x)


def activate(out: torch.Tensor | ModelOutput, names: Iterable[str] | None = None) -> dict[str, torch.Tensor]:
    """The outputs as probabilities (fp32), by name, each by its declared activation (`OUTPUTS`); outputs without
    one are left out. `names`: only these."""
    out = as_output(out)
    keep = set(out.names if names is None else names)
    done = {}
    for name, t in out.asdict().items():
        kind = OUTPUTS[name].activation
        if name in keep and kind:
            done[name] = torch.sigmoid(t.float()) if kind == "sigmoid" else F.softmax(t.float(), dim=1)
    return done


def output_figures(out: ModelOutput) -> list[dict[str, float]]:
    "Per image of a batch of outputs, the figures its outputs declare (`OutputKind.figures`), by column."
    out = as_output(out)
    figures = [(name, f) for name in out.names for f in OUTPUTS[name].figures]
    if not figures:
        return [{} for _ in range(len(out[0]))]
    activated = activate(out, {name for name, _ in figures})
    return [{f.column: float(f.compute(activated.get(name, out.get(name))[i:i + 1])) for name, f in figures}
            for i in range(len(out[0]))]
