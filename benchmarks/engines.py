"""Prediction through onnxruntime beside PyTorch eager, for the same weights: images/s and their ratio.

    python benchmarks/engines.py [--sizes 128,256] [--archs attention-unet,resnet34] [--bs 8] [--seconds 20]

For each model (covfast's, with the image head and the lung output, weights as initialised: the arithmetic
is the same as a trained run's) and image size: the model exported as `covfast export` exports it (ONNX,
opset 17), then batches of in-memory images through PyTorch eager in fp32, PyTorch in the precision
`--precision auto` gives this machine (bf16 autocast + channels_last where the CPU runs bf16 natively; fp32
elsewhere, and then the column repeats fp32), and onnxruntime (CPU, fp32), interleaved batch by batch so
the machine's drift falls on all three alike; medians over `--seconds` of each. Prints a markdown table.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import onnxruntime as ort
import torch

from covfast.export import to_onnx
from covfast.learner import build_model
from covfast.precision import resolve_precision
from covfast.spec import RunSpec


def timed(fn) -> float:
    t = time.perf_counter()
    fn()
    return time.perf_counter() - t


def bench(arch: str, size: int, bs: int, seconds: float) -> dict:
    torch.manual_seed(0)
    model = build_model(RunSpec(arch, img_size=size, pretrained=False)).eval()
    x = torch.randn(bs, 3, size, size)
    auto = resolve_precision("auto", "cpu")
    fast = model if auto.dtype is None else build_model(RunSpec(arch, img_size=size, pretrained=False)).eval()
    if auto.dtype is not None:
        fast.load_state_dict(model.state_dict())
        fast = fast.to(memory_format=torch.channels_last)
    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(model, x[:1], Path(tmp) / "model.onnx")
        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        feed = {"image": x.numpy()}

        def eager():
            with torch.no_grad():
                model(x)

        def own():
            with torch.no_grad(), torch.autocast("cpu", dtype=auto.dtype or torch.float32, enabled=auto.dtype is not None):
                fast(x.contiguous(memory_format=torch.channels_last) if auto.dtype is not None else x)

        runs = {"fp32": eager, "own": own, "onnx": lambda: session.run(None, feed)}
        for fn in runs.values():  # warm-up
            fn()
        times = {k: [] for k in runs}
        start = time.perf_counter()
        while time.perf_counter() - start < seconds or len(times["fp32"]) < 3:
            for name, fn in runs.items():
                times[name].append(timed(fn))
    rate = {k: bs / statistics.median(v) for k, v in times.items()}
    return {"arch": arch, "size": size, "precision": auto.mode, "fp32": rate["fp32"], "own": rate["own"],
            "onnx": rate["onnx"], "batches": len(times["fp32"])}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sizes", default="128,256")
    p.add_argument("--archs", default="attention-unet,resnet34")
    p.add_argument("--bs", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0, help="timing per model and size, all three engines")
    args = p.parse_args()
    print(f"| model | px | PyTorch eager fp32 img/s | PyTorch, this machine's precision | onnxruntime img/s | onnxruntime / fp32 | batches of {args.bs} |")
    print("|---|---|---|---|---|---|---|")
    for arch in args.archs.split(","):
        for size in map(int, args.sizes.split(",")):
            r = bench(arch, size, args.bs, args.seconds)
            print(f"| {r['arch']} | {r['size']} | {r['fp32']:.2f} | {r['own']:.2f} ({r['precision']}) | {r['onnx']:.2f} | "
                  f"{r['onnx'] / r['fp32']:.2f}x | {r['batches']} |", flush=True)


if __name__ == "__main__":
    main()
