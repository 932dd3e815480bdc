"""The `covfast` command line: parses arguments and calls library functions a notebook can call too."""

from __future__ import annotations

import errno
import os
import sys
import traceback
from pathlib import Path
from typing import Annotated, Iterable, Optional

import typer

try:  # typer >= 0.24 vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException
from typer.core import TyperGroup, TyperOption

from . import __version__
from .archs import arch_help, check_arch
from .config import DEFAULT_CLS_WEIGHT, DEFAULT_LUNG_WEIGHT, MAXIMUMS, Config, load_config
from .errors import CovfastError, environment_problem, format_problems, os_problem

__all__ = ["app", "main"]


class _Group(TyperGroup):
    "Bad input (CovfastError) -> one line on stderr and exit 2; other errors one line and exit 1; --debug shows tracebacks."

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if (ctx.obj or {}).get("debug"):  # the traceback, then the same line and exit code as without --debug
                traceback.print_exc()
            if isinstance(e, CovfastError):
                typer.echo(f"covfast: error: {e}", err=True)
                raise typer.Exit(2)
            if isinstance(e, OSError):  # the machine's side: a full disk, a read-only folder, a file where a folder goes
                typer.echo(f"covfast: error: {os_problem(e)}", err=True)
                raise typer.Exit(2)
            installation = environment_problem(e)  # the installation, not the command: what to install
            if installation:
                typer.echo(f"covfast: error: {installation}", err=True)
                raise typer.Exit(1)
            if isinstance(e, RuntimeError) and str(e).startswith("Symlink loop"):  # pathlib's resolve() says so
                path = str(e).split("from ", 1)[-1].strip("'")
                typer.echo(f"covfast: error: {os_problem(OSError(errno.ELOOP, 'Too many levels of symbolic links', path))}",
                           err=True)
                raise typer.Exit(2)
            typer.echo(f"covfast: error: {e.__class__.__name__}: {e} (rerun with --debug for the traceback)", err=True)
            raise typer.Exit(1)


_type_column = getattr(TyperOption, "display_type_rich", None)


def _no_metavar_for_flags(self, ctx):
    "typer 0.29's help lists flags (--help, --pretrained/--no-pretrained) with a <bool> type, as if they took a value."
    return None if getattr(self, "is_flag", False) else _type_column(self, ctx)


if _type_column is not None:  # typer versions without it show no such type
    TyperOption.display_type_rich = _no_metavar_for_flags

app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Find and outline COVID-19 infection in chest X-rays (COVID-QU-Ex) with fastai.")
data_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Count and check a COVID-QU-Ex tree.")
app.add_typer(data_app, name="data")

def _defaults() -> Config:
    "The run defaults in force where covfast runs (./settings.ini, COVFAST_*), for --help; the packaged ones if unreadable."
    try:
        return load_config()
    except CovfastError:  # the command itself reports the bad setting
        return Config()


SET = _defaults()
_FROM = "(settings.ini / COVFAST_{})"

DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Dataset root: the folder holding 'Infection Segmentation Data', that folder, "
                   f"or a train/val/test tree. Default: {SET.data_path} {_FROM.format('DATA_PATH')}.",
    show_default=False)]


RunDataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Dataset root to score: the folder holding 'Infection Segmentation Data', that folder, or a "
                   "train/val/test tree. Default: the data the run was trained on (its config.json).",
    show_default=False)]


def _version(value: bool) -> None:
    if value:
        typer.echo(f"covfast {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[bool, typer.Option("--version", callback=_version, is_eager=True,
                                          help="Print covfast's version and exit.")] = False,
    debug: Annotated[bool, typer.Option("--debug", envvar="COVFAST_DEBUG",
                                        help="Show full tracebacks instead of one-line errors.")] = False,
) -> None:
    ctx.obj = {"debug": debug}


def _check_runs(*runs: str) -> None:
    "Refuse a run that does not exist (a typo) before torch and fastai load, which takes seconds."
    from .runs import resolve_run

    runs_dir = load_config().runs_dir
    for run in runs:
        resolve_run(run, runs_dir)


def _progress(description: str):
    "A progress-bar wrapper for library functions that take `progress(iterable, total)`."
    from rich.progress import track

    def wrap(it: Iterable, total: int) -> Iterable:
        return track(it, total=total, description=description, disable=not sys.stdout.isatty())
    return wrap


@data_app.command("summary")
def data_summary(data: DataOpt = None) -> None:
    """Count images per split x class (the reference's Table I) and check that every file is paired."""
    from .dataset import dataset_summary, resolve_root, scan_tree

    root = load_config(data_path=data).data_path
    table = dataset_summary(scan_tree(root))
    typer.echo(f"COVID-QU-Ex infection segmentation data in {resolve_root(root)}\n")
    typer.echo(table.to_string())
    _note_absent_splits(root)


@data_app.command("check")
def data_check(data: DataOpt = None) -> None:
    """Open every file: unreadable PNGs, size mismatches, non-binary masks, unpaired names, missing folders."""
    from .dataset import check_tree

    root = load_config(data_path=data).data_path
    df, problems = check_tree(root, progress=_progress("Opening files"))
    n_files = 3 * len(df)
    if problems:
        raise CovfastError(format_problems(problems))
    typer.echo(f"OK: opened {n_files} files ({len(df)} images with infection and lung masks); no problems found.")
    _note_absent_splits(root)


def _note_absent_splits(root) -> None:
    from .dataset import SPLITS, present_splits
    absent = [s for s in SPLITS if s not in present_splits(root)]
    if absent:
        typer.echo(f"Note: no {', '.join(absent)} folder here; checked {', '.join(present_splits(root))} "
                   f"(training needs Train and Val; evaluate needs the split it scores).")


@app.command("synth")
def synth(
    out: Annotated[Path, typer.Argument(help="Folder to write 'Infection Segmentation Data' into.", show_default=False)],
    per_class: Annotated[int, typer.Option("--per-class", min=1, help="Images per class in each of Train, Val and Test.")] = 20,
    size: Annotated[int, typer.Option("--size", min=32, max=MAXIMUMS["img_size"], help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option("--seed", min=0, max=MAXIMUMS["seed"], help="Random seed: the same seed gives byte-identical files.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace a tree that an earlier `covfast synth` wrote in OUT.")] = False,
) -> None:
    """Write a synthetic dataset in the exact COVID-QU-Ex layout (for tests and demos, not accuracy)."""
    from .synth import write_synthetic

    write_synthetic(out, per_class=per_class, size=size, seed=seed, force=force, progress=_progress("Writing"))
    typer.echo(f"Wrote {9 * per_class} synthetic X-rays ({size}x{size}) with masks under {out}")


ArchArg = Annotated[str, typer.Argument(help=f"Model. {arch_help()}.", show_default=False)]
SizeOpt = Annotated[Optional[int], typer.Option("--size", min=16, max=MAXIMUMS["img_size"], help=f"Image side the items are resized to. Default: {SET.img_size} {_FROM.format('IMG_SIZE')}.", show_default=False)]
BsOpt = Annotated[Optional[int], typer.Option("--bs", min=1, help=f"Batch size. Default: {SET.bs} {_FROM.format('BS')}.", show_default=False)]
ClassesOpt = Annotated[Optional[str], typer.Option(
    "--classes", help="Classes to train on: 'all' (COVID-19, Non-COVID, Normal) or a comma-separated subset, e.g. "
                      f"COVID-19,Non-COVID for the reference study's setting. Default: {', '.join(SET.classes)} "
                      f"{_FROM.format('CLASSES')}.",
    show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help=f"Random seed. Default: {SET.seed} {_FROM.format('SEED')}.", show_default=False)]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="cpu or cuda. Default: cuda when PyTorch sees a GPU, else cpu.", show_default=False)]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="auto, fp32 or bf16. auto: bf16 autocast + channels_last where the CPU runs bf16 natively "
                        f"(AVX512-BF16/AMX) or the GPU supports it (fp16 on older GPUs), else fp32. Default: {SET.precision} "
                        f"{_FROM.format('PRECISION')}.",
    show_default=False)]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help=f"DataLoader worker processes. Default: {SET.num_workers} {_FROM.format('NUM_WORKERS')}; on CUDA 0 means up to 8.", show_default=False)]


ClsWeightOpt = Annotated[Optional[float], typer.Option(
    "--cls-weight", min=0.0, help=f"Weight of the image-level head's loss (BCE on 'this X-ray has COVID-19 infection'); an "
                                  f"image the head calls negative gets an empty mask. 0: no head, segmentation alone. "
                                  f"Default: {DEFAULT_CLS_WEIGHT}.", show_default=False)]
LungWeightOpt = Annotated[Optional[float], typer.Option(
    "--lung-weight", min=0.0, help=f"Weight of the lung output's loss (cross-entropy + Dice on the lung masks): the model "
                                   f"outlines the lungs too, for severity on any X-ray. 0: no lung output. "
                                   f"Default: {DEFAULT_LUNG_WEIGHT}.", show_default=False)]
DiceWeightOpt = Annotated[Optional[float], typer.Option(
    "--dice-weight", min=0.0, help="Weight of the loss's Dice term; cross-entropy has weight 1. Default: 1.0.", show_default=False)]
FeaturesOpt = Annotated[Optional[str], typer.Option(
    "--features", help="attention-unet channel widths per level, comma-separated; the count sets the depth. Default: "
                       "16,32,64,128,256 (8.35 GFLOPs per 256x256 image; 32,...,512: 33.3).", show_default=False)]
AugmentOpt = Annotated[Optional[bool], typer.Option(
    "--augment/--no-augment", help="Random rotation, zoom, warp and lighting on training batches (no flips). Default: augment.",
    show_default=False)]
PretrainedFlag = Annotated[Optional[bool], typer.Option(
    "--pretrained/--no-pretrained", help="Start the encoder from ImageNet weights (downloaded once, then cached); "
                                         "offline, covfast warns and trains from scratch. Default: pretrained.",
    show_default=False)]
Fp16Opt = Annotated[Optional[bool], typer.Option(
    "--fp16/--no-fp16", help="The old name of --precision: --no-fp16 is --precision fp32.", show_default=False, hidden=True)]


def _precision_flag(precision: str | None, fp16: bool | None) -> str | None:
    "--precision, or the fp32 that the old --no-fp16 asks for; both at once must agree."
    if fp16 is False:
        if precision not in (None, "fp32"):
            raise CovfastError(f"--no-fp16 asks for fp32 and --precision asks for {precision}: give one of them")
        return "fp32"
    return precision


@app.command("train")
def train_cmd(
    arch: ArchArg,
    data: DataOpt = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help=f"Epochs of the one-cycle schedule. Default: {SET.epochs} {_FROM.format('EPOCHS')}.", show_default=False)] = None,
    lr: Annotated[Optional[str], typer.Option("--lr", help=f"Peak learning rate, or 'auto' to run lr_find and take its valley. Default: {SET.lr} {_FROM.format('LR')}.", show_default=False)] = None,
    bs: BsOpt = None,
    size: SizeOpt = None,
    classes: ClassesOpt = None,
    pretrained: PretrainedFlag = None,
    name: Annotated[Optional[str], typer.Option("--name", help="Run directory name under runs_dir. Default: <arch>-<YYYYmmdd-HHMMSS>.", show_default=False)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue this interrupted run (path or name) from its last completed epoch, with its own settings.", show_default=False)] = None,
    seed: SeedOpt = None,
    fp16: Fp16Opt = None,
    precision: PrecisionOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    cls_weight: ClsWeightOpt = None,
    lung_weight: LungWeightOpt = None,
    dice_weight: DiceWeightOpt = None,
    features: FeaturesOpt = None,
    augment: AugmentOpt = None,
    keep_checkpoint: Annotated[bool, typer.Option("--keep-checkpoint", help="Keep checkpoint.pth (weights and optimizer state, for --resume) once the run is complete; by default only model.pth stays.")] = False,
) -> None:
    """Train a model with fastai's one-cycle schedule into a run directory (Ctrl-C keeps the last epoch's checkpoint)."""
    check_arch(arch)  # a typo is refused before torch and fastai load (seconds)
    from .dataset import resolve_root
    from .spec import RunSpec

    settings = load_config(num_workers=workers)
    flags = dict(data_root=data, img_size=size, bs=bs, epochs=epochs, lr=lr, classes=classes, seed=seed,
                 precision=_precision_flag(precision, fp16), pretrained=pretrained, features=features,
                 dice_weight=dice_weight, cls_weight=cls_weight, lung_weight=lung_weight, augment=augment,
                 keep_checkpoint=keep_checkpoint or None)
    if resume is not None:
        _check_runs(resume)
    else:  # the settings and the data are checked before torch and fastai load, as the arch is
        spec = RunSpec.from_flags(arch, settings, **flags)
        resolve_root(spec.data_root)
    from . import distributed
    from .train import TrainingInterrupted, resume as resume_run, train, training_summary

    # lr_find can stop mid-epoch with its progress bar's line still open: its line starts a new one
    say = lambda line: typer.echo(("\n" if line.startswith("lr_find") else "") + line)  # noqa: E731
    try:
        if resume is not None:
            run_dir = resume_run(resume, {"arch": arch, **flags}, settings.runs_dir, name=name, device=device,
                                 num_workers=settings.num_workers, say=say)
        else:
            run_dir = train(spec, name, settings.runs_dir, device=device,
                            num_workers=settings.num_workers, say=say)
    except TrainingInterrupted as e:
        typer.echo(f"\nInterrupted after epoch {e.completed} of {e.epochs}; "
                   f"{'checkpoint kept' if e.completed else 'no epoch completed'}. "
                   f"Continue with: covfast train {e.arch} --resume {e.run_dir}", err=True)
        raise typer.Exit(130)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    if distributed.is_main():
        typer.echo(training_summary(run_dir))


@app.command("lr-find")
def lr_find_cmd(
    arch: ArchArg,
    data: DataOpt = None,
    bs: BsOpt = None,
    size: SizeOpt = None,
    classes: ClassesOpt = None,
    pretrained: PretrainedFlag = None,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for lr_find.png and lr_find.csv. Default: runs_dir/lr-find-<arch>-<time>.", show_default=False)] = None,
    num_it: Annotated[Optional[int], typer.Option("--num-it", min=10, help="Mini-batches to try, from 1e-7 up, over as many epochs as that takes. Default: 100 (fastai's); a curve of fewer than 50 is not trusted.", show_default=False)] = None,
    precision: PrecisionOpt = None,
    workers: WorkersOpt = None,
    cls_weight: ClsWeightOpt = None,
    lung_weight: LungWeightOpt = None,
    dice_weight: DiceWeightOpt = None,
    features: FeaturesOpt = None,
    augment: AugmentOpt = None,
) -> None:
    """Run fastai's lr_find on the model `covfast train` builds from the same flags: print the valley, slide, minimum and steep suggestions and save the plot."""
    check_arch(arch)  # a typo is refused before torch and fastai load (seconds)
    from .dataset import resolve_root
    from .spec import RunSpec

    settings = load_config(num_workers=workers)
    spec = RunSpec.from_flags(arch, settings, data_root=data, img_size=size, bs=bs, classes=classes, seed=seed,
                              precision=precision, pretrained=pretrained, features=features, dice_weight=dice_weight,
                              cls_weight=cls_weight, lung_weight=lung_weight, augment=augment)
    resolve_root(spec.data_root)  # before torch and fastai load
    from .train import find_lr

    values, path, doubt = find_lr(spec, out, settings.runs_dir, device=device, num_workers=settings.num_workers,
                                  num_it=num_it)
    typer.echo("\nlr_find suggestions:")  # on a new line: lr_find can stop with its progress bar's line open
    for key, value in values.items():
        typer.echo(f"{key:>8}: {value:.2e}" if value == value else f"{key:>8}: n/a (curve too short; raise --num-it)")
    if doubt:
        typer.echo(f"covfast: warning: {doubt}")
    typer.echo(f"plot (the suggestions marked): {path}")


AllowCalibrationOpt = Annotated[bool, typer.Option(
    "--allow-calibration-split", help="Score the split the run's threshold was calibrated on (its figures then flatter the run).")]
RunArg = Annotated[str, typer.Argument(help="Run directory, or its name under runs_dir.", show_default=False)]
SplitOpt = Annotated[str, typer.Option("--split", help="Split to score: Train, Val or Test.")]


@app.command("evaluate")
def evaluate_cmd(
    run: RunArg,
    split: SplitOpt = "Test",
    data: RunDataOpt = None,
    bs: BsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    allow_calibration_split: AllowCalibrationOpt = False,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Classes to score, 'all' or a comma-separated subset. Default: those the run trained on.", show_default=False)] = None,
) -> None:
    """Score a run's best weights on a split at the masks' resolution; write eval/<split>/ tables."""
    _check_runs(run)
    from .config import parse_classes
    from .evaluate import evaluate, evaluation_text

    per_image, summary, out = evaluate(run, split, data, load_config(bs=bs, precision=precision), device=device,
                                       progress=_progress("Scoring"), allow_calibration_split=allow_calibration_split,
                                       classes=parse_classes(classes) if classes else None)
    typer.echo(evaluation_text(per_image, summary, out))


@app.command("calibrate")
def calibrate_cmd(
    run: RunArg,
    specificity: Annotated[Optional[float], typer.Option("--specificity", min=0.0, max=1.0, help="Target: the share of the split's empty-truth images (Non-COVID, Normal) that get an empty mask.", show_default=False)] = None,
    sensitivity: Annotated[Optional[float], typer.Option("--sensitivity", min=0.0, max=1.0, help="Target: the share of the split's COVID-19 images that keep their outline. Default when neither is given: 0.95.", show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", help="Split whose images set the threshold: Val; never the split you report on (evaluate refuses it).")] = "Val",
    data: RunDataOpt = None,
    bs: BsOpt = None,
    device: DeviceOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the run's existing calibration.json.")] = False,
    precision: PrecisionOpt = None,
    inside_lungs: Annotated[Optional[bool], typer.Option("--inside-lungs/--anywhere", help="Keep predicted infection inside the model's own predicted lungs, or anywhere (runs with the lung output). Default: as the run was calibrated before; anywhere for a new run.", show_default=False)] = None,
) -> None:
    """Choose the run's decision threshold on Val at a target sensitivity or specificity (calibration.json); evaluate, report, compare and predict then use it."""
    _check_runs(run)
    from .calibrate import calibrate, calibration_text

    result = calibrate(run, specificity, sensitivity, split, data, load_config(bs=bs, precision=precision), device=device,
                       force=force, progress=_progress("Scoring"), inside_lungs=inside_lungs)
    typer.echo(calibration_text(result))


@app.command("report")
def report_cmd(
    run: RunArg,
    split: SplitOpt = "Test",
    data: RunDataOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    allow_calibration_split: AllowCalibrationOpt = False,
) -> None:
    """Write an interpretation report (report/index.html with PNG figures) for a run; evaluates first if needed."""
    _check_runs(run)
    from .report import report

    path = report(run, split, load_config(precision=precision), device=device, progress=_progress("Scoring"), data=data,
                  allow_calibration_split=allow_calibration_split)
    typer.echo(f"Report: {path}")


@app.command("compare")
def compare_cmd(
    runs: Annotated[list[str], typer.Argument(help="Two or more run directories or names; the first is the baseline (a).", show_default=False)],
    split: SplitOpt = "Test",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. Default: runs_dir/compare-<time>.", show_default=False)] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    allow_calibration_split: AllowCalibrationOpt = False,
) -> None:
    """Which model, where: metrics side by side, paired per-image Dice differences, the same images through each model."""
    _check_runs(*runs)
    from .compare import compare

    path = compare(runs, split, out, load_config(precision=precision), device=device, progress=_progress("Scoring"),
                   allow_calibration_split=allow_calibration_split)
    typer.echo(f"Comparison: {path}")


@app.command("ensemble")
def ensemble_cmd(
    runs: Annotated[list[str], typer.Argument(help="Two or more trained run directories or names: the members.", show_default=False)],
    name: Annotated[Optional[str], typer.Option("--name", help="The ensemble's run directory name under runs_dir. Default: ensemble-<YYYYmmdd-HHMMSS>.", show_default=False)] = None,
) -> None:
    """Make a run of trained runs whose outputs are the mean of their probabilities; calibrate it, then every command takes it."""
    _check_runs(*runs)
    from .ensemble import make_ensemble

    make_ensemble(runs, name, load_config().runs_dir, say=typer.echo)


@app.command("predict")
def predict_cmd(
    run: RunArg,
    paths: Annotated[list[Path], typer.Argument(help="X-ray files (PNG/JPEG, 8- or 16-bit, gray or RGB; DICOM .dcm) and/or folders of them.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. Default: <run>/predictions/<time>.", show_default=False)] = None,
    lung_masks: Annotated[Optional[Path], typer.Option("--lung-masks", help="Folder of 0/255 lung masks named like the images, used instead of the model's own lungs for infection % of lung (runs trained before covfast outlined the lungs need them for it).", show_default=False)] = None,
    bs: BsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    engine: Annotated[str, typer.Option("--engine", help="torch (the run's PyTorch model), or onnx (its `covfast export` through onnxruntime, on the CPU).")] = "torch",
) -> None:
    """Outline infection and lungs in new X-rays: 0/255 masks, an overlay per image (infection red, lungs outlined in cyan), and predictions.csv with infection % of lung and its severity band."""
    from .inputs import check_paths

    _check_runs(run)
    check_paths(paths)
    # the model's OpenMP threads share the cores with the threads writing the PNGs: spinning while they wait
    # took cores from those writers (812 Test X-rays, 2 cores: 11.9 s -> 10.7 s in-process); set before torch loads
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    from .predict import predict, prediction_summary

    config = load_config(bs=bs, precision=precision)
    report = lambda failure: typer.echo(f"covfast: error: {failure}", err=True)  # noqa: E731
    table, failures, folder = predict(run, paths, out, lung_masks, config, device=device,
                                      progress=_progress("Predicting"), on_error=report, say=typer.echo, engine=engine)
    typer.echo(prediction_summary(table, failures, folder))
    unread = sum(f.kind == "image" for f in failures)
    lung = sum(f.kind == "lung_mask" for f in failures)
    if unread:
        typer.echo(f"covfast: {unread} of {unread + len(table)} files could not be read (listed above)", err=True)
    if lung:
        typer.echo(f"covfast: {lung} lung masks could not be used (listed above)", err=True)
    if failures:
        raise typer.Exit(1)


@app.command("export")
def export_cmd(
    run: RunArg,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for model.onnx and its sidecar model.json. Default: <run>/export.", show_default=False)] = None,
) -> None:
    """Export the run's best weights to ONNX (batch axis dynamic, the run's input size fixed) with a JSON sidecar of everything needed to use it without covfast; checked against PyTorch."""
    _check_runs(run)
    from .export import TOLERANCE, export

    path, sidecar, diff = export(run, out, load_config())
    typer.echo(f"Wrote {path} and {path.with_name('model.json')} ({sidecar['exporter']}, opset {sidecar['opset']}); "
               f"onnxruntime against PyTorch on {sidecar['checked']['images']} images: max |logit difference| "
               f"{diff:.2e} (bound {TOLERANCE:g})")
    if sidecar["decision"].get("not_calibrated"):
        typer.echo(f"covfast: note: {sidecar['decision']['not_calibrated']}, then export again", err=True)


@app.command("serve")
def serve_cmd(
    run: RunArg,
    port: Annotated[int, typer.Option("--port", min=1, max=65535, help="The port to serve on.")] = 7860,
    host: Annotated[str, typer.Option("--host", help="The address to bind: 127.0.0.1 keeps the page on this machine; 0.0.0.0 shares it with your network.")] = "127.0.0.1",
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """A web page to drop an X-ray on (PNG, JPEG, DICOM): the run's outline of infection and lungs, its decision and severity, the mask to download."""
    _check_runs(run)
    from .serve import serve

    serve(run, host, port, load_config(precision=precision), device=device, say=typer.echo)


@app.command("demo")
def demo_cmd(
    out: Annotated[Optional[Path], typer.Option("--out", help="Empty or new folder for the demo's data, runs and comparison. Default: runs/demo.", show_default=False)] = None,
    device: DeviceOpt = None,
) -> None:
    """The whole job in minutes, offline: synthetic data, both models trained briefly, evaluated, reported, compared."""
    from .demo import demo

    demo(out, device=device, say=typer.echo, progress=_progress("Scoring"))


def main() -> None:
    "Console-script entry point."
    os.environ.setdefault("MPLBACKEND", "Agg")  # the CLI writes PNGs; it never opens a window
    app(prog_name="covfast")
