"""DICOM X-rays: the stored pixel values as the 8-bit grayscale the models were trained on (bone bright).

The Modality LUT first (Rescale Slope and Intercept), then the first VOI window the file carries (Window
Center and Width), or its VOI LUT, or else the image's own range; MONOCHROME1 (low values bright) is
inverted so bone is bright, as in COVID-QU-Ex's PNGs. pydicom reads the file; a file without pixel data,
or compressed with a codec no installed decoder reads, is one error naming the file and the reason.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .errors import CovfastError

__all__ = ["DICOM_SUFFIXES", "is_dicom", "read_dicom"]

DICOM_SUFFIXES = (".dcm", ".dicom")


def is_dicom(path: str | Path) -> bool:
    "Whether `path` is a DICOM file: by its name, or by the 'DICM' mark at byte 128 of a DICOM Part 10 file."
    path = Path(path)
    if path.suffix.lower() in DICOM_SUFFIXES:
        return True
    try:
        with open(path, "rb") as f:
            f.seek(128)
            return f.read(4) == b"DICM"
    except OSError:
        return False


def _first(value) -> float:
    "The first of a DICOM value that may be multi-valued (several windows)."
    try:
        return float(value[0])
    except TypeError:
        return float(value)


def read_dicom(path: str | Path) -> np.ndarray:
    "A DICOM X-ray as HxW uint8 grayscale, bone bright (see the module's docstring)."
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise CovfastError(f"{path} is a DICOM file, and reading DICOM needs pydicom: pip install pydicom") from None
    try:
        ds = pydicom.dcmread(path)
    except (InvalidDicomError, EOFError, ValueError, KeyError) as e:
        raise CovfastError(f"not a readable DICOM file ({e.__class__.__name__}: {str(e)[:80]})") from None
    if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
        raise CovfastError("a DICOM file without pixel data (no image in it)")
    try:
        pixels = ds.pixel_array
    except (NotImplementedError, RuntimeError, ValueError) as e:
        syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
        name = getattr(syntax, "name", None) or str(syntax or "an unknown transfer syntax")
        raise CovfastError(f"DICOM pixel data compressed as {name}, which no installed decoder reads ({str(e)[:60]}); "
                           f"pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm") from None
    if pixels.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        pixels = pixels.astype(np.float64).mean(axis=-1)  # a colour capture of an X-ray: its gray
    elif pixels.ndim != 2:
        raise CovfastError(f"a DICOM file with {pixels.shape[0]} frames; covfast reads single X-rays")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    if "WindowCenter" in ds and "WindowWidth" in ds:
        center, width = _first(ds.WindowCenter), max(_first(ds.WindowWidth), 1.0)
        low, high = center - width / 2, center + width / 2
    else:
        if "VOILUTSequence" in ds:
            values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        low, high = float(values.min()), float(values.max())
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0, 1) * 255.0
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        scaled = 255.0 - scaled  # low values bright in the file: inverted, so bone is bright as in the PNGs
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
