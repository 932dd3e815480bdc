"""fastai data: X-ray and mask loading (decoded once per process), SegmentationBlock, DataBlock, DataLoaders."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from fastai.data.block import DataBlock, TransformBlock
from fastai.data.core import DataLoaders, TfmdDL
from fastai.data.transforms import ColReader, ColSplitter, IntToFloatTensor, Normalize
from fastai.vision.augment import Resize, ResizeMethod, aug_transforms
from fastai.torch_core import TensorMask
from fastai.vision.core import AddMaskCodes, PILImage, PILMask, imagenet_stats
from matplotlib.colors import ListedColormap

from .config import CLASSES
from .dataset import scan_tree
from .errors import CovfastError
from .inputs import (_cached_mask, _cached_xray, clear_cache, mask_pixels, read_mask, read_xray,  # noqa: F401
                     xray_pixels)  # read in covfast/inputs.py (no fastai); covfast.data's names too
from .outputs import CODES, LUNG_CODES  # noqa: F401  (covfast.data's names too)

__all__ = ["CODES", "LUNG_CODES", "InfectionMask", "LungMask", "ItemCacheDL", "PILInfectionMask", "PILLungMask", "read_xray",
           "read_mask", "xray_pixels", "mask_pixels", "load_xray", "load_mask", "load_lung_mask", "XRayBlock", "SegmentationBlock",
           "xray_augmentations", "covid_datablock", "training_items", "covid_dataloaders", "inference_dataloaders",
           "loader_settings", "clear_cache"]


# Background transparent, infection red (the reference study's overlay colour), lungs cyan.
INFECTION_CMAP = ListedColormap([(0.0, 0.0, 0.0, 0.0), (1.0, 0.0, 0.0, 1.0)], name="infection")
LUNG_CMAP = ListedColormap([(0.0, 0.0, 0.0, 0.0), (0.0, 0.85, 0.85, 1.0)], name="lung")


class InfectionMask(TensorMask):
    "A 0/1 infection mask that shows as red over the X-ray (fastai's default shows 0/1 as near-blank)."
    _show_args = {"alpha": 0.5, "cmap": INFECTION_CMAP, "interpolation": "nearest"}

    def show(self, ctx=None, **kwargs):
        # skip TensorMask.show, which would stretch vmax to len(codes)
        return super(TensorMask, self).show(ctx=ctx, **{"vmin": 0, "vmax": 1, **kwargs})


class LungMask(InfectionMask):
    "A 0/1 lung mask, shown in cyan; augmented with the X-ray like the infection mask (a TensorMask)."
    _show_args = {"alpha": 0.3, "cmap": LUNG_CMAP, "interpolation": "nearest"}


class PILInfectionMask(PILMask):
    "A PILMask that becomes an `InfectionMask` tensor."
    _tensor_cls = InfectionMask


class PILLungMask(PILMask):
    "A PILMask that becomes a `LungMask` tensor."
    _tensor_cls = LungMask


def load_xray(item: str | Path | np.ndarray) -> PILImage:
    "An X-ray (a file, or an HxW uint8 array) as a 3-channel PILImage, so ImageNet encoders and their normalisation apply."
    gray = xray_pixels(item)
    return PILImage.create(np.repeat(gray[..., None], 3, axis=2))


def load_mask(item: str | Path | np.ndarray) -> PILInfectionMask:
    "A 0/255 infection mask (a file, or an HxW 0/1 array) as a PILMask of class indices 0/1."
    return PILInfectionMask.create(mask_pixels(item))


def load_lung_mask(item: str | Path | np.ndarray) -> PILLungMask:
    "A 0/255 lung mask (a file, or an HxW 0/1 array) as a PILMask of class indices 0/1."
    return PILLungMask.create(mask_pixels(item))


class ItemCacheDL(TfmdDL):
    """A TfmdDL that keeps each item after its item transforms, when it loads in the main process.

    covid_datablock's item transforms (mask codes, Squish resize, ToTensor) are deterministic and the
    augmentations are batch transforms, so from the second epoch on a CPU batch costs collation and
    batch transforms only: fastai's per-item pipeline took ~3 ms of Python per item, several percent
    of an Attention U-Net step at 128 px. The X-ray is kept as one channel (the three are equal) and
    expanded on the way out. Loader workers (the GPU path) keep the PNG cache instead, since each
    would hold its own copy of every item.
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._items: dict = {}

    def do_item(self, s):
        if self.fake_l.num_workers or s is None:
            return super().do_item(s)
        if s not in self._items:
            item = super().do_item(s)
            if item is None:
                return None
            self._items[s] = (item[0][:1].clone(), *item[1:])  # clone: a slice would keep all three channels alive
        x, *rest = self._items[s]
        return (x.expand(3, -1, -1), *rest)


def XRayBlock() -> TransformBlock:
    "A `TransformBlock` for grayscale X-rays read as 3-channel images."
    return TransformBlock(type_tfms=load_xray, batch_tfms=IntToFloatTensor)


def SegmentationBlock(codes: list[str] = CODES, loader=load_mask) -> TransformBlock:
    "fastai's `MaskBlock`, with masks stored as 0/255 read as class indices 0/1 and other values rejected."
    return TransformBlock(type_tfms=loader, item_tfms=AddMaskCodes(codes=codes), batch_tfms=IntToFloatTensor)


def xray_augmentations() -> list:
    """Batch augmentations for chest X-rays: small rotation, zoom and warp, brightness/contrast.

    No flips: a chest X-ray is not mirror-symmetric (the heart sits on the patient's left, and
    films are read in one orientation); a flipped film is an image the model never meets, and the
    heart's side is a cue for where each lung ends. Black padding, like the air around a patient;
    reflection padding would mirror half a lung into the corner.
    """
    return aug_transforms(do_flip=False, max_rotate=10.0, max_zoom=1.1, max_warp=0.1,
                          max_lighting=0.2, p_affine=0.75, p_lighting=0.75, pad_mode="zeros")


def covid_datablock(
    img_size: int,  # side of the square the items are resized to
    codes: list[str] = CODES,
    augment: bool = True,  # add `xray_augmentations` to the training batches
    lungs: bool = False,  # the lung mask as a second target, after the infection mask
) -> DataBlock:
    "DataBlock over a `scan_tree` DataFrame with an `is_valid` column; ImageNet-normalised."
    batch_tfms = [*(xray_augmentations() if augment else []), Normalize.from_stats(*imagenet_stats)]
    blocks = (XRayBlock(), SegmentationBlock(codes), *([SegmentationBlock(LUNG_CODES, load_lung_mask)] if lungs else []))
    get_y = [ColReader("infection_mask"), ColReader("lung_mask")] if lungs else ColReader("infection_mask")
    return DataBlock(blocks=blocks, n_inp=1, dl_type=ItemCacheDL, get_x=ColReader("image"), get_y=get_y,
                     splitter=ColSplitter("is_valid"), item_tfms=Resize(img_size, method=ResizeMethod.Squish),
                     batch_tfms=batch_tfms)


def training_items(df: pd.DataFrame, classes: tuple[str, ...], valid_split: str = "Val") -> pd.DataFrame:
    "The Train and `valid_split` rows of `classes`, with `is_valid`; an empty side is an error."
    items = df[df.label.isin(classes) & df.split.isin(["Train", valid_split])].copy()
    items["is_valid"] = items.split == valid_split
    for split in ("Train", valid_split):
        for label in classes:
            if not ((items.split == split) & (items.label == label)).any():
                raise CovfastError(f"no {split} images of class {label}: the data root has none; "
                                   f"check --data or --classes")
    return items.reset_index(drop=True)


def covid_dataloaders(
    root: str | Path,  # dataset root (any of the three accepted forms)
    img_size: int = 256,  # side of the square the items are resized to
    bs: int = 8,
    classes: tuple[str, ...] = CLASSES,  # the classes to train and validate on
    augment: bool = True,  # `xray_augmentations` on the training batches
    lungs: bool = False,  # each item's lung mask too, as a second target
    num_workers: int = 0,  # loader worker processes (0 keeps the PNG cache in this process)
    **kwargs,  # passed on to `DataBlock.dataloaders` (device, pin_memory, ...)
) -> DataLoaders:
    "Train/Val `DataLoaders` for a COVID-QU-Ex tree: batches of (X-rays, infection masks[, lung masks])."
    items = training_items(scan_tree(root, ("Train", "Val"), classes), classes)
    dblock = covid_datablock(img_size, augment=augment, lungs=lungs)
    return dblock.dataloaders(items, bs=bs, num_workers=num_workers, **kwargs)


def loader_settings(device: torch.device, num_workers: int = 0) -> dict:
    """DataLoader settings for `device`: on CUDA, worker processes (default up to 8) that keep their PNG cache
    across epochs and pinned memory, so the GPU is kept fed; on CPU, `num_workers` as given (0 keeps the
    cache in the main process, best on a few cores)."""
    if torch.device(device).type != "cuda":
        return {"num_workers": num_workers}
    n = num_workers or min(8, os.cpu_count() or 1)
    return {"num_workers": n, "pin_memory": True, **({"persistent_workers": True} if n else {})}


def inference_dataloaders(img_size: int, bs: int = 8, lungs: bool = False, **kwargs) -> DataLoaders:
    """DataLoaders that carry only the validation transforms of `covid_datablock`, for `test_dl`.

    Built on two blank in-memory items, so a trained run predicts and evaluates without the data
    root it was trained on (a run directory copied to another machine works on its own).
    """
    blank = np.zeros((img_size, img_size), np.uint8)
    items = pd.DataFrame({"image": [blank, blank], "infection_mask": [blank, blank], "lung_mask": [blank, blank],
                          "is_valid": [False, True]})
    # no shuffling or dropped last batch: `dls.one_batch()` (DynamicUnet sizes itself with it) must work
    return covid_datablock(img_size, augment=False, lungs=lungs).dataloaders(items, bs=bs, num_workers=0, shuffle=False,
                                                                              drop_last=False, **kwargs)
