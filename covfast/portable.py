"""covfast's inference without covfast: an X-ray read as the 8-bit gray the models learned from, the model's input,
its outputs turned into masks at the X-ray's size, the decision, the lungs, infection % of lung and its band.

NumPy and Pillow only (pydicom for DICOM files, onnxruntime to run an exported model): this file imports nothing
of covfast or PyTorch. covfast reads X-rays and grades severity with these functions, and
`examples/onnx_predict.py` runs a `covfast export` (model.onnx and model.json) with them, so a deployer's masks
are covfast's. `python covfast/portable.py EXPORT_DIR XRAY... --out DIR` does the same as the example.
"""

from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

__all__ = ["XrayError", "MAX_PIXELS", "DICOM_SUFFIXES", "OUTLINED", "FLAGGED", "EMPTY", "OUTCOMES", "SEVERITY_BANDS",
           "NO_LUNGS", "is_dicom", "read_dicom", "read_xray", "infection_pct", "severity_band", "severity_band_name",
           "model_input", "resize_bilinear", "decide", "ExportedModel", "main"]

# the largest X-ray read (PNG, JPEG or DICOM); a chest film scanned at 300 dpi is about 4300x5200 pixels
MAX_PIXELS = 50_000_000
DICOM_SUFFIXES = (".dcm", ".dicom")
# The three verdicts on an X-ray (covfast/decision.py says when each is given), in the order tables list them
OUTLINED = "COVID-19 infection"
FLAGGED = "COVID-19 flagged, nothing outlined"
EMPTY = "no COVID-19 infection"
OUTCOMES: tuple[str, ...] = (OUTLINED, FLAGGED, EMPTY)
# Severity bands of infection % of lung: 0, <25, 25-50, 50-75, >=75; an empty lung mask has none
SEVERITY_BANDS = ("0", "<25", "25-50", "50-75", ">=75")
NO_LUNGS = "no lungs found"


class XrayError(ValueError):
    "A file that cannot be read as an X-ray; the message says why."


# ---- reading an X-ray -----------------------------------------------------------------------------------------

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
    "Refuse, before decoding, an image larger than MAX_PIXELS or uncompressed pixel data shorter than its header says."
    rows, cols = int(getattr(ds, "Rows", 0) or 0), int(getattr(ds, "Columns", 0) or 0)
    if rows * cols > MAX_PIXELS:
        raise XrayError(f"a DICOM image of {cols}x{rows} pixels, larger than covfast reads ({MAX_PIXELS // 1_000_000} "
                        f"megapixels at most); downscale it")
    syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
    if syntax is None or getattr(syntax, "is_compressed", True) or "PixelData" not in ds:
        return
    frames = int(getattr(ds, "NumberOfFrames", 1) or 1)
    expected = rows * cols * int(getattr(ds, "SamplesPerPixel", 1) or 1) * frames * int(getattr(ds, "BitsAllocated", 8) or 8) // 8
    held = len(ds.PixelData)
    if held < expected:
        raise XrayError(f"a damaged DICOM file: its header promises {expected} bytes of pixel data ({cols}x{rows}), "
                        f"it holds {held}; it was cut short or not copied whole{damaged}")


def read_dicom(path: str | Path) -> np.ndarray:
    """A DICOM X-ray as HxW uint8 grayscale, bone bright: the Modality LUT first (Rescale Slope and Intercept), then
    the first VOI window the file carries (Window Center and Width), or its VOI LUT, or else the image's own range;
    an 8-bit image with none of these is kept as stored. MONOCHROME1 (low values bright) is inverted. A file without
    pixel data, damaged or cut short, larger than MAX_PIXELS, or compressed with a codec no installed decoder reads,
    is one XrayError naming the reason."""
    try:
        import pydicom
        from pydicom.errors import InvalidDicomError
        from pydicom.pixels import apply_modality_lut, apply_voi_lut
    except ImportError:
        raise XrayError(f"{path} is a DICOM file, and reading DICOM needs pydicom: pip install pydicom") from None
    with warnings.catch_warnings(record=True) as caught:  # pydicom warns of damage; the error below names it instead
        warnings.simplefilter("always")
        try:
            ds = pydicom.dcmread(path)
        except (InvalidDicomError, EOFError, ValueError, KeyError, TypeError, OverflowError) as e:
            raise XrayError(f"not a readable DICOM file: it is damaged or not DICOM ({e.__class__.__name__}: "
                            f"{str(e)[:80]})") from None
        damaged = _damaged(caught)
        if not any(element.keyword for element in ds):  # noise after the DICM mark parses as unknown elements
            raise XrayError(f"a damaged DICOM file: none of what pydicom read in it is a DICOM attribute{damaged}")
        if "PixelData" not in ds and "FloatPixelData" not in ds and "DoubleFloatPixelData" not in ds:
            if damaged or "Rows" in ds:  # it describes an image, or pydicom stopped on damage: not a file made without one
                raise XrayError(f"a damaged DICOM file: pydicom found no pixel data in it{damaged}")
            raise XrayError("a DICOM file without pixel data (no image in it)")
        _check_header(ds, damaged)
        try:
            pixels = ds.pixel_array
        except (NotImplementedError, RuntimeError) as e:
            syntax = getattr(getattr(ds, "file_meta", None), "TransferSyntaxUID", None)
            name = getattr(syntax, "name", None) or str(syntax or "an unknown transfer syntax")
            raise XrayError(f"DICOM pixel data compressed as {name}, which no installed decoder reads ({str(e)[:60]}); "
                            f"pip install pylibjpeg pylibjpeg-libjpeg pylibjpeg-openjpeg, or python-gdcm") from None
        except (ValueError, AttributeError, TypeError, KeyError, EOFError) as e:
            raise XrayError(f"a damaged DICOM file: its pixel data cannot be decoded ({str(e).splitlines()[0][:80]})"
                            f"{damaged}") from None
    if pixels.ndim == 3 and int(getattr(ds, "SamplesPerPixel", 1)) == 3:
        pixels = pixels.astype(np.float64).mean(axis=-1)  # a colour capture of an X-ray: its gray
    elif pixels.ndim != 2:
        raise XrayError(f"a DICOM file with {pixels.shape[0]} frames; covfast reads single X-rays")
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


def read_xray(path: str | Path) -> np.ndarray:
    """Any PNG/JPEG X-ray (8- or 16-bit, grayscale or RGB), or a DICOM one (`read_dicom`), as HxW uint8 gray. A 16-bit
    image is scaled over its full range (x / 65535 x 255, rounded), not clipped as an 8-bit conversion would."""
    if is_dicom(path):
        return read_dicom(path)
    with Image.open(path) as im:
        if im.width * im.height > MAX_PIXELS:
            raise XrayError(f"{im.width}x{im.height} pixels is more than covfast reads "
                            f"({MAX_PIXELS // 1_000_000} megapixels at most); downscale it")
        im.load()
        if im.mode in ("I;16", "I;16B", "I;16L", "I"):
            arr = np.asarray(im, dtype=np.float32)
            top = 65535.0 if arr.max() > 255 or im.mode.startswith("I;16") else 255.0
            return np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8)
        return np.asarray(im.convert("L"))


# ---- severity --------------------------------------------------------------------------------------------------

def infection_pct(mask: np.ndarray, lung: np.ndarray) -> float:
    "Infection % of lung, 100 |mask ∩ lung| / |lung| (boolean arrays of one shape); NaN when the lung mask is empty."
    n_lung = int(lung.sum())
    return 100.0 * int((mask & lung).sum()) / n_lung if n_lung else float("nan")


def severity_band(pct: np.ndarray | float) -> np.ndarray:
    "Band index 0..4 of infection % of lung (callers leave out NaN, the undefined % of an empty lung mask)."
    pct = np.asarray(pct, dtype=float)
    return np.where(pct <= 0, 0, np.digitize(pct, [25, 50, 75]) + 1)


def severity_band_name(pct: float) -> str:
    "The band of one infection % of lung: '0', '<25', '25-50', '50-75', '>=75' or NO_LUNGS."
    return NO_LUNGS if pct != pct else SEVERITY_BANDS[int(severity_band(pct))]


# ---- the model's input and its outputs -------------------------------------------------------------------------

def model_input(grays: list[np.ndarray], width: int, height: int, mean, std) -> np.ndarray:
    """(B, 3, height, width) float32 of uint8 gray X-rays, as covfast's validation pipeline makes it: Pillow's bilinear
    resize (antialiased when it shrinks; no aspect kept), the gray repeated over 3 channels, / 255, minus `mean`
    and over `std` per channel."""
    x = np.stack([np.asarray(Image.fromarray(g).resize((width, height), Image.BILINEAR)) for g in grays])
    x = np.repeat(x[:, None], 3, axis=1).astype(np.float32) / np.float32(255.0)
    mean = np.asarray(mean, dtype=np.float32)[None, :, None, None]
    std = np.asarray(std, dtype=np.float32)[None, :, None, None]
    return (x - mean) / std


def _source(n_in: int, n_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    "Indices and weights of a bilinear resize along one axis (half-pixel centres, PyTorch's align_corners=False)."
    scale = np.float32(n_in / n_out)
    real = np.maximum((np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * scale - np.float32(0.5), np.float32(0))
    i0 = np.minimum(real.astype(np.int64), n_in - 1)
    lam1 = np.clip(real - i0.astype(np.float32), 0, 1).astype(np.float32)
    i1 = np.where(i0 < n_in - 1, i0 + 1, i0)
    return i0, i1, (np.float32(1) - lam1).astype(np.float32), lam1


def resize_bilinear(x: np.ndarray, height: int, width: int) -> np.ndarray:
    "(C, h, w) float32 maps resized to (C, height, width) as `torch.nn.functional.interpolate(mode='bilinear')` does."
    if x.shape[-2:] == (height, width):
        return x
    h0, h1, a0, a1 = _source(x.shape[-2], height)
    w0, w1, b0, b1 = _source(x.shape[-1], width)
    top = x[:, h0][:, :, w0] * b0 + x[:, h0][:, :, w1] * b1
    bottom = x[:, h1][:, :, w0] * b0 + x[:, h1][:, :, w1] * b1
    return top * a0[:, None] + bottom * a1[:, None]


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return (np.float32(1) / (np.float32(1) + np.exp(-np.asarray(x, dtype=np.float32)))).astype(np.float32)


def decide(outputs: dict[str, np.ndarray], shape: tuple[int, int], threshold: float, inside_lungs: bool = False) -> dict[str, Any]:
    """One X-ray's masks and verdict from a model's outputs for it (`infection` (2, h, w) logits; optional `covid`, the
    image logit, and `lung` (2, h, w) logits) at the X-ray's `shape` (H, W), as covfast decides: infection where its
    logit beats the background's after a bilinear resize; with the image logit, an empty mask unless its sigmoid is
    above `threshold`; with `inside_lungs`, only inside the predicted lungs."""
    h, w = shape
    infection = resize_bilinear(np.asarray(outputs["infection"], dtype=np.float32), h, w)
    mask = infection[1] > infection[0]
    lung = None
    if outputs.get("lung") is not None:
        lungs = resize_bilinear(np.asarray(outputs["lung"], dtype=np.float32), h, w)
        lung = lungs[1] > lungs[0]
        if inside_lungs:
            mask = mask & lung
    prob = float(_sigmoid(outputs["covid"]).reshape(-1)[0]) if outputs.get("covid") is not None else float("nan")
    kept = None if prob != prob else prob > threshold
    if kept is False:
        mask = np.zeros_like(mask)
    verdict = OUTLINED if mask.any() else FLAGGED if kept else EMPTY
    pct = infection_pct(mask, lung) if lung is not None else float("nan")
    return {"mask": mask, "lung": lung, "p_covid": prob, "decision": verdict, "infection_pct_of_lung": pct,
            "severity_band": severity_band_name(pct) if lung is not None else ""}


class ExportedModel:
    "A `covfast export` folder (model.onnx, model.json) through onnxruntime: X-rays in, `decide`'s results out."

    def __init__(self, folder: str | Path):
        import onnxruntime
        folder = Path(folder)
        self.sidecar = json.loads((folder / "model.json").read_text())
        self.session = onnxruntime.InferenceSession(str(folder / self.sidecar.get("model", "model.onnx")),
                                                    providers=["CPUExecutionProvider"])
        self.names = [o.name for o in self.session.get_outputs()]  # the graph's own names, whatever the sidecar lists
        _, _, self.height, self.width = self.sidecar["input"]["shape"]
        self.mean, self.std = self.sidecar["input"]["mean"], self.sidecar["input"]["std"]
        decision = self.sidecar["decision"]
        self.threshold, self.inside_lungs = float(decision["threshold"]), bool(decision.get("inside_lungs", False))

    def outputs(self, grays: list[np.ndarray]) -> list[dict[str, np.ndarray]]:
        "The model's outputs for each X-ray (uint8 gray), by output name, one dict per X-ray."
        got = self.session.run(None, {"image": model_input(grays, self.width, self.height, self.mean, self.std)})
        return [{n: o[i] for n, o in zip(self.names, got)} for i in range(len(grays))]

    def __call__(self, grays: list[np.ndarray]) -> list[dict[str, Any]]:
        return [decide(out, g.shape, self.threshold, self.inside_lungs) for out, g in zip(self.outputs(grays), grays)]


def main(argv: list[str] | None = None) -> int:
    "`EXPORT_DIR XRAY... --out DIR`: <stem>.png infection masks (0/255) in DIR, and a line per X-ray."
    p = argparse.ArgumentParser(description="Outline COVID-19 infection with a covfast export (model.onnx + model.json), "
                                            "without covfast or PyTorch.")
    p.add_argument("export_dir", type=Path, help="the folder `covfast export` wrote (model.onnx and model.json)")
    p.add_argument("xrays", type=Path, nargs="+", help="X-rays: PNG or JPEG (8- or 16-bit) or DICOM")
    p.add_argument("--out", type=Path, required=True, help="folder for the <stem>.png infection masks (0/255)")
    args = p.parse_args(argv)
    model = ExportedModel(args.export_dir)
    args.out.mkdir(parents=True, exist_ok=True)
    failed = 0
    for path in args.xrays:
        try:
            gray = read_xray(path)
        except (XrayError, OSError) as e:
            print(f"{path}: could not be read: {e}", file=sys.stderr)
            failed += 1
            continue
        result = model([gray])[0]
        Image.fromarray(result["mask"].astype(np.uint8) * 255).save(args.out / f"{path.stem}.png")
        pct = result["infection_pct_of_lung"]
        severity = f", {pct:.1f}% of the lungs (band {result['severity_band']})" if pct == pct else ""
        print(f"{path}: {result['decision']} (p {result['p_covid']:.4f}){severity}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
