"""DICOM X-rays: the stored pixel values as the 8-bit grayscale the models were trained on (bone bright).

The Modality LUT first (Rescale Slope and Intercept), then the first VOI window the file carries (Window
Center and Width), or its VOI LUT, or else the image's own range; an 8-bit image with none of these is kept
as stored (it is already the gray a PNG of it holds). MONOCHROME1 (low values bright) is inverted so bone is
bright, as in COVID-QU-Ex's PNGs. pydicom reads the file, its warnings kept out of the terminal; a file
without pixel data, damaged or cut short, larger than `config.MAX_PIXELS` (checked on the header, before
anything is decoded), or compressed with a codec no installed decoder reads, is one error naming the reason.
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np

from .config import MAX_PIXELS
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


def _first(value) -> float | None:
    "The first of a DICOM value that may be multi-valued (several windows); None when it is empty or not a number."
    try:
        value = value[0] if not isinstance(value, (str, bytes)) and hasattr(value, "__getitem__") else value
        number = float(value)
    except (TypeError, ValueError, IndexError):
        return None
    return number if np.isfinite(number) else None


def _damaged(caught: list) -> str:
    "pydicom's first warning about the file, as the reason a damaged file is named for ('' when it gave none)."
    return f" ({str(caught[0].message).splitlines()[0][:100]})" if caught else ""


def _check_header(ds, damaged: str) -> None:
    "Refuse, before decoding, an image larger than `config.MAX_PIXELS` or uncompressed pixel data shorter than its header says."
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise CovfastError(f"a DICOM image of {cols}x{rows} pixels, larger than covfast reads ({MAX_PIXELS // 1_000_000} "
                           f"megapixels at most); downscale it")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or getattr(syntax, "is_compressed", True) or "PixelData" not in ds:
        return
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    expected = rows * cols * int(getattr(ds, "SamplesPerPixel", 1) or 1) * frames * int(getattr(ds, "BitsAllocated", 8) or 8) // 8
    held = len(ds.PixelData)
    if held < expected:
        raise CovfastError(f"a damaged DICOM file: its header promises {expected} bytes of pixel data ({cols}x{rows}), "
                           f"it holds {held}; it was cut short or not copied whole{damaged}")


def read_dicom(path: str | Path) -> np.ndarray:
    "A DICOM X-ray as HxW uint8 grayscale, bone bright (see the module's docstring)."
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise CovfastError(f"{path} is a DICOM file, and reading DICOM needs pydicom: pip install pydicom") from None
    with warnings.catch_warnings(record=True) as caught:  # pydicom warns of damage; the error below names it instead
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as e:
            raise CovfastError(f"not a readable DICOM file: it is damaged or not DICOM ({e.__class__.__name__}: "
                               f"{str(e)[:80]})") from None
        damaged = _damaged(caught)
        if not any(element.keyword for element in ds):  # noise after the DICM mark parses as unknown elements
            raise CovfastError(f"a damaged DICOM file: none of what pydicom read in it is a DICOM attribute{damaged}")
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            if damaged or "Rows" in ds:  # it describes an image, or pydicom stopped on damage: not a file made without one
                raise CovfastError(f"a damaged DICOM file: pydicom found no pixel data in it{damaged}")
            raise CovfastError("a DICOM file without pixel data (no image in it)")
        _check_header(ds, damaged)
        try:
            pixels = ds.pixel_array
        except (NotImplementedError, RuntimeError) as e:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", None) or str(syntax or "an unknown transfer syntax")
            raise CovfastError(f"DICOM pixel data compressed as {name}, which no installed decoder reads ({str(e)[:60]}); "
                               f"pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm") from None
        except (ValueError, AttributeError, TypeError, KeyError, EOFError) as e:
            raise CovfastError(f"a damaged DICOM file: its pixel data cannot be decoded ({str(e).splitlines()[0][:80]})"
                               f"{damaged}") from None
    if pixels.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        pixels = pixels.astype(np.float64).mean(axis=-1)  # a colour capture of an X-ray: its gray
    elif pixels.ndim != 2:
        raise CovfastError(f"a DICOM file with {pixels.shape[0]} frames; covfast reads single X-rays")
    values = np.asarray(apply_modality_lut(pixels, ds), dtype=np.float64)
    center = _first(ds["WindowCenter"].value) if "WindowCenter" in ds else None
    width = _first(ds["WindowWidth"].value) if "WindowWidth" in ds else None
    rescaled = _first(getattr(ds, "RescaleSlope", 1)) not in (None, 1.0) or _first(getattr(ds, "RescaleIntercept", 0)) not in (None, 0.0)
    if center is not None and width is not None:
        width = max(width, 1.0)
        low, high = center - width / 2, center + width / 2
    elif "VOILUTSequence" in ds:
        values = np.asarray(apply_voi_lut(values, ds), dtype=np.float64)
        low, high = float(values.min()), float(values.max())
    elif int(getattr(ds, "BitsStored", 16) or 16) <= 8 and not rescaled and pixels.dtype.kind == "u":
        low, high = 0.0, 255.0  # 8-bit gray with no window: kept as stored, the same gray as a PNG of it
    else:
        low, high = float(values.min()), float(values.max())
    scaled = np.clip((values - low) / max(high - low, 1e-12), 0, 1) * 255.0
    if str(getattr(ds, "PhotometricInterpretation", "MONOCHROME2")).upper() == "MONOCHROME1":
        scaled = 255.0 - scaled  # low values bright in the file: inverted, so bone is bright as in the PNGs
    return np.clip(scaled + 0.5, 0, 255).astype(np.uint8)
