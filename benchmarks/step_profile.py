"""Where one training step of a covfast model spends its time: torch.profiler over forward + backward.

    python benchmarks/step_profile.py [--arch resnet34] [--size 128] [--bs 8] [--threads 0] [--rows 8]

The model as `covfast train` builds it (image head and lung output at their defaults, fp32, random weights:
the arithmetic of a trained run), on in-memory random images. Prints the median wall time of a step over
three (after one warm-up), then the operators with the most self CPU time, grouped by input shape (which
layer they belong to), and each one's share of the step.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch
from torch.profiler import ProfilerActivity, profile

from covfast.config import load_config
from covfast.learner import build_model
from covfast.spec import RunSpec


def step(model: torch.nn.Module, x: torch.Tensor) -> None:
    "Forward and backward through every output (the loss's own cost is small beside the model's)."
    out = model(x)
    sum(o.float().mean() for o in out).backward()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", default="resnet34")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--bs", type=int, default=8)
    parser.add_argument("--threads", type=int, default=0, help="torch threads; 0: torch's default")
    parser.add_argument("--rows", type=int, default=8)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    spec = RunSpec.from_flags(args.arch, load_config(), img_size=args.size, bs=args.bs)
    model = build_model(spec).train()
    x = torch.randn(args.bs, 3, args.size, args.size)
    step(model, x)  # warm-up: oneDNN picks its kernels
    times = []
    for _ in range(3):
        start = time.perf_counter()
        step(model, x)
        times.append(time.perf_counter() - start)
    print(f"{args.arch}, {args.size} px, bs {args.bs}, fp32, {torch.get_num_threads()} threads: "
          f"a training step (forward + backward) {statistics.median(times):.2f} s (median of 3)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step(model, x)
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("| operator | input shapes | calls | self CPU s | share of the step |\n|---|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        shapes = ", ".join(str(list(s)) for s in e.input_shapes[:2] if s)
        print(f"| {e.key} | {shapes} | {e.count} | {e.self_cpu_time_total / 1e6:.3f} | {100 * e.self_cpu_time_total / total:.1f}% |")


if __name__ == "__main__":
    main()
