"""Inference: a run's learner with its best weights, batched logits in the validation pipeline, masks at any size.

evaluate, calibrate, report, compare and predict all score images through this one path, so a mask
in a report is the mask `covfast predict` writes for the same image.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from fastai.learner import Learner
from fastai.torch_core import TensorImage, to_device
from fastai.vision.augment import Resize
from PIL import Image

from .data import InfectionMask, inference_dataloaders, mask_pixels, xray_pixels
from .errors import CovfastError
from .learner import config_learner, learner_for_config, pick_device, run_config
from .metrics import apply_decision, image_probability, learner_gate, predicted_infection
from .precision import autocast, memory_format, resolve_precision, use_precision
from .runs import CALIBRATION_FILE, load_model_weights, load_weights, read_json, read_run_config, resolve_run

__all__ = ["inference_learner", "load_run", "validation_batch", "iter_logits", "upsample_mask"]


def inference_learner(cfg: dict[str, Any], device: str | torch.device | None = None) -> Learner:
    """The learner of a run's config.json on `inference_dataloaders` (validation transforms only, no data):
    evaluate, report, compare and predict work from the run directory alone."""
    config = run_config(cfg)
    dls = inference_dataloaders(config.img_size, config.bs, device=pick_device(device or cfg.get("device")))
    return config_learner(dls, cfg, pretrained=False, warn=False)[0]


def load_run(run: str | Path, runs_dir: str | Path = "runs", device: str | None = None,
             with_data: bool = False, precision: str = "auto") -> tuple[Learner, dict[str, Any], Path]:
    """A run's learner with its best weights (model.pth, weights_only), its config and its directory.

    Needs only the run directory: the learner carries the validation transforms, not the training
    data. Its decision uses the threshold of calibration.json when `covfast calibrate` wrote one (the
    image probability's; for a run made before the image head, its pixel-evidence gate's margin). `with_data=True` attaches the run's Train/Val DataLoaders instead (for `learn.show_results()`).
    `precision` ('auto', 'fp32' or 'bf16') is what this machine predicts in, whatever the run trained in;
    `learn.get_preds`, `show_results` and `iter_logits` all use it.
    """
    run_dir = resolve_run(run, runs_dir)
    cfg = read_run_config(run_dir)
    if (run_dir / CALIBRATION_FILE).is_file():
        cfg["calibration"] = calibration = read_json(run_dir / CALIBRATION_FILE)
        if "threshold" in calibration:
            cfg["threshold"] = calibration["threshold"]
        elif "gate_margin" in calibration:
            cfg["gate_margin"] = calibration["gate_margin"]
    if device is not None:
        cfg["device"] = device
    learn = (learner_for_config(cfg, pretrained=False, warn=False)[0] if with_data else inference_learner(cfg))
    load_model_weights(learn.model, load_weights(run_dir / "model.pth", map_location=learn.dls.device), run_dir / "model.pth")
    learn.model.to(learn.dls.device).eval()  # fastai moves the model only when fitting; prediction feeds it directly
    use_precision(learn, resolve_precision(precision, learn.dls.device))
    learn.path = run_dir
    return learn, cfg, run_dir


def _input_size(learn: Learner) -> tuple[int, int]:
    "(width, height) of the learner's validation Resize."
    for tfm in learn.dls.valid.after_item.fs:
        if isinstance(tfm, Resize):
            return tuple(tfm.size)
    raise CovfastError("the learner's validation transforms hold no Resize; build it with load_run or covfast_learner")


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


def validation_batch(learn: Learner, pixels: tuple[np.ndarray, ...]) -> tuple:
    """The batch fastai's validation DataLoader would make of these images, from `_batch_pixels`.

    fastai's per-item pipeline (PILImage, Resize, ToTensor, collation) cost about 3 ms of Python per
    item, some 10% of the Attention U-Net's CPU prediction at 128 px; the resizing here is the same
    PIL operation on one channel instead of three identical ones, and the batch transforms
    (IntToFloatTensor, Normalize) are the DataLoader's own. tests/test_predict.py checks the pixels match.
    """
    dl = learn.dls.valid
    x = torch.from_numpy(pixels[0])[:, None].expand(-1, 3, -1, -1).contiguous()
    b = (TensorImage(x),) if len(pixels) == 1 else (TensorImage(x), InfectionMask(torch.from_numpy(pixels[1])))
    return dl.after_batch(to_device(b, dl.device))


@torch.no_grad()
def iter_logits(learn: Learner, items: pd.DataFrame, bs: int | None = None, with_labels: bool = False,
                progress=None, gated: bool = True) -> Iterator[tuple[int, torch.Tensor, torch.Tensor | None]]:
    """(row index, gated logits (2, h, w) at model resolution, target or None) for every item, batched.

    Items get the learner's own validation transforms (resize, normalisation), so prediction sees
    exactly what validation saw, its precision (`precision.autocast`), and the learner's own
    `EmptyGate` (`gated=False`: the raw logits);
    evaluate and predict share this one path. The next batch's PNGs are decoded in a helper thread
    while the model runs on this one.
    """
    bs = bs or learn.dls.bs
    size = _input_size(learn)
    gate = learner_gate(learn)
    starts = range(0, len(items), bs)
    with ThreadPoolExecutor(max_workers=1) as pool:
        ahead = pool.submit(_batch_pixels, items.iloc[0:bs], size, with_labels) if len(items) else None
        for start in (progress(starts, len(starts)) if progress is not None else starts):
            pixels = ahead.result()
            if start + bs < len(items):
                ahead = pool.submit(_batch_pixels, items.iloc[start + bs:start + 2 * bs], size, with_labels)
            batch = validation_batch(learn, pixels)
            # a plain Tensor: fastai's typed tensors would send every op of the forward through Python
            xb = batch[0].as_subclass(torch.Tensor).contiguous(memory_format=memory_format(learn))
            with autocast(learn):
                logits = learn.model(xb)
            logits = logits.float()  # the gate, the masks and the metrics are fp32
            if gated and gate is not None:
                logits = gate.apply(logits)
            yb = batch[1].as_subclass(torch.Tensor) if with_labels else None
            for i in range(len(xb)):
                yield start + i, logits[i], (yb[i] if yb is not None else None)


def upsample_mask(logits: torch.Tensor, size: tuple[int, int], threshold: float) -> np.ndarray:
    """Boolean mask at `size` (h, w) from one image's logits: the segmentation channels upsampled (bilinear),
    argmax, and emptied when the image head's probability is at or below `threshold` (`decided_infection`;
    pass `learner_threshold(learn)`). Without the head: the argmax alone."""
    up = F.interpolate(logits[None, :2], size=size, mode="bilinear", align_corners=False)
    return apply_decision(predicted_infection(up), image_probability(logits[None]), threshold)[0].cpu().numpy()
