"""Where one training step of a covfast model spends its time: torch.profiler over bench.py's bare step.

    python benchmarks/step_profile.py [--arch resnet34] [--size 128] [--bs 8] [--threads 0] [--rows 8]

The model as `covfast train` builds it (image head and lung output at their defaults, fp32, random weights:
the arithmetic of a trained run), one step as `bench.py`'s `BareStep` takes it (forward, covfast's loss,
backward, Adam, on in-memory images). Prints the median wall time of a step over three (after one
warm-up), then the operators with the most self CPU time, grouped by input shape (which layer they belong
to), and each one's share of the step.
"""

from __future__ import annotations

import argparse

import torch
from torch.profiler import ProfilerActivity, profile

from bench import BareStep, median
from covfast.config import load_config
from covfast.learner import build_model
from covfast.precision import resolve_precision
from covfast.spec import RunSpec


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
    cpu = torch.device("cpu")
    step = BareStep(build_model(spec), args.bs, args.size, cpu, resolve_precision("fp32", cpu), torch.contiguous_format,
                    warmup=1)  # the warm-up lets oneDNN pick its kernels
    print(f"{args.arch}, {args.size} px, bs {args.bs}, fp32, {torch.get_num_threads()} threads: a training step "
          f"(forward, loss, backward, Adam) {median([step() for _ in range(3)]):.2f} s (median of 3)")
    with profile(activities=[ProfilerActivity.CPU], record_shapes=True) as prof:
        step()
    events = prof.key_averages(group_by_input_shape=True)
    total = sum(e.self_cpu_time_total for e in events)
    print("| operator | input shapes | calls | self CPU s | share of the step |\n|---|---|---|---|---|")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[:args.rows]:
        shapes = ", ".join(str(list(s)) for s in e.input_shapes[:2] if s)
        print(f"| {e.key} | {shapes} | {e.count} | {e.self_cpu_time_total / 1e6:.3f} | {100 * e.self_cpu_time_total / total:.1f}% |")


if __name__ == "__main__":
    main()
