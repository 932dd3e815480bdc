"""New X-rays -> masks at the input's resolution, red overlays and infection percentages."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime
from typing import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from .config import Config
from .errors import CovfastError
from .decision import EMPTY, FLAGGED, OUTLINED, Prediction, predict_batch, predict_one
from .inputs import _cached_xray, collect_images, read_mask
from .overlays import captioned, overlay
from .portable import infection_pct, severity_band_name
from .predictor import Predictor, load_predictor, run_record, uncalibrated_note
from .outputs import figure_labels
from .runs import resolve_run, run_subdir

__all__ = ["COLUMNS", "CAPTION_NOTE", "PredictFailure", "Outline", "outline", "predict",
           "caption", "prediction_summary"]

# the end of every overlay's caption
CAPTION_NOTE = "research code, not a medical device"
# threads that make each X-ray's outline and write its PNGs beside the model, and the PNGs' zlib level: on 812 Test
# X-rays (2 cores) the pool took covfast predict from 24.5 s to 20.6 s, and level 1 (PIL's default is 6) to 17.5 s,
# for 10% larger files (benchmarks/README.md)
WRITERS = 2
PNG_LEVEL = 1
# predictions.csv's columns
COLUMNS = ["file", "width", "height", "p_covid", "decision", "infected_pixels", "infection_pct_image", "lung_pixels",
           "infection_pct_of_lung", "severity_band", "lung_source", "mask", "lung_mask", "overlay"]


def _unique_stem(path: Path, taken: set[str]) -> str:
    stem, n = path.stem, 1
    while stem in taken:
        n += 1
        stem = f"{path.stem}-{n}"
    taken.add(stem)
    return stem


@dataclass(frozen=True)
class PredictFailure:
    "One thing `predict` could not do: the X-ray unread ('image', no prediction), or its lung mask unused ('lung_mask')."
    kind: str
    path: Path
    reason: str

    def __str__(self) -> str:
        if self.kind == "image":
            return f"{self.path}: not a readable image ({self.reason})"
        return (f"{self.path}: lung mask not used ({self.reason}); infection % of lung from the model's own lungs, "
                f"or left empty for a run without them")


def _inside(path: Path, folder: Path) -> bool:
    return path.resolve() == folder.resolve() or folder.resolve() in path.resolve().parents


def predict(
    run: str | Path,  # run directory or its name under runs_dir
    paths: list[str | Path],  # image files and/or folders
    out: str | Path | None = None,  # output folder (default: <run>/predictions/<time>); must not hold results
    lung_masks: str | Path | None = None,  # folder of lung masks named like the images: used instead of the model's lungs
    config: Config | None = None,
    device: str | None = None,
    progress=None,
    on_error=None,  # called with each `PredictFailure` as it happens
    say=None,  # called with one line of note (a run without the lung output and no --lung-masks)
    engine: str = "torch",  # "torch", or "onnx": the run's `covfast export` through onnxruntime
) -> tuple[pd.DataFrame, list[PredictFailure], Path]:
    """Masks (0/255, input resolution), the model's lung masks, overlays (infection red, lungs outlined in cyan) and
    predictions.csv for new X-rays, with infection % of lung and its severity band; failures are reported, not fatal.

    The lungs are the model's own (runs trained with the lung output) unless `lung_masks` gives them; an empty
    lung mask leaves infection % of lung empty and the band 'no lungs found' (`metrics.NO_LUNGS`)."""
    config = config or Config()
    if lung_masks is not None and not Path(lung_masks).is_dir():
        raise CovfastError(f"--lung-masks {lung_masks} is not a folder; pass the folder of 0/255 lung masks named like the images")
    if out is not None and Path(out).exists() and not Path(out).is_dir():
        raise CovfastError(f"--out {out} is a file; pass a folder (new, or without predictions.csv)")
    for p in map(Path, paths):
        if out is not None and p.is_dir() and _inside(Path(out), p):
            raise CovfastError(f"--out {out} is inside the input folder {p}: a later run would read its masks and overlays "
                               f"as X-rays; choose an --out outside it")
    if engine not in ("torch", "onnx"):
        raise CovfastError(f"--engine {engine!r} is not one of torch, onnx")
    run = resolve_run(run, config.runs_dir)  # a wrong run is refused before a large folder is searched
    files = collect_images(paths, say)
    if engine == "onnx":  # the export through onnxruntime and covfast/portable.py: no learner, no PyTorch model
        from .export import check_export
        from .portable import ExportedModel
        loaded = run_record(run)
        exported = ExportedModel(check_export(loaded)[0])
    else:  # PyTorch alone: fastai loads only where the model is fastai's (a DynamicUnet)
        predictor, loaded = load_predictor(run, device=device, precision=config.precision)
    out = Path(out) if out else run_subdir(loaded.dir, "predictions", f"{datetime.now():%Y%m%d-%H%M%S}")
    if (out / "predictions.csv").exists():
        raise CovfastError(f"{out} already holds predictions.csv; choose another --out")
    uncalibrated = uncalibrated_note(loaded)
    if say and uncalibrated:
        say(uncalibrated)
    if not loaded.spec.lungs and lung_masks is None and say:
        say(f"{loaded.name} has no lung output (it was trained before covfast outlined the lungs): infection % of lung "
            f"needs --lung-masks")
    folders = ("masks", "overlays", *(("lungs",) if loaded.spec.lungs else ()))
    for folder in folders:
        (out / folder).mkdir(parents=True, exist_ok=True)
    failures: list[PredictFailure] = []

    def fail(kind: str, path: Path, reason: str) -> None:
        failures.append(PredictFailure(kind, path, reason))
        if on_error:
            on_error(failures[-1])

    good = []
    for f in files:
        try:
            _cached_xray(str(f))  # decode once: a bad file is found here, and the loader reuses the pixels
            good.append(f)
        except CovfastError as e:
            fail("image", f, str(e))
        except Exception as e:  # PIL raises many types for a file that is not an image
            fail("image", f, f"{e.__class__.__name__}: {str(e)[:100]}")
    rows, taken = [], set()
    if good:
        # (index, `Prediction`) per X-ray, made a batch at a time on this thread, where torch's upsampling runs
        if engine == "onnx":
            predictions = _exported_predictions(exported, good, config.bs, progress)
        else:
            items = pd.DataFrame({"image": [str(f) for f in good]})
            predictions = _torch_predictions(predictor, loaded.decision, items, config.bs, progress)
        # each X-ray's overlay and its three PNGs are made in a small pool while the model runs on the next batch
        # (PIL's encoding releases the GIL); names, failures and rows keep the files' order. The pool does no torch
        # work: torch ops there contended with the model's own threads and slowed both
        with ThreadPoolExecutor(max_workers=WRITERS) as pool:
            pending = []
            for i, predicted in predictions:
                f = good[i]
                given = _given_lung(Path(lung_masks) / f.name, _cached_xray(str(f)).shape, fail) if lung_masks else None
                pending.append(pool.submit(_write, f, _unique_stem(f, taken), predicted, given, out))
            rows = [p.result() for p in pending]
    # then the figures the model's other outputs declare (`outputs.OutputKind.figures`), where it has them
    table = pd.DataFrame(rows, columns=COLUMNS + [c for c in figure_labels() if any(c in row for row in rows)])
    # four decimals say all a probability or a percentage of these masks can (17 digits said noise)
    table.round({"p_covid": 4, "infection_pct_image": 4, "infection_pct_of_lung": 4}).to_csv(out / "predictions.csv", index=False)
    return table, failures, out


def _write(f: Path, stem: str, predicted: Prediction, given: np.ndarray | None, out: Path) -> dict:
    "One X-ray's `Outline` (of its `Prediction`), its mask, lungs and captioned overlay as PNGs; its predictions.csv row."
    result = _outline(_cached_xray(str(f)), predicted, given)
    save = dict(compress_level=PNG_LEVEL)
    Image.fromarray(result.mask.astype(np.uint8) * 255).save(out / "masks" / f"{stem}.png", **save)
    if result.predicted_lung is not None:
        Image.fromarray(result.predicted_lung.astype(np.uint8) * 255).save(out / "lungs" / f"{stem}.png", **save)
    Image.fromarray(captioned(result.overlay, result.caption)).save(out / "overlays" / f"{stem}.png", **save)
    return {"file": str(f), **result.row(), "mask": f"masks/{stem}.png",
            "lung_mask": f"lungs/{stem}.png" if result.predicted_lung is not None else "", "overlay": f"overlays/{stem}.png"}


def caption(decided: str, prob: float, pct: float) -> str:
    "An overlay's caption: the verdict (`decision.OUTCOMES`) and its probability, the outline's share of the lungs, and what it is not."
    said = f"{decided} (p {prob:.2f})" if prob == prob else decided
    share = f" · {pct:.1f}% of lung" if pct == pct else ""
    return f"{said}{share} · {CAPTION_NOTE}"


def prediction_summary(table: pd.DataFrame, failures: list[PredictFailure], folder: Path) -> str:
    "The line `covfast predict` ends with: X-rays per verdict and failed, and where the files are."
    unread = sum(f.kind == "image" for f in failures)
    count = lambda said: int((table.decision == said).sum())  # noqa: E731
    flagged = count(FLAGGED)
    return (f"{len(table) + unread} X-rays: {count(OUTLINED)} outlined ({OUTLINED}), "
            + (f"{flagged} {FLAGGED}, " if flagged else "")
            + f"{count(EMPTY)} left empty ({EMPTY}), {unread} could not be read. Masks, overlays and predictions.csv "
              f"are in {folder}")


@dataclass
class Outline:
    "What covfast says of one X-ray: its masks at the X-ray's resolution, the decision and severity, the overlay."
    gray: np.ndarray  # the X-ray, (H, W) uint8
    mask: np.ndarray  # the infection, (H, W) bool, after the decision
    prob: float  # the image head's probability (NaN without the head)
    decided: str  # the verdict: one of `decision.OUTCOMES`
    lung: np.ndarray | None  # the lungs severity is measured with (given, else the model's own), or None
    lung_source: str  # "given", "predicted" or ""
    predicted_lung: np.ndarray | None  # the model's own lungs, or None
    pct: float  # infection % of lung (NaN: no lungs to measure with, or empty ones)
    overlay: np.ndarray  # RGB: infection red, lungs outlined cyan
    caption: str  # what the overlay files carry below the picture
    figures: dict[str, float] = field(default_factory=dict)  # what the model's other outputs declare (`OutputKind.figures`)

    def row(self) -> dict:
        "Its figures, as predictions.csv holds them."
        return {"width": self.gray.shape[1], "height": self.gray.shape[0], "p_covid": self.prob, "decision": self.decided,
                "infected_pixels": int(self.mask.sum()), "infection_pct_image": 100.0 * self.mask.mean(),
                "lung_pixels": int(self.lung.sum()) if self.lung is not None else None, "infection_pct_of_lung": self.pct,
                "severity_band": severity_band_name(self.pct) if self.lung is not None else "",
                "lung_source": self.lung_source, **self.figures}


def outline(output, gray: np.ndarray, decision, given_lung: np.ndarray | None = None) -> Outline:
    "One X-ray's `Outline` from the model's outputs for it (a batch of 1, `inference.iter_outputs`) and the run's decision."
    return _outline(gray, predict_one(output, decision, gray.shape), given_lung)


def _outline(gray: np.ndarray, said: Prediction, given_lung: np.ndarray | None) -> Outline:
    "The `Outline` of an X-ray and its `Prediction`: severity in the given lungs, else the model's own."
    mask, p, decided, predicted = said.mask, said.p_covid, said.verdict, said.lung
    lung, source = (given_lung, "given") if given_lung is not None else (predicted, "predicted" if predicted is not None else "")
    pct = infection_pct(mask, lung) if lung is not None else float("nan")
    return Outline(gray, mask, p, decided, lung, source, predicted, pct, overlay(gray, mask, lung=lung),
                   caption(decided, p, pct), said.figures)


def _torch_predictions(predictor: Predictor, decision, items: pd.DataFrame, bs: int,
                       progress) -> Iterator[tuple[int, Prediction]]:
    "(index, `Prediction`) per X-ray of `items`, through the run's model (`predictor.Predictor`)."
    for start, out in predictor.batches(items, bs, progress):
        shapes = [_cached_xray(path).shape for path in items.image.iloc[start:start + len(out[0])]]
        yield from enumerate(predict_batch(out, decision, shapes), start)


def _exported_predictions(model, files: list[Path], bs: int, progress) -> Iterator[tuple[int, Prediction]]:
    "(index, `Prediction`) per X-ray, through an export (`portable.ExportedModel`), batched."
    starts = range(0, len(files), bs)
    for start in (progress(starts, len(starts)) if progress is not None else starts):
        for k, r in enumerate(model([_cached_xray(str(f)) for f in files[start:start + bs]])):
            yield start + k, Prediction(r["mask"], r["lung"], r["p_covid"], r["decision"])


def _given_lung(path: Path, shape: tuple[int, int], fail) -> np.ndarray | None:
    "The lung mask given for an X-ray of `shape`, or None (and a failure) when it is missing or unusable."
    try:
        lung = read_mask(path).astype(bool)
        if lung.shape != shape:
            raise CovfastError(f"{lung.shape[1]}x{lung.shape[0]} against the X-ray's {shape[1]}x{shape[0]}")
        return lung
    except FileNotFoundError:
        fail("lung_mask", path, "no lung mask of that name")
    except CovfastError as e:  # the prediction stands; only its % of lung is missing
        fail("lung_mask", path, str(e).split(" besides")[0])
    except Exception as e:
        fail("lung_mask", path, f"{e.__class__.__name__}: {str(e)[:100]}")
    return None
