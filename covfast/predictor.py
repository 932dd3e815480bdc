"""A trained run ready to predict, with PyTorch alone: its record and decision (`Run`), and its model with the
input pipeline of covfast's validation transforms (`Predictor`).

`covfast predict` runs through it: fastai is not imported for an Attention U-Net run (a DynamicUnet run imports
it to build its model), so a one-X-ray prediction no longer waits seconds for fastai to load. evaluate, calibrate,
report and serve keep the fastai learner (`inference.load_run`); both feed the model the same tensors, decoded and
resized by the same `pixel_batches` (tests/test_predict.py checks them bit for bit).
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
from PIL import Image

from .archs import ENSEMBLE, arch_entry
from .decision import Decision
from .device import Precision, autocast, channels_last, pick_device, resolve_precision
from .ensemble import ensemble_model
from .inputs import mask_pixels, xray_pixels
from .outputs import ModelOutput
from .runs import load_model_weights, load_weights, read_run, resolve_run
from .spec import RunSpec

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "Run", "run_record", "uncalibrated_note", "pixel_batches", "Predictor",
           "member_model", "load_predictor"]

# the ImageNet statistics every covfast model's input is normalised with (fastai's `imagenet_stats`)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


@dataclass(frozen=True)
class Run:
    "A trained run as inference sees it: its directory, settings, config.json record and decision."
    dir: Path
    spec: RunSpec
    record: dict[str, Any]  # config.json as written (status, pretrained used, precision used, counts, versions ...)
    decision: Decision

    @property
    def name(self) -> str:
        return self.dir.name


def run_record(run: str | Path, runs_dir: str | Path = "runs") -> Run:
    "A run's directory, settings, config.json record and decision, without its model (ONNX prediction needs no more)."
    run_dir = resolve_run(run, runs_dir)
    spec, record = read_run(run_dir)
    return Run(run_dir, spec, record, Decision.load(run_dir, spec.gate_topk))


def uncalibrated_note(run: Run) -> str:
    """One line for a run whose decision threshold no `covfast calibrate` chose (predict, serve and export say it);
    '' for a calibrated run, or one with no image-level decision to calibrate."""
    if run.decision.split is not None or not (run.spec.cls_weight or run.spec.gate_topk):
        return ""
    what = "threshold 0.5" if run.spec.cls_weight else "pixel-evidence margin 0"
    return (f"{run.name} was never calibrated: its decision uses the {what}, not one chosen on Val; run "
            f"`covfast calibrate {run.name}` first")


def _resized(pixels: np.ndarray, size: tuple[int, int], resample: int) -> np.ndarray:
    return np.asarray(Image.fromarray(pixels).resize(size, resample))


def _batch_pixels(rows: pd.DataFrame, size: tuple[int, int], with_labels: bool) -> tuple[np.ndarray, ...]:
    """uint8 X-rays (B, H, W) and masks, resized as the validation `Resize` does (Squish: bilinear for
    images, nearest for masks). Decoding and resizing release the GIL, so this runs in a helper thread."""
    x = np.stack([_resized(xray_pixels(p), size, Image.BILINEAR) for p in rows.image])
    if not with_labels:
        return (x,)
    y = np.stack([_resized(mask_pixels(m), size, Image.NEAREST) for m in rows.infection_mask])
    return x, y


def pixel_batches(items: pd.DataFrame, size: tuple[int, int], bs: int, with_labels: bool = False,
                  progress=None) -> Iterator[tuple[int, tuple[np.ndarray, ...]]]:
    """(row index of the batch's first item, its uint8 X-rays (B, H, W) at `size` (w, h), and its masks when
    `with_labels`) for every batch of `bs` items, in order; the next batch is decoded in a helper thread while the
    caller runs the model on this one."""
    starts = range(0, len(items), bs)
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(_batch_pixels, items.iloc[0:bs], size, with_labels) if len(items) else None
        for start in (progress(starts, len(starts)) if progress is not None else starts):
            pixels = ahead.result()
            if start + bs < len(items):
                ahead = pool.submit(_batch_pixels, items.iloc[start + bs:start + 2 * bs], size, with_labels)
            yield start, pixels


@dataclass
class Predictor:
    """A model in eval mode with what its input needs: the run's input size, ImageNet normalisation, the precision
    and memory format it runs in, its device. Calling it on uint8 X-rays at its size gives the model's outputs (fp32)."""
    model: torch.nn.Module
    size: tuple[int, int]  # (width, height) the model sees
    device: torch.device
    precision: Precision

    @property
    def channels_last(self) -> bool:
        "As the learner runs it (`device.channels_last`)."
        return channels_last(self.precision, self.device)

    def inputs(self, pixels: np.ndarray) -> torch.Tensor:
        """(B, 3, h, w) float32 of (B, h, w) uint8 X-rays: the gray on 3 channels, / 255, ImageNet-normalised, the same
        operations as fastai's IntToFloatTensor and Normalize in the validation pipeline."""
        x = torch.from_numpy(pixels)[:, None].expand(-1, 3, -1, -1).contiguous().to(self.device)
        x = x.float().div_(255.0)
        mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1).to(self.device)
        std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1).to(self.device)
        x = (x - mean) / std
        return x.contiguous(memory_format=torch.channels_last if self.channels_last else torch.contiguous_format)

    @torch.no_grad()
    def __call__(self, pixels: np.ndarray) -> ModelOutput:
        xb = self.inputs(pixels)
        with autocast(self.precision, self.device):
            out = self.model(xb)
        return out.map(lambda t: t.float())  # the decision, the masks and the metrics are fp32

    def batches(self, items: pd.DataFrame, bs: int, progress=None) -> Iterator[tuple[int, ModelOutput]]:
        "(row index of the batch's first item, the model's outputs for the batch) for every batch of `items.image`."
        for start, pixels in pixel_batches(items, self.size, bs, progress=progress):
            yield start, self(pixels[0])


def member_model(spec: RunSpec) -> torch.nn.Module:
    "A run's model as its own learner builds it (DynamicUnet sizes its decoder on the run's input size), untrained."
    return arch_entry(spec.arch).build(spec, (spec.img_size, spec.img_size), False)


def load_predictor(run: str | Path, runs_dir: str | Path = "runs", device: str | None = None,
                   precision: str = "auto") -> tuple[Predictor, Run]:
    """A run's `Predictor` with its best weights (model.pth, weights_only; an ensemble's from its members') in
    `precision` on this machine, and the `Run`: what `inference.load_run` gives prediction, without fastai."""
    loaded = run_record(run, runs_dir)
    device = pick_device(device or loaded.record.get("device"))
    spec = loaded.spec
    if spec.arch == ENSEMBLE:
        model = ensemble_model(loaded.dir, spec, loaded.record, member_model)
    else:
        model = member_model(spec)
        load_model_weights(model, load_weights(loaded.dir / "model.pth", map_location=device), loaded.dir / "model.pth")
    predictor = Predictor(model, (spec.img_size, spec.img_size), device, resolve_precision(precision, device))
    predictor.model.to(device).eval()
    if predictor.channels_last:
        predictor.model.to(memory_format=torch.channels_last)
    return predictor, loaded
