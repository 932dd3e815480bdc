"""Inference: a run's learner with its best weights, batched outputs in the validation pipeline, masks at any size.

evaluate, calibrate, report, compare and serve score images through this path; `covfast predict` runs the same
model on the same tensors through `predictor.Predictor` (no fastai), so a mask in a report is the mask
`covfast predict` writes for the same image (tests/test_predict.py checks the two bit for bit).
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd
import torch
from fastai.learner import Learner
from fastai.torch_core import TensorImage, to_device
from fastai.vision.augment import Resize

from .data import InfectionMask, inference_dataloaders
from .decision import Decision
from .errors import CovfastError
from .archs import ENSEMBLE
from .ensemble import ensemble_model
from .learner import covfast_learner, learner_for_spec, pick_device
from .outputs import ModelOutput
from .precision import autocast, memory_format
from .predictor import Run, member_model, pixel_batches, run_record, uncalibrated_note  # noqa: F401  (its names too)
from .runs import load_model_weights, load_weights
from .spec import RunSpec

__all__ = ["Run", "uncalibrated_note", "inference_learner", "load_run", "run_record", "validation_batch", "iter_outputs",
           "iter_batches"]


def inference_learner(spec: RunSpec, decision: Decision | None = None, device: str | torch.device | None = None,
                      model: torch.nn.Module | None = None) -> Learner:
    """The learner of a spec on `inference_dataloaders` (validation transforms only, no data): evaluate, report,
    compare and predict work from the run directory alone. `model`: one built elsewhere (an ensemble's)."""
    dls = inference_dataloaders(spec.img_size, spec.bs, device=pick_device(device))
    return covfast_learner(dls, spec, decision, pretrained=False, warn=False, check_data=False, model=model)[0]


def load_run(run: str | Path, runs_dir: str | Path = "runs", device: str | None = None,
             with_data: bool = False, precision: str = "auto") -> tuple[Learner, Run]:
    """A run's learner with its best weights (model.pth, weights_only) and decision (calibration.json, when
    `covfast calibrate` wrote one), and the `Run`.

    Needs only the run directory: the learner carries the validation transforms, not the training data.
    `with_data=True` attaches the run's Train/Val DataLoaders instead (for `learn.show_results()`).
    `precision` ('auto', 'fp32' or 'bf16') is what this machine predicts in, whatever the run trained in;
    `learn.get_preds`, `show_results` and `iter_outputs` all use it.
    """
    loaded = run_record(run, runs_dir)
    run_dir, spec, record, decision = loaded.dir, loaded.spec, loaded.record, loaded.decision
    device = device or record.get("device")
    here = spec.replace(precision=precision)
    # an ensemble's model is its members' (covfast/ensemble.py), each with its own model.pth
    model = ensemble_model(run_dir, spec, record, member_model) if spec.arch == ENSEMBLE else None
    learn = (learner_for_spec(here, device=device, decision=decision, pretrained=False, warn=False, model=model)[0]
             if with_data else inference_learner(here, decision, device, model))
    if model is None:
        load_model_weights(learn.model, load_weights(run_dir / "model.pth", map_location=learn.dls.device),
                           run_dir / "model.pth")
    learn.model.to(learn.dls.device).eval()  # fastai moves the model only when fitting; prediction feeds it directly
    learn.path = run_dir
    return learn, loaded


def _input_size(learn: Learner) -> tuple[int, int]:
    "(width, height) of the learner's validation Resize."
    for tfm in learn.dls.valid.after_item.fs:
        if isinstance(tfm, Resize):
            return tuple(tfm.size)
    raise CovfastError("the learner's validation transforms hold no Resize; build it with load_run or covfast_learner")


def validation_batch(learn: Learner, pixels: tuple[np.ndarray, ...]) -> tuple:
    """The batch fastai's validation DataLoader would make of these images, from `predictor._batch_pixels`.

    fastai's per-item pipeline (PILImage, Resize, ToTensor, collation) cost about 3 ms of Python per
    item, some 10% of the Attention U-Net's CPU prediction at 128 px; the resizing here is the same
    PIL operation on one channel instead of three identical ones, and the batch transforms
    (IntToFloatTensor, Normalize) are the DataLoader's own. tests/test_predict.py checks the pixels match.
    """
    dl = learn.dls.valid
    x = torch.from_numpy(pixels[0])[:, None].expand(-1, 3, -1, -1).contiguous()
    b = (TensorImage(x),) if len(pixels) == 1 else (TensorImage(x), InfectionMask(torch.from_numpy(pixels[1])))
    return dl.after_batch(to_device(b, dl.device))


def iter_outputs(learn: Learner, items: pd.DataFrame, bs: int | None = None, with_labels: bool = False,
                 progress=None, attention: bool = False) -> Iterator[tuple[int, ModelOutput, torch.Tensor | None]]:
    """(row index, the model's outputs for that image (batch of 1, fp32, model resolution), its target or None)
    for every item: `iter_batches`, one image at a time."""
    for start, out, yb in iter_batches(learn, items, bs, with_labels, progress, attention):
        for i in range(len(out[0])):
            yield start + i, out.map(lambda t: t[i:i + 1]), (yb[i] if yb is not None else None)


@torch.no_grad()
def iter_batches(learn: Learner, items: pd.DataFrame, bs: int | None = None, with_labels: bool = False,
                 progress=None, attention: bool = False) -> Iterator[tuple[int, ModelOutput, torch.Tensor | None]]:
    """(row index of the batch's first image, the model's outputs for the batch (fp32, model resolution), its
    targets or None) for every batch of `bs` items, in order.

    Items get the learner's own validation transforms (resize, normalisation), so prediction sees exactly
    what validation saw, and its precision (`precision.autocast`, channels_last). `attention`: add the
    Attention U-Net's finest gate map as the `attention` output (other models have none). The next
    batch's PNGs are decoded in a helper thread while the model runs on this one.
    """
    bs = bs or learn.dls.bs
    with_attention = attention and hasattr(learn.model, "forward_with_attention")
    for start, pixels in pixel_batches(items, _input_size(learn), bs, with_labels, progress):
        batch = validation_batch(learn, pixels)
        # a plain Tensor: fastai's typed tensors would send every op of the forward through Python
        xb = batch[0].as_subclass(torch.Tensor).contiguous(memory_format=memory_format(learn))
        with autocast(learn):
            if with_attention:
                out, maps = learn.model.forward_with_attention(xb)
                out = out.replace(attention=maps[-1])  # the finest gate: most detail
            else:
                out = learn.model(xb)
        out = out.map(lambda t: t.float())  # the decision, the masks and the metrics are fp32
        yield start, out, (batch[1].as_subclass(torch.Tensor) if with_labels else None)
