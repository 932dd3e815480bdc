"""The `covfast` command line: parses arguments and calls library functions a notebook can call too."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Iterable, Optional

import typer

try:  # typer >= 0.24 vendors its own click
    from typer._click.exceptions import ClickException
except ImportError:
    from click.exceptions import ClickException
from typer.core import TyperGroup

from . import __version__
from .config import load_config
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


def main() -> None:
    "Console-script entry point."
    app(prog_name="covfast")
