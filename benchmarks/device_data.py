"""Carry the real data to a GPU machine inside a size limit, pixel for pixel.

`pack` writes each split of a COVID-QU-Ex tree as two archives: SPLIT-xrays.tar, the X-rays re-encoded as lossless
WebP (about 15% smaller than the PNGs; every one decoded and compared with its PNG before it is written), and
SPLIT-masks.tar.gz, the masks as they are.
`unpack` writes the PNGs back (the same pixels, not the same bytes) under a new root.

    python benchmarks/device_data.py pack ../shared/data/covid-qu-ex .dd --splits Train
    python benchmarks/device_data.py unpack .dd/Train.tar /tmp/data/covid-qu-ex
"""

from __future__ import annotations

import argparse
import io
import sys
import tarfile
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

DATASET_DIR = "Infection Segmentation Data"


def _webp(path: Path) -> bytes:
    pixels = np.asarray(Image.open(path).convert("L"))
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, "WEBP", lossless=True, quality=100, method=5)
    back = np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("L"))
    if not np.array_equal(back, pixels):
        raise SystemExit(f"{path}: lossless WebP did not give the same pixels back")
    return buf.getvalue()


def _add(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def pack(root: Path, dest: Path, splits: list[str], workers: int) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    for split in splits:
        images = sorted((root / DATASET_DIR / split).glob("*/images/*.png"))
        masks = sorted((root / DATASET_DIR / split).glob("*/* masks/*.png"))
        with ProcessPoolExecutor(workers) as pool, tarfile.open(dest / f"{split}-xrays.tar", "w") as tar:
            for path, data in zip(images, pool.map(_webp, images, chunksize=16)):
                _add(tar, str(path.relative_to(root).with_suffix(".webp")), data)
        with tarfile.open(dest / f"{split}-masks.tar.gz", "w:gz") as tar:
            for path in masks:
                _add(tar, str(path.relative_to(root)), path.read_bytes())
        size = sum((dest / f).stat().st_size for f in (f"{split}-xrays.tar", f"{split}-masks.tar.gz")) / 1e6
        print(f"{split}: {len(images)} X-rays, {len(masks)} masks, {size:.1f} MB")


def _png(item: tuple[str, bytes, str]) -> None:
    name, data, out = item
    path = Path(out) / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if name.endswith(".webp"):
        Image.open(io.BytesIO(data)).convert("L").save(path.with_suffix(".png"))
    else:
        path.write_bytes(data)


def unpack(tars: list[Path], out: Path, workers: int) -> None:
    for tar_path in tars:
        with tarfile.open(tar_path) as tar:
            items = [(m.name, tar.extractfile(m).read(), str(out)) for m in tar.getmembers() if m.isfile()]
        with ProcessPoolExecutor(workers) as pool:
            list(pool.map(_png, items, chunksize=32))
        print(f"{tar_path.name}: {len(items)} files under {out}")


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("pack")
    a.add_argument("root", type=Path)
    a.add_argument("dest", type=Path)
    a.add_argument("--splits", nargs="+", default=["Train", "Val", "Test"])
    b = sub.add_parser("unpack")
    b.add_argument("tars", type=Path, nargs="+")
    b.add_argument("out", type=Path)
    for q in (a, b):
        q.add_argument("--workers", type=int, default=2)
    args = p.parse_args(argv)
    if args.cmd == "pack":
        pack(args.root, args.dest, args.splits, args.workers)
    else:
        unpack(args.tars, args.out, args.workers)


if __name__ == "__main__":
    sys.exit(main())
