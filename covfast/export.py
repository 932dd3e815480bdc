"""ONNX export: a run's best weights for onnxruntime, beside a JSON sidecar holding everything needed to use
them without covfast (input size and normalisation, the outputs, the decision, the classes, the weights' hash).

Exported with PyTorch's TorchScript-based exporter (`torch.onnx.export(..., dynamo=False)`), opset 17, in fp32
and eval mode. The batch axis is dynamic; the input size is fixed at the run's own: fastai's DynamicUnet takes
its shape branches (UnetBlock's resize of the upsampled features, ResizeToOrig) when it is traced, so
resizing happens outside the graph, before (the X-ray to the input size) and after (the logits back to the
X-ray's). PixelShuffle is exported as DepthToSpace; covfast's models use no spectral norm (no self-attention).
Export checks itself: onnxruntime against PyTorch on a few images, the largest logit difference printed and
bounded.
"""

from __future__ import annotations

import json
import shutil
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch
from fastai.vision.core import imagenet_stats
from torch import nn

from . import __version__, portable
from .config import Config
from .dataset import SPLITS, scan_tree
from .errors import CovfastError
from .inference import Run, _input_size, load_run, run_record, uncalibrated_note, validation_batch
from .predictor import _batch_pixels
from .outputs import OUTPUTS, ModelOutput, model_output
from .archs import ENSEMBLE
from .ensemble import weights_digest
from .runs import run_subdir, sha256, write_json

__all__ = ["EXPORTER", "OPSET", "TOLERANCE", "to_onnx", "export", "OnnxModel", "load_onnx", "check_export", "stale_export_note"]

EXPORTER = "torch.onnx.export, TorchScript-based exporter (dynamo=False)"
OPSET = 17
# the largest |logit difference| between onnxruntime and PyTorch that export accepts (fp32 both: measured
# 5e-6 to 3e-5 on covfast's models)
TOLERANCE = 1e-3


def _onnx():
    "onnxruntime, or one line naming the extra that brings it."
    try:
        import onnx  # noqa: F401  (the exporter needs it)
        import onnxruntime
    except ImportError:
        raise CovfastError('ONNX export and --engine onnx need onnx and onnxruntime: pip install "covfast[export]"') from None
    return onnxruntime


class _Tuple(nn.Module):
    "The model with its outputs as a plain tuple, in `ModelOutput` order: what the exporter traces."

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        return tuple(self.model(x))


def to_onnx(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    "`model` (eval, fp32) as ONNX at `path`: its outputs by their names, the batch axis dynamic, the rest fixed by `example`."
    with torch.no_grad():
        names = list(model(example).names)
    wrapped = _Tuple(model).eval()  # eval: the exporter restores the wrapper's mode, and the model's with it
    with warnings.catch_warnings():  # the TorchScript exporter's notes on traced shape branches: the size is fixed
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, (example,), str(path), input_names=["image"], output_names=names, opset_version=OPSET,
                          dynamic_axes={"image": {0: "batch"}, **{n: {0: "batch"} for n in names}}, dynamo=False)
    return path


def _check_images(learn, run: Run, n: int = 4) -> torch.Tensor:
    "A few of the run's own X-rays as the model sees them (validation transforms); random inputs without its data."
    size = _input_size(learn)
    try:
        items = scan_tree(run.spec.data_root, SPLITS, run.spec.classes).groupby("label").head(max(1, n // 3)).head(n)
    except CovfastError:
        items = pd.DataFrame()
    if len(items):
        return validation_batch(learn, _batch_pixels(items, size, False))[0].as_subclass(torch.Tensor).float().contiguous()
    return torch.randn(n, 3, size[1], size[0], generator=torch.Generator().manual_seed(0))


def _check_exportable(run: Run) -> None:
    "One line when the run cannot be one ONNX graph: an ensemble whose members take different input sizes."
    sizes = sorted({m.get("img_size") for m in run.record.get("members", [])} - {None})
    if run.spec.arch == ENSEMBLE and len(sizes) > 1:
        raise CovfastError(f"ensemble {run.name}'s members take different input sizes "
                           f"({', '.join(f'{s} px' for s in sizes)}) and one ONNX graph takes one: export each member "
                           f"(covfast export MEMBER), or make the ensemble of members of one size")


def _ensemble_note(run: Run) -> dict[str, Any]:
    "What the sidecar of an ensemble's graph says of its members and how the graph combines them."
    members = run.record["members"]
    return {"members": [{"name": m["name"], "arch": m["arch"], "model_sha256": m["model_sha256"]} for m in members],
            "combined": (f"inside the graph: the mean of the {len(members)} members' probabilities (softmax of each "
                         f"segmentation's logits, sigmoid of the image logit), returned as log-probabilities and the "
                         f"logit of the mean image probability, so the activations above give the means back")}


def export(
    run: str | Path,  # run directory or its name under runs_dir
    out: str | Path | None = None,  # folder for model.onnx and model.json (default: <run>/export)
    config: Config | None = None,  # for runs_dir
) -> tuple[Path, dict[str, Any], float]:
    "Write the run's model.pth as model.onnx with its sidecar model.json; returns the ONNX path, the sidecar and the check's max |logit difference|."
    ort = _onnx()
    config = config or Config()
    _check_exportable(run_record(run, config.runs_dir))  # before the members' weights are loaded
    learn, loaded = load_run(run, config.runs_dir, device="cpu", precision="fp32")
    model = learn.model.eval().to(memory_format=torch.contiguous_format)
    out = Path(out) if out else run_subdir(loaded.dir, "export")
    out.mkdir(parents=True, exist_ok=True)
    width, height = _input_size(learn)
    x = _check_images(learn, loaded)
    with torch.no_grad():
        reference = model(x)
    names = list(reference.names)
    path = to_onnx(model, x[:1], out / "model.onnx")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = session.run(None, {"image": x.numpy()})
    diff = max(float(np.abs(g - r.numpy()).max()) for g, r in zip(got, reference))
    if not diff <= TOLERANCE:
        raise CovfastError(f"{path}: onnxruntime's logits differ from PyTorch's by up to {diff:.2e} (more than "
                           f"{TOLERANCE:g}); the export is not faithful, do not use it")
    mean, std = imagenet_stats
    decision, uncalibrated = loaded.decision, uncalibrated_note(loaded)
    sidecar = {
        "model": "model.onnx", "covfast_version": __version__, "exporter": EXPORTER, "opset": OPSET,
        "arch": loaded.spec.arch, "weights_sha256": weights_digest(loaded.dir, loaded.record), "run": loaded.name,
        "input": {"name": "image", "shape": ["batch", 3, height, width], "dtype": "float32",
                  "from_xray": (f"read the X-ray as 8-bit gray: an 8-bit PNG or JPEG as its luminance (Pillow's "
                                f"convert('L')); a 16-bit PNG scaled over its full range (round(x / 65535 x 255)), not "
                                f"clipped; a DICOM through its Modality LUT and first VOI window (else its own range), "
                                f"MONOCHROME1 inverted; then resize it to {width}x{height} with Pillow's bilinear resize "
                                f"(antialiased when it shrinks, no aspect kept), repeat it over 3 channels, divide by 255, "
                                f"subtract mean and divide by std per channel. onnx_predict.py beside this file does all of "
                                f"it, with NumPy and Pillow"),
                  "mean": list(mean), "std": list(std)},
        "outputs": {o.name: o.sidecar for o in OUTPUTS.values() if o.name in names and o.sidecar},
        "to_xray": ("resize the logits to the X-ray's size (bilinear, half-pixel centres: PyTorch's align_corners=False) "
                    "before taking the masks"),
        "standalone": ("python onnx_predict.py EXPORT_DIR XRAY... --out DIR: <stem>.png infection masks (0/255) and the "
                       "decision and severity of each X-ray, with onnxruntime, NumPy and Pillow (pydicom for DICOM)"),
        **({"ensemble": _ensemble_note(loaded)} if loaded.spec.arch == ENSEMBLE else {}),
        "model_sha256": sha256(path),
        "decision": {"threshold": decision.threshold, "rule": "an X-ray whose probability is at or below the threshold "
                     "gets an empty infection mask", "inside_lungs": bool(decision.inside_lungs and "lung" in names),
                     "calibrated_on": decision.split,
                     **({"not_calibrated": uncalibrated} if uncalibrated else {})},
        "classes": list(loaded.spec.classes), "checked": {"images": len(x), "max_abs_logit_difference": diff,
                                                          "tolerance": TOLERANCE},
    }
    write_json(out / "model.json", sidecar)
    # the reading, resizing and decision in NumPy, so the export runs without covfast (a copy: it imports nothing of covfast)
    shutil.copyfile(Path(portable.__file__), out / "onnx_predict.py")
    return path, sidecar, diff


class OnnxModel:
    "An exported model through onnxruntime, called as covfast calls its PyTorch models: images in, `ModelOutput` out."

    def __init__(self, path: str | Path):
        ort = _onnx()
        self.path = Path(path)
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime's own errors (INVALID_PROTOBUF, ...) for a file that is not a model
            first = str(e).strip().splitlines()[0][:160] if str(e).strip() else e.__class__.__name__
            raise CovfastError(f"{path} is not an ONNX model onnxruntime can load ({first}); it is damaged or was "
                               f"replaced: run `covfast export` again") from None
        # the outputs by the names the graph gives them, whatever order a sidecar lists them in
        self.names = [o.name for o in self.session.get_outputs()]

    def __call__(self, x: torch.Tensor) -> ModelOutput:
        outputs = self.session.run(None, {"image": x.detach().float().contiguous().cpu().numpy()})
        return model_output(**{n: torch.from_numpy(o) for n, o in zip(self.names, outputs)})

    def eval(self) -> "OnnxModel":
        return self

    def to(self, *args, **kwargs) -> "OnnxModel":
        return self


def stale_export_note(run: Run) -> str:
    """One line when the run's export holds another decision than calibration.json now does (calibrated again
    after `covfast export`); '' when there is no export or it is current."""
    try:
        said = json.loads((run.dir / "export" / "model.json").read_text())["decision"]
        threshold, inside = float(said["threshold"]), bool(said.get("inside_lungs", False))
    except (OSError, ValueError, KeyError, TypeError):
        return ""
    lungs = run.spec.lungs and run.decision.inside_lungs
    if threshold == run.decision.threshold and inside == lungs:
        return ""
    return (f"{run.dir / 'export' / 'model.json'} holds threshold {threshold:.4g}"
            f"{' (infection inside the lungs)' if inside else ''}, the run's decision is now {run.decision.threshold:.4g}"
            f"{' (infection inside the lungs)' if lungs else ''}: run `covfast export {run.name}` again")


def load_onnx(run: Run) -> OnnxModel:
    """A run's exported model (<run>/export), checked to be of the run's current weights and decision, the very
    model.onnx export wrote beside its sidecar, with the outputs the sidecar lists (`check_export`)."""
    return check_export(run)[1]


def check_export(run: Run) -> tuple[Path, OnnxModel]:
    """The run's export folder and its model, refused in one line unless it holds the run's current weights and
    decision, the very model.onnx export wrote beside its sidecar, with the outputs the sidecar lists."""
    folder = run.dir / "export"
    again = f"run `covfast export {run.name}` again"
    if not (folder / "model.onnx").is_file() or not (folder / "model.json").is_file():
        raise CovfastError(f"{run.dir} has no ONNX export; run `covfast export {run.name}` first")
    try:
        sidecar = json.loads((folder / "model.json").read_text())
        listed = set(sidecar["outputs"])
    except (ValueError, KeyError, TypeError):
        raise CovfastError(f"{folder / 'model.json'} is not the sidecar covfast export writes; {again}") from None
    if sidecar.get("weights_sha256") != weights_digest(run.dir, run.record):
        raise CovfastError(f"{folder / 'model.onnx'} was exported from other weights than {run.name}'s; {again}")
    if sidecar.get("model_sha256") != sha256(folder / "model.onnx"):
        raise CovfastError(f"{folder / 'model.onnx'} is not the file `covfast export` wrote beside {folder / 'model.json'} "
                           f"(its SHA-256 differs{'' if 'model_sha256' in sidecar else ': the sidecar predates the check'}); "
                           f"{again}")
    stale = stale_export_note(run)
    if stale:
        raise CovfastError(stale)
    model = OnnxModel(folder / "model.onnx")
    if set(model.names) != listed:
        raise CovfastError(f"{folder / 'model.json'} lists the outputs {', '.join(sorted(listed)) or 'none'}, but "
                           f"{folder / 'model.onnx'} has {', '.join(sorted(model.names))}; {again}")
    return folder, model
