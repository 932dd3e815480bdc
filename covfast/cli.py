"""The `covfast` command line: parses arguments and calls library functions a notebook can call too."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated, Iterable, Optional

import typer

try:  # typer >= 0.24 vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException
from typer.core import TyperGroup, TyperOption

from . import __version__
from .config import DEFAULT_CLS_WEIGHT, load_config
from .errors import CovfastError, format_problems

__all__ = ["app", "main"]


class _Group(TyperGroup):
    "Bad input (CovfastError) -> one line on stderr and exit 2; other errors one line and exit 1; --debug shows tracebacks."

    def invoke(self, ctx: typer.Context):
        try:
            return super().invoke(ctx)
        except (ClickException, typer.Exit, typer.Abort, KeyboardInterrupt):
            raise
        except Exception as e:
            if (ctx.obj or {}).get("debug"):
                raise
            if isinstance(e, CovfastError):
                typer.echo(f"covfast: error: {e}", err=True)
                raise typer.Exit(2)
            typer.echo(f"covfast: error: {e.__class__.__name__}: {e} (rerun with --debug for the traceback)", err=True)
            raise typer.Exit(1)


_type_column = TyperOption.display_type_rich


def _no_metavar_for_flags(self, ctx):
    "typer 0.29's help lists flags (--help, --pretrained/--no-pretrained) with a <bool> type, as if they took a value."
    return None if getattr(self, "is_flag", False) else _type_column(self, ctx)


TyperOption.display_type_rich = _no_metavar_for_flags

app = typer.Typer(cls=_Group, no_args_is_help=True, pretty_exceptions_enable=False, add_completion=False,
                  help="Find and outline COVID-19 infection in chest X-rays (COVID-QU-Ex) with fastai.")
data_app = typer.Typer(cls=_Group, no_args_is_help=True, help="Count and check a COVID-QU-Ex tree.")
app.add_typer(data_app, name="data")

DataOpt = Annotated[Optional[Path], typer.Option(
    "--data", help="Dataset root: the folder holding 'Infection Segmentation Data', that folder, "
                   "or a train/val/test tree. Default: data_path from settings.ini / COVFAST_DATA_PATH.",
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
    size: Annotated[int, typer.Option("--size", min=32, help="Image side in pixels.")] = 256,
    seed: Annotated[int, typer.Option("--seed", help="Random seed: the same seed gives byte-identical files.")] = 0,
    force: Annotated[bool, typer.Option("--force", help="Replace a tree that an earlier `covfast synth` wrote in OUT.")] = False,
) -> None:
    """Write a synthetic dataset in the exact COVID-QU-Ex layout (for tests and demos, not accuracy)."""
    from .synth import write_synthetic

    write_synthetic(out, per_class=per_class, size=size, seed=seed, force=force, progress=_progress("Writing"))
    typer.echo(f"Wrote {9 * per_class} synthetic X-rays ({size}x{size}) with masks under {out}")


ArchArg = Annotated[str, typer.Argument(
    help="Model: attention-unet, resnet34 (DynamicUnet on ResNet34; also resnet18/50/101) or timm/NAME "
         "(a timm CNN encoder, e.g. timm/efficientnet_b0).", show_default=False)]
SizeOpt = Annotated[Optional[int], typer.Option("--size", min=16, help="Image side the items are resized to. Default: img_size.", show_default=False)]
BsOpt = Annotated[Optional[int], typer.Option("--bs", min=1, help="Batch size. Default: bs.", show_default=False)]
ClassesOpt = Annotated[Optional[str], typer.Option(
    "--classes", help="Classes to train on: 'all' (COVID-19, Non-COVID, Normal) or a comma-separated subset, e.g. "
                      "COVID-19,Non-COVID for the reference study's setting. Default: classes (all).",
    show_default=False)]
SeedOpt = Annotated[Optional[int], typer.Option("--seed", help="Random seed. Default: seed.", show_default=False)]
PretrainedOpt = Annotated[bool, typer.Option(
    "--pretrained/--no-pretrained", help="Start the encoder from ImageNet weights (downloaded once, then cached); "
                                         "offline, covfast warns and trains from scratch.")]
DeviceOpt = Annotated[Optional[str], typer.Option(
    "--device", help="cpu or cuda. Default: cuda when PyTorch sees a GPU, else cpu.", show_default=False)]
PrecisionOpt = Annotated[Optional[str], typer.Option(
    "--precision", help="auto, fp32 or bf16. auto: bf16 autocast + channels_last where the CPU runs bf16 natively "
                        "(AVX512-BF16/AMX) or the GPU supports it (fp16 on older GPUs), else fp32. Default: precision.",
    show_default=False)]
WorkersOpt = Annotated[Optional[int], typer.Option(
    "--workers", min=0, help="DataLoader worker processes. Default: num_workers (0 on CPU; up to 8 on CUDA).", show_default=False)]


def _parse_features(value: str, arch: str) -> tuple[int, ...]:
    "--features '16,32,64' -> (16, 32, 64); only attention-unet has them."
    if arch != "attention-unet":
        raise CovfastError(f"--features sets attention-unet's widths; {arch} takes its widths from its encoder")
    try:
        widths = tuple(int(v) for v in value.split(","))
    except ValueError:
        widths = ()
    if len(widths) < 2 or min(widths) < 1:
        raise CovfastError(f"--features {value!r}: give two or more positive integers, e.g. 16,32,64,128,256")
    return widths


@app.command("train")
def train_cmd(
    arch: ArchArg,
    data: DataOpt = None,
    epochs: Annotated[Optional[int], typer.Option("--epochs", min=1, help="Epochs of the one-cycle schedule. Default: epochs (30).", show_default=False)] = None,
    lr: Annotated[Optional[str], typer.Option("--lr", help="Peak learning rate, or 'auto' to run lr_find and take its valley. Default: lr.", show_default=False)] = None,
    bs: BsOpt = None,
    size: SizeOpt = None,
    classes: ClassesOpt = None,
    pretrained: PretrainedOpt = True,
    name: Annotated[Optional[str], typer.Option("--name", help="Run directory name under runs_dir. Default: <arch>-<YYYYmmdd-HHMMSS>.", show_default=False)] = None,
    resume: Annotated[Optional[str], typer.Option("--resume", help="Continue this interrupted run (path or name) from its last completed epoch.", show_default=False)] = None,
    seed: SeedOpt = None,
    fp16: Annotated[bool, typer.Option("--fp16/--no-fp16", help="--no-fp16 is --precision fp32 (kept for older scripts).")] = True,
    precision: PrecisionOpt = None,
    device: DeviceOpt = None,
    workers: WorkersOpt = None,
    cls_weight: Annotated[float, typer.Option("--cls-weight", min=0.0, help="Weight of the image-level head's loss (BCE on 'this X-ray has COVID-19 infection'); an image the head calls negative gets an empty mask. 0: no head, segmentation alone.")] = DEFAULT_CLS_WEIGHT,
    gate_topk: Annotated[float, typer.Option("--gate-topk", min=0.0, max=1.0, help="The older pixel-evidence gate: outside training, call an image infected only if its top share of pixels (this share) is on average infection; 0 (default) turns it off.")] = 0.0,
    empty_weight: Annotated[float, typer.Option("--empty-weight", min=0.0, help="Weight of an extra image-level loss term against false positives on empty masks; 0 gives plain CE + Dice.")] = 0.0,
    dice_weight: Annotated[float, typer.Option("--dice-weight", min=0.0, help="Weight of the loss's Dice term; cross-entropy has weight 1.")] = 1.0,
    features: Annotated[Optional[str], typer.Option("--features", help="attention-unet channel widths per level, comma-separated; the count sets the depth. Default: 16,32,64,128,256 (8.35 GFLOPs per 256x256 image; 32,...,512: 33.3).", show_default=False)] = None,
    augment: Annotated[bool, typer.Option("--augment/--no-augment", help="Random rotation, zoom, warp and lighting on training batches (no flips).")] = True,
    keep_checkpoint: Annotated[bool, typer.Option("--keep-checkpoint", help="Keep checkpoint.pth (weights and optimizer state, for --resume) once the run is complete; by default only model.pth stays.")] = False,
) -> None:
    """Train a model with fastai's one-cycle schedule into a run directory (Ctrl-C keeps the last epoch's checkpoint)."""
    from .models import DEFAULT_FEATURES, check_arch
    from .runs import read_history, read_json, resolve_run
    from .train import TrainingInterrupted, train

    config = load_config(data_path=data, epochs=epochs, lr=lr, bs=bs, img_size=size, classes=classes, seed=seed,
                         num_workers=workers, precision=precision if fp16 else "fp32")
    if resume is not None:
        given = [flag for flag, value in [("--data", data), ("--epochs", epochs), ("--lr", lr), ("--bs", bs), ("--size", size),
                                          ("--classes", classes), ("--seed", seed), ("--name", name), ("--features", features)]
                 if value is not None]
        if given:
            raise CovfastError(f"--resume continues {resume} with its own settings (config.json); {', '.join(given)} "
                               f"cannot change them: leave {'it' if len(given) == 1 else 'them'} out, or train a new run")
        run_arch = read_json(resolve_run(resume, config.runs_dir) / "config.json").get("arch")
        if run_arch != check_arch(arch):
            raise CovfastError(f"run {resume} trained {run_arch}, not {arch}; use covfast train {run_arch} --resume {resume}")
    # lr_find can stop mid-epoch with its progress bar's line still open: its line starts a new one
    say = lambda line: typer.echo(("\n" if line.startswith("lr_find") else "") + line)  # noqa: E731
    try:
        run_dir = train(arch, data, config, name=name, pretrained=pretrained, device=device, resume=resume,
                        empty_weight=empty_weight, dice_weight=dice_weight, cls_weight=cls_weight, gate_topk=gate_topk, augment=augment,
                        keep_checkpoint=keep_checkpoint,
                        features=_parse_features(features, arch) if features else DEFAULT_FEATURES, say=say)
    except TrainingInterrupted as e:
        typer.echo(f"\nInterrupted after epoch {e.completed} of {e.epochs}; "
                   f"{'checkpoint kept' if e.completed else 'no epoch completed'}. "
                   f"Continue with: covfast train {e.arch} --resume {e.run_dir}", err=True)
        raise typer.Exit(130)
    except KeyboardInterrupt:
        raise typer.Exit(130)
    from . import distributed
    if distributed.is_main():
        history = read_history(run_dir)
        best = history.loc[history.valid_dice_mean.idxmax()]
        typer.echo(f"Done: {run_dir} (best valid mean Dice {best.valid_dice_mean:.4f} at epoch {int(best.epoch)}; "
                   f"model.pth holds those weights)")


@app.command("lr-find")
def lr_find_cmd(
    arch: ArchArg,
    data: DataOpt = None,
    bs: BsOpt = None,
    size: SizeOpt = None,
    classes: ClassesOpt = None,
    pretrained: PretrainedOpt = True,
    seed: SeedOpt = None,
    device: DeviceOpt = None,
    out: Annotated[Optional[Path], typer.Option("--out", help="Folder for lr_find.png and lr_find.csv. Default: runs_dir/lr-find-<arch>-<time>.", show_default=False)] = None,
    num_it: Annotated[int, typer.Option("--num-it", min=20, help="Mini-batches to try, from 1e-7 up.")] = 100,
    precision: PrecisionOpt = None,
) -> None:
    """Run fastai's lr_find: print the valley, slide, minimum and steep suggestions and save the plot."""
    from .train import find_lr

    config = load_config(data_path=data, bs=bs, img_size=size, classes=classes, seed=seed, precision=precision)
    values, path = find_lr(arch, data, config, out=out, pretrained=pretrained, device=device, num_it=num_it)
    typer.echo("\nlr_find suggestions:")  # on a new line: lr_find can stop with its progress bar's line open
    for key, value in values.items():
        typer.echo(f"{key:>8}: {value:.2e}" if value == value else f"{key:>8}: n/a (curve too short; raise --num-it)")
    typer.echo(f"plot: {path}")


RunArg = Annotated[str, typer.Argument(help="Run directory, or its name under runs_dir.", show_default=False)]
SplitOpt = Annotated[str, typer.Option("--split", help="Split to score: Train, Val or Test.")]


@app.command("evaluate")
def evaluate_cmd(
    run: RunArg,
    split: SplitOpt = "Test",
    data: DataOpt = None,
    bs: BsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
    allow_calibration_split: Annotated[bool, typer.Option("--allow-calibration-split", help="Score the split the run's threshold was calibrated on (its figures then flatter the run).")] = False,
    classes: Annotated[Optional[str], typer.Option("--classes", help="Classes to score, 'all' or a comma-separated subset. Default: those the run trained on.", show_default=False)] = None,
) -> None:
    """Score a run's best weights on a split at the masks' resolution; write eval/<split>/ tables."""
    from .evaluate import confusion_table, evaluate, reference_table

    from .config import parse_classes
    from .runs import read_json

    config = load_config(bs=bs, precision=precision)
    per_image, summary, out = evaluate(run, split, data, config, device=device, progress=_progress("Scoring"),
                                       allow_calibration_split=allow_calibration_split,
                                       classes=parse_classes(classes) if classes else None)
    with_ci = summary.assign(
        dice=[f"{d:.4f} [{lo:.3f}, {hi:.3f}]" for d, lo, hi in zip(summary.dice, summary.dice_ci_low, summary.dice_ci_high)],
        iou=[f"{d:.4f} [{lo:.3f}, {hi:.3f}]" for d, lo, hi in zip(summary.iou, summary.iou_ci_low, summary.iou_ci_high)])
    cols = ["group", "n", "dice", "iou", "dice_pooled", "sensitivity", "specificity", "severity_mae", "severity_band_agreement"]
    typer.echo(f"{len(per_image)} {split} images; Dice and IoU are per-image means with bootstrap 95% CI\n")
    typer.echo(with_ci[cols].to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    if summary.auc.notna().any():
        aucs = summary[summary.auc.notna()]
        typer.echo("\nImage level (is there COVID-19 infection?): ROC AUC of the head's probability, COVID-19 against\n")
        for row in aucs.itertuples():
            against = "every other image" if row.group == "All" else f"{row.group} images"
            typer.echo(f"  {against:>20}: {row.auc:.4f} [{row.auc_ci_low:.3f}, {row.auc_ci_high:.3f}]")
        typer.echo(f"\nDecision per class (an outline when the probability is above {read_json(out / 'summary.json')['threshold']:.4g}):\n")
        typer.echo(confusion_table(per_image).to_string())
    from .synth import is_synthetic
    if is_synthetic(data or read_json(out.parent.parent / "config.json")["data_root"]):
        typer.echo("\nAgainst the reference study: not comparable (synthetic data; it proves the pipeline, not accuracy)")
    else:
        typer.echo("\nAgainst the reference study (30 epochs):\n")
        typer.echo(reference_table(summary).to_string(index=False, float_format=lambda v: f"{v:.4f}"))
    typer.echo(f"\nWrote {out / 'per_image.csv'}, {out / 'summary.csv'}, {out / 'summary.json'}")


@app.command("calibrate")
def calibrate_cmd(
    run: RunArg,
    specificity: Annotated[Optional[float], typer.Option("--specificity", min=0.0, max=1.0, help="Target: the share of the split's empty-truth images (Non-COVID, Normal) that get an empty mask.", show_default=False)] = None,
    sensitivity: Annotated[Optional[float], typer.Option("--sensitivity", min=0.0, max=1.0, help="Target: the share of the split's COVID-19 images that keep their outline. Default when neither is given: 0.95.", show_default=False)] = None,
    split: Annotated[str, typer.Option("--split", help="Split whose images set the threshold: Val; never the split you report on (evaluate refuses it).")] = "Val",
    data: DataOpt = None,
    bs: BsOpt = None,
    device: DeviceOpt = None,
    force: Annotated[bool, typer.Option("--force", help="Replace the run's existing calibration.json.")] = False,
    precision: PrecisionOpt = None,
) -> None:
    """Choose the run's decision threshold on Val at a target sensitivity or specificity (calibration.json); evaluate, report, compare and predict then use it."""
    from .calibrate import calibrate

    if specificity is None and sensitivity is None:
        sensitivity = 0.95
    result = calibrate(run, specificity, sensitivity, split, data, load_config(bs=bs, precision=precision), device=device,
                       force=force, progress=_progress("Scoring"))
    what = (f"threshold {result['threshold']:.4f} on the image probability" if "threshold" in result else
            f"gate margin {result['gate_margin']:.4f} (top {result['gate_topk']:g} of pixels)")
    typer.echo(f"{what}, chosen on {result['split']} for {result['target']} {result['target_value']:g}: "
               f"{result['specificity_reached']:.3f} of {result['n_empty']} empty-truth images left empty, "
               f"{result['sensitivity']:.3f} of {result['n_infected']} COVID-19 images outlined")
    points = result.get("operating_points") or []
    if points:
        classes = list(points[0]["left_empty"])
        typer.echo(f"Other operating points on {result['split']} (choose one with --sensitivity S --force):")
        typer.echo("  sensitivity  threshold  " + "  ".join(f"{c} left empty" for c in classes))
        for p in points:
            typer.echo(f"  {p['sensitivity']:11.3f}  {p['threshold']:9.4f}  "
                       + "  ".join(f"{p['left_empty'][c]:{len(c) + 11}.3f}" for c in classes))


@app.command("report")
def report_cmd(
    run: RunArg,
    split: SplitOpt = "Test",
    data: DataOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Write an interpretation report (report/index.html with PNG figures) for a run; evaluates first if needed."""
    from .report import report

    path = report(run, split, load_config(precision=precision), device=device, progress=_progress("Scoring"), data=data)
    typer.echo(f"Report: {path}")


@app.command("compare")
def compare_cmd(
    runs: Annotated[list[str], typer.Argument(help="Two or more run directories or names; the first is the baseline (a).", show_default=False)],
    split: SplitOpt = "Test",
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. Default: runs_dir/compare-<time>.", show_default=False)] = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Which model, where: metrics side by side, paired per-image Dice differences, the same images through each model."""
    from .compare import compare

    path = compare(runs, split, out, load_config(precision=precision), device=device, progress=_progress("Scoring"))
    typer.echo(f"Comparison: {path}")


@app.command("predict")
def predict_cmd(
    run: RunArg,
    paths: Annotated[list[Path], typer.Argument(help="X-ray files (PNG/JPEG, 8- or 16-bit, gray or RGB) and/or folders of them.", show_default=False)],
    out: Annotated[Optional[Path], typer.Option("--out", help="Output folder. Default: <run>/predictions/<time>.", show_default=False)] = None,
    lung_masks: Annotated[Optional[Path], typer.Option("--lung-masks", help="Folder of 0/255 lung masks named like the images: adds infection % of lung.", show_default=False)] = None,
    bs: BsOpt = None,
    device: DeviceOpt = None,
    precision: PrecisionOpt = None,
) -> None:
    """Outline infection in new X-rays: a 0/255 mask and a red overlay per image, and predictions.csv."""
    from .predict import predict

    config = load_config(bs=bs, precision=precision)
    report = lambda line: typer.echo(f"covfast: error: {line}", err=True)  # noqa: E731
    table, failures, folder = predict(run, paths, out, lung_masks, config, device=device,
                                      progress=_progress("Predicting"), on_error=report)
    typer.echo(f"Wrote {len(table)} masks and overlays, and predictions.csv, to {folder}")
    lung = sum("lung mask not used" in f for f in failures)
    if len(failures) - lung:
        typer.echo(f"covfast: {len(failures) - lung} of {len(failures) - lung + len(table)} files could not be read "
                   f"(listed above)", err=True)
    if lung:
        typer.echo(f"covfast: {lung} lung masks could not be used (listed above)", err=True)
    if failures:
        raise typer.Exit(1)


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
