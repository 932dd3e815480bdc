"""Where `covfast predict`'s whole-process time goes: process start and imports, the bare forward, `predict()`
without writing files, and `predict()` whole, on one run and one folder of X-rays.

    python benchmarks/predict_parts.py RUN FOLDER [--runs-dir DIR] [--repeats 2]

Prints one line of seconds per repeat. The bare forward runs as many in-memory images (whole batches of 8) through
the run's model in its precision, once before and once after the two `predict()` calls.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as `covfast predict` runs (before torch loads)

import torch  # noqa: E402

import covfast.predict as predict_mod  # noqa: E402
from covfast.config import Config  # noqa: E402
from covfast.inference import load_run  # noqa: E402
from covfast.inputs import collect_images  # noqa: E402
from covfast.precision import autocast, memory_format  # noqa: E402


def parts(run: str, folder: Path, runs_dir: str, bs: int = 8) -> dict[str, float]:
    "Seconds of each part, measured one after the other in this process (the imports in a new one)."
    t = time.perf_counter()
    subprocess.run([sys.executable, "-c", "import covfast.predict"], check=True, capture_output=True)
    seconds = {"import_s": time.perf_counter() - t}
    learn, loaded = load_run(run, runs_dir)
    size = loaded.spec.img_size
    x = torch.randn(bs, 3, size, size).contiguous(memory_format=memory_format(learn))
    batches = -(-len(collect_images([folder])) // bs)

    @torch.no_grad()
    def bare() -> float:
        start = time.perf_counter()
        for _ in range(batches):
            with autocast(learn):
                learn.model(x)
        return time.perf_counter() - start

    def whole(write: bool) -> float:
        kept = predict_mod._write
        if not write:  # the row alone: no outline pictures, no PNGs
            predict_mod._write = lambda f, stem, predicted, given, out: {"file": str(f)}
        out = Path(tempfile.mkdtemp()) / "p"
        try:
            start = time.perf_counter()
            predict_mod.predict(run, [folder], out=out, config=Config(runs_dir=runs_dir))
            return time.perf_counter() - start
        finally:
            predict_mod._write = kept
            shutil.rmtree(out.parent)

    bare()  # warm-up
    seconds.update(bare_s=bare(), predict_without_files_s=whole(False), predict_s=whole(True), bare_after_s=bare())
    return seconds


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("run")
    p.add_argument("folder", type=Path)
    p.add_argument("--runs-dir", default="runs")
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    for _ in range(args.repeats):
        print({k: round(v, 2) for k, v in parts(args.run, args.folder, args.runs_dir).items()})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
