"""DICOM X-rays: the stored pixel values as the 8-bit grayscale the models were trained on (bone bright).

The Modality LUT first (Rescale Slope and Intercept), then the first VOI window the file carries (Window
Center and Width), or its VOI LUT, or else the image's own range; an 8-bit image with none of these is kept
as stored (it is already the gray a PNG of it holds). MONOCHROME1 (low values bright) is inverted so bone is
bright, as in COVID-QU-Ex's PNGs. pydicom reads the file, its warnings kept out of the terminal; a file
without pixel data, damaged or cut short, larger than `config.MAX_PIXELS` (checked on the header, before
anything is decoded), or compressed with a codec no installed decoder reads, is one error naming the reason.
The reading itself is `portable.read_dicom`, which an export's standalone prediction uses too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from . import portable
from .errors import CovfastError
from .portable import DICOM_SUFFIXES, is_dicom

__all__ = ["DICOM_SUFFIXES", "is_dicom", "read_dicom"]


def read_dicom(path: str | Path) -> np.ndarray:
    "A DICOM X-ray as HxW uint8 grayscale, bone bright (`portable.read_dicom`); what cannot be read is one CovfastError."
    try:
        return portable.read_dicom(path)
    except portable.XrayError as e:
        raise CovfastError(str(e)) from None
