"""covfast's pipeline against the bare model: does training and prediction cost only the model's arithmetic?

For each architecture and each precision (`--precisions`, default fp32 and the fast path `auto` gives
this machine: bf16 autocast + channels_last on a CPU with native bf16 or a bf16 GPU), at one image size,
in one process:

- bare step: forward + backward + optimizer on in-memory tensors (plain PyTorch, covfast's loss, a
  copy of the model), in the same precision and memory format as the loop, images/s;
- covfast's training loop: the Learner + DataLoaders reading the PNG tree, steady state (epoch 2, after
  warm-up batches), images/s. Each batch from epoch 2 on is followed by one bare step, timed apart, and
  `train_ratio` is the median of the pairs' ratios: the machine's speed drifts by minutes, and only
  figures taken side by side compare. Epoch 1 (PNG decoding) is reported beside epoch 2 (decoded
  PNGs come from the in-memory cache);
- the data pipeline alone (iterating the train DataLoader, augmentation included), images/s; its
  ratio to the training loop is `data_ratio`;
- prediction through `covfast predict`'s code path (`iter_outputs` + the decision's masks, PNGs decoded on the
  way) over the Val images `--repeats` times, each batch followed by a bare forward of a batch;
  `predict_ratio` is the median of the pairs' ratios (every pair's ratio is in the JSON);
- forward GFLOPs per image (torch.utils.flop_counter), achieved GFLOP/s (training counts 3x the
  forward) and its share of the device's measured matrix-product peak in that precision, peak
  resident memory (of the whole process, so far).

Then the fast path's rates over fp32's, per architecture.

End to end (`--e2e-runs`, or 1-epoch runs of `--archs` on 810 synthetic X-rays by default): `covfast predict RUN
FOLDER` as a user runs it, process start to every file written, against the bare forward of the same model on as
many X-rays in the same precision (`e2e_ratio`), one after the other `--e2e-repeats` times (the median pair); the
same for `--engine onnx` (the run's export through onnxruntime, on a copy of the run) against the bare forward in
the run's own precision (`onnx_e2e_ratio`); and how long `covfast train nosucharch` and `covfast predict nosuch
FOLDER` take to refuse. `--parts e2e` measures only this. On CUDA the loaders are the ones
`covfast train` uses there (worker processes, pinned memory).

Prints markdown tables; `--json PATH` writes the figures. Default settings take about 10 minutes
on 2 CPU cores:  python benchmarks/bench.py --size 128 --json bench.json
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import fastai.callback.progress  # noqa: F401  (adds Learner.no_bar)
import fastai.callback.schedule  # noqa: F401  (adds Learner.fit_one_cycle)
from fastai.callback.core import Callback, CancelFitException, CancelValidException
from torch.utils.flop_counter import FlopCounterMode

from covfast.data import clear_cache, inference_dataloaders
from covfast.dataset import scan_tree
from covfast.decision import learner_decision
from covfast.learner import learner_for_spec, pick_device
from covfast.device import autocast
from covfast.precision import Precision, cpu_runs_bf16, learner_precision, memory_format, resolve_precision
from covfast.losses import SegLoss
from covfast.inference import iter_outputs, load_run
from covfast.inputs import collect_images
from covfast.spec import RunSpec
from covfast.synth import write_synthetic


def median(values: list[float]) -> float:
    "The median: on a shared 2-core machine one slow batch (another process, the allocator growing) must not decide a figure."
    values = sorted(values)
    return values[len(values) // 2]


class PairedClock(Callback):
    """Times every training batch end to end (loader + step) and skips validation.

    From epoch `pair_from` on, one bare step (`bare()`, its seconds) runs after each batch, outside
    that batch's interval: each loop batch then has a bare step timed beside it, and their ratio
    does not depend on how fast the machine happens to be that minute (it drifts by 20% here).
    Paired epochs go on until they have taken `budget` seconds (at least one), then the fit stops.
    """
    order = 100

    def __init__(self, bare, pair_from: int = 1, budget: float = 30.0):
        self.bare, self.pair_from, self.budget = bare, pair_from, budget

    def before_fit(self):
        self.loop, self.paired, self._spent = [], [], 0.0

    def before_epoch(self):
        self.loop.append([])
        self.paired.append([])
        self._t = time.perf_counter()

    def after_batch(self):
        if not self.training:
            return
        sync(self.dls.device)
        self.loop[-1].append(time.perf_counter() - self._t)
        if self.epoch >= self.pair_from:
            self.paired[-1].append(self.bare())
        self._t = time.perf_counter()

    def before_validate(self):
        raise CancelValidException

    def after_epoch(self):
        if self.epoch >= self.pair_from:
            self._spent += sum(self.loop[-1]) + sum(self.paired[-1])
            if self._spent >= self.budget:
                raise CancelFitException


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak_gflops(device: torch.device, dtype: torch.dtype, reps: int = 10) -> float:
    "GFLOP/s of a large matrix product in `dtype`, 8192^3 on CUDA and 2048^3 on CPU (the ceiling to compare against)."
    n = 8192 if device.type == "cuda" else 2048
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(2):
        a @ b
    sync(device)
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    sync(device)
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def forward_gflops(model: torch.nn.Module, size: int, device: torch.device) -> float:
    x = torch.zeros(1, 3, size, size, device=device)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model.eval()(x)
    model.train()
    return counter.get_total_flops() / 1e9


def random_batch(bs: int, size: int, device: torch.device, fmt: torch.memory_format) -> torch.Tensor:
    "In-memory input images in the memory format covfast's learner feeds its model."
    return torch.randn(bs, 3, size, size, device=device).contiguous(memory_format=fmt)


class BareStep:
    "One forward + backward + Adam step on an in-memory batch, on its own copy of the model; calling it returns its seconds."

    def __init__(self, model, bs, size, device, precision, fmt, warmup=2):
        self.model, self.device, self.precision = copy.deepcopy(model).train(), device, precision
        self.x = random_batch(bs, size, device, fmt)
        self.y = (torch.rand(bs, size, size, device=device) > 0.8).long()
        self.loss_func, self.opt = SegLoss(RunSpec("attention-unet")), torch.optim.Adam(self.model.parameters(), 1e-4)
        for _ in range(warmup):
            self()

    def __call__(self) -> float:
        t = time.perf_counter()
        self.opt.zero_grad()
        with autocast(self.precision, self.device):
            out = self.model(self.x).map(lambda t: t.float())  # the loss in fp32, as in the learner
            loss = self.loss_func(out, self.y, self.y if out.has("lung") else None)  # a lung target where the loop has one
        loss.backward()
        self.opt.step()
        sync(self.device)
        return time.perf_counter() - t


class BareForward:
    "One no-grad forward pass of an in-memory batch through `model`; calling it returns its seconds."

    def __init__(self, model, bs, size, device, precision, fmt, warmup=1):
        self.model, self.device, self.precision = model, device, precision
        self.x = random_batch(bs, size, device, fmt)
        for _ in range(warmup):
            self()

    @torch.no_grad()
    def __call__(self) -> float:
        t = time.perf_counter()
        with autocast(self.precision, self.device):
            self.model(self.x)
        sync(self.device)
        return time.perf_counter() - t


def bench_arch(arch: str, data: Path, size: int, bs: int, device: torch.device, warmup_batches: int,
               peak_gflop_s: float, repeats: int = 3, pair_seconds: float = 60.0, precision: str = "auto") -> dict:
    # the learner `covfast train` builds: its loaders (workers and pinned memory on CUDA), seed and cuDNN settings
    spec = RunSpec(arch, data_root=str(Path(data).resolve()), img_size=size, bs=bs, seed=0, pretrained=False,
                   precision=precision)  # with the image head, as `covfast train` builds it
    learn, _ = learner_for_spec(spec, device=device, warn=False)
    used = learner_precision(learn)
    fmt = memory_format(learn)
    model = learn.model.to(device)
    gflops = forward_gflops(model, size, device)

    # epoch 1 decodes the PNGs; from epoch 2 on (PNGs from the cache) each batch is paired with a bare
    # step, for `pair_seconds` (a cheap model gets more epochs, hence more pairs)
    clock = PairedClock(BareStep(model, bs, size, device, used, fmt), pair_from=1, budget=pair_seconds)
    with learn.no_bar(), learn.no_logging():
        learn.fit_one_cycle(10, 1e-4, cbs=clock)
    epoch1 = bs / median(clock.loop[0][1:])
    loop_s = [t for epoch in clock.loop[1:] for t in epoch[warmup_batches:]]
    bare_s = [t for epoch in clock.paired[1:] for t in epoch[warmup_batches:]]
    loop, bare = bs / median(loop_s), bs / median(bare_s)
    train_ratios = sorted(b / t for b, t in zip(bare_s, loop_s))

    stamps = [time.perf_counter()]
    for xb, yb in learn.dls.train:  # augmentation included, as in training
        sync(device)
        stamps.append(time.perf_counter())
    data_rate = bs / median([b - a for a, b in zip(stamps, stamps[1:])])

    # prediction exactly as `covfast predict` runs it: the inference learner's validation transforms,
    # PNGs decoded on the way (the cache is cleared before each pass), each batch paired with a bare forward
    # the run's learner as `load_run` builds it (its precision callbacks stay): inference transforms only
    learn.dls = inference_dataloaders(size, bs, device=device)
    items = scan_tree(data)
    items = items[(items.split == "Val") & items.label.isin(spec.classes)].reset_index(drop=True)
    learn.model.eval()
    forward = BareForward(learn.model, bs, size, device, used, fmt)
    decision = learner_decision(learn)
    predict_s, forward_s = [], []
    start, passes = time.perf_counter(), 0
    with torch.no_grad():
        # at least `repeats` passes; more, up to 10, while they fit in `pair_seconds`
        while passes < repeats or (passes < 10 and time.perf_counter() - start < pair_seconds):
            passes += 1
            clear_cache()
            t, first = time.perf_counter(), True
            for i, out, _ in iter_outputs(learn, items, bs=bs):
                decision.mask(out, (size, size))
                if (i + 1) % bs == 0:
                    sync(device)
                    if not first:  # the first batch of a pass also pays for starting the loader
                        predict_s.append(time.perf_counter() - t)
                        forward_s.append(forward())
                    t, first = time.perf_counter(), False
    predict, bare_fwd = bs / median(predict_s), bs / median(forward_s)
    predict_ratios = sorted(f / p for f, p in zip(forward_s, predict_s))

    return {
        "arch": arch, "size": size, "bs": bs, "device": str(device), "precision": used.mode,
        "gflops_forward": round(gflops, 3),
        "bare_step_img_s": round(bare, 3), "train_epoch1_img_s": round(epoch1, 3), "train_img_s": round(loop, 3),
        "train_ratio": round(median(train_ratios), 3), "train_ratios": [round(r, 3) for r in train_ratios],
        "train_pairs": len(train_ratios), "predict_pairs": len(predict_ratios),
        "data_img_s": round(data_rate, 1), "data_ratio": round(data_rate / loop, 1),
        "bare_forward_img_s": round(bare_fwd, 3), "predict_img_s": round(predict, 3),
        "predict_ratio": round(median(predict_ratios), 3), "predict_ratios": [round(r, 3) for r in predict_ratios],
        "train_gflop_s": round(3 * gflops * loop, 1), "predict_gflop_s": round(gflops * predict, 1),
        "bare_step_peak_pct": round(100 * 3 * gflops * bare / peak_gflop_s, 2),
        "train_peak_pct": round(100 * 3 * gflops * loop / peak_gflop_s, 2),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
    }


def _seconds(argv: list[str], env: dict[str, str] | None = None) -> float:
    "Wall seconds of a command run as a user runs it (a new process); its output is kept only when it fails."
    t = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t
    if done.returncode not in (0, 2):
        raise RuntimeError(f"{' '.join(argv)} failed:\n{done.stderr[-2000:]}")
    return seconds


def bench_end_to_end(run: Path, images: Path, work: Path, bs: int, precision: str, repeats: int = 3) -> dict:
    """`covfast predict` on `images` as a whole process (start to files written), torch and onnx engines, each against
    the bare forward of the run's model on as many X-rays: the median of `repeats` side-by-side pairs."""
    n = len(collect_images([images]))
    learn, loaded = load_run(run, precision=precision)
    used = learner_precision(learn)
    device = learn.dls.device
    forward = BareForward(learn.model, bs, loaded.spec.img_size, device, used, memory_format(learn))
    batches = -(-n // bs)
    copy_dir = work / "runs" / run.name  # the export is written into a copy, not the user's run
    if not copy_dir.exists():
        shutil.copytree(run, copy_dir, ignore=shutil.ignore_patterns("eval", "report", "predictions", "export"))
        _seconds([sys.executable, "-m", "covfast", "export", str(copy_dir)])
    command = [sys.executable, "-m", "covfast", "predict", str(copy_dir), str(images), "--bs", str(bs),
               "--precision", precision]
    pairs: dict[str, list[tuple[float, float]]] = {"torch": [], "onnx": []}
    for k in range(repeats):
        for engine in pairs:
            bare = sum(forward() for _ in range(batches))
            out = work / f"out-{run.name}-{engine}-{k}"
            whole = _seconds(command + ["--engine", engine, "--out", str(out)])
            written = len(list(out.rglob("*.png")))
            if written < 2 * n:  # a mask and an overlay per X-ray at least
                raise RuntimeError(f"covfast predict --engine {engine} wrote {written} PNGs for {n} X-rays")
            shutil.rmtree(out)
            pairs[engine].append((bare, whole))
    python = [sys.executable, "-m", "covfast"]
    refusals = {"train_typo_s": min(_seconds(python + ["train", "nosucharch"]) for _ in range(3)),
                "predict_no_run_s": min(_seconds(python + ["predict", "nosuch", str(images)]) for _ in range(3))}
    result = {"run": str(run), "arch": loaded.spec.arch, "size": loaded.spec.img_size, "precision": used.mode,
              "xrays": n, "bs": bs}
    for engine, prefix in (("torch", "e2e"), ("onnx", "onnx_e2e")):
        bare_s, whole_s = zip(*pairs[engine])
        result.update({f"{prefix}_bare_forward_img_s": round(n / median(list(bare_s)), 2),
                       f"{prefix}_img_s": round(n / median(list(whole_s)), 2),
                       f"{prefix}_ratio": round(median([b / w for b, w in pairs[engine]]), 3),
                       f"{prefix}_seconds": [round(w, 2) for w in whole_s]})
    return {**result, **{k: round(v, 2) for k, v in refusals.items()}}


E2E_COLUMNS = [("arch", "arch"), ("precision", "precision"), ("xrays", "X-rays"), ("e2e_bare_forward_img_s", "bare fwd img/s"),
               ("e2e_img_s", "covfast predict img/s (whole process)"), ("e2e_ratio", "e2e ratio"),
               ("onnx_e2e_img_s", "--engine onnx img/s"), ("onnx_e2e_ratio", "onnx e2e ratio"),
               ("train_typo_s", "train typo refused (s)"), ("predict_no_run_s", "predict no-run refused (s)")]


def synthetic_runs(archs: list[str], work: Path, size: int, bs: int) -> tuple[list[Path], Path]:
    "1-epoch runs of `archs` (their speed is the model's, whatever they learnt) and a synthetic tree of 810 X-rays."
    data = write_synthetic(work / "e2e-data", per_class=90, size=256, seed=1)
    runs = []
    for arch in archs:
        _seconds([sys.executable, "-m", "covfast", "train", arch, "--data", str(data), "--epochs", "1", "--size",
                  str(size), "--bs", str(bs), "--no-pretrained", "--name", f"e2e-{arch}"],
                 env={**os.environ, "COVFAST_RUNS_DIR": str(work / "trained")})
        runs.append(work / "trained" / f"e2e-{arch}")
    return runs, data


COLUMNS = [("arch", "arch"), ("precision", "precision"), ("gflops_forward", "fwd GFLOPs/img"), ("bare_step_img_s", "bare step img/s"),
           ("train_epoch1_img_s", "loop epoch 1 img/s"), ("train_img_s", "loop img/s"), ("train_ratio", "train ratio"),
           ("data_img_s", "data img/s"), ("data_ratio", "data ratio"), ("bare_forward_img_s", "bare fwd img/s"),
           ("predict_img_s", "predict img/s"), ("predict_ratio", "predict ratio"), ("train_gflop_s", "train GFLOP/s"),
           ("train_peak_pct", "train % of peak"),
           ("peak_rss_mib", "peak RSS MiB")]


def markdown(results: list[dict], columns: list[tuple[str, str]] = COLUMNS) -> str:
    lines = ["| " + " | ".join(h for _, h in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[k]) for k, _ in columns) + " |" for r in results]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=128, help="image side the models see (default 128)")
    p.add_argument("--bs", type=int, default=8, help="batch size (default 8)")
    p.add_argument("--archs", default="attention-unet,resnet34", help="comma-separated architectures")
    p.add_argument("--data", type=Path, help="a COVID-QU-Ex tree (default: a synthetic 256 px tree written to a temp folder)")
    p.add_argument("--per-class", type=int, default=24,
                   help="synthetic images per class and split (default 24: 48 training images, 6 batches of 8)")
    p.add_argument("--repeats", type=int, default=3, help="passes of prediction over the Val images, at least (default 3)")
    p.add_argument("--pair-seconds", type=float, default=60.0,
                   help="seconds of paired timing to collect for training and for prediction, when cheap enough "
                        "(default 60: at 30 the ResNet34's bf16 loop gave 10 pairs whose ratios spread from 0.61 to 1.11)")
    p.add_argument("--warmup-batches", type=int, default=1, help="epoch-2 batches left out of the loop's rate (default 1)")
    p.add_argument("--device", choices=["cpu", "cuda"], help="default: cuda when available")
    p.add_argument("--precisions", default="fp32,auto",
                   help="comma-separated precisions to measure, each as `covfast train --precision` takes it "
                        "(default fp32,auto: plain fp32 beside the fast path this machine gets)")
    p.add_argument("--parts", default="loop,e2e",
                   help="what to measure: loop (training and in-process prediction against the bare model), e2e "
                        "(covfast predict as a whole process); default both")
    p.add_argument("--e2e-runs", help="comma-separated trained runs for the e2e part (default: 1-epoch runs of --archs "
                                      "on 810 synthetic X-rays)")
    p.add_argument("--e2e-images", type=Path, help="the folder of X-rays the e2e part predicts on (with --e2e-runs; "
                                                   "500 or more)")
    p.add_argument("--e2e-repeats", type=int, default=3, help="side-by-side pairs per engine (default 3)")
    p.add_argument("--json", type=Path, help="write the figures here")
    args = p.parse_args(argv)
    parts = set(args.parts.split(","))
    if args.e2e_runs and not args.e2e_images:
        p.error("--e2e-runs needs --e2e-images, the folder of X-rays to predict on")
    if args.data is None and 2 * args.per_class < 3 * args.bs:
        # the rates are medians of batch intervals: each split needs three or more batches
        p.error(f"--per-class {args.per_class} gives fewer than 3 batches of {args.bs}; use --per-class {-(-3 * args.bs // 2)} or more")

    device = pick_device(args.device)
    torch.manual_seed(0)
    # fp32 and the precision `auto` picks here (the fast path), each measured against its own bare step
    modes = list(dict.fromkeys(resolve_precision(p.strip(), device).mode for p in args.precisions.split(",")))
    peaks = {m: matmul_peak_gflops(device, Precision(m, "").dtype or torch.float32) for m in modes}
    e2e = []
    with tempfile.TemporaryDirectory() as tmp:
        if "e2e" in parts:
            runs, images = ([Path(r) for r in args.e2e_runs.split(",")], args.e2e_images) if args.e2e_runs else \
                synthetic_runs([a.strip() for a in args.archs.split(",")], Path(tmp), args.size, args.bs)
            for run in runs:
                for mode in modes:
                    e2e.append(bench_end_to_end(run, images, Path(tmp), args.bs, mode, args.e2e_repeats))
                    print(f"{run.name} ({mode}) end to end: ratio {e2e[-1]['e2e_ratio']}", file=sys.stderr)
        data = args.data or write_synthetic(Path(tmp) / "synth", per_class=args.per_class, size=256, seed=0)
        results = []
        for arch in (args.archs.split(",") if "loop" in parts else []):
            for mode in modes:
                t = time.perf_counter()
                results.append(bench_arch(arch.strip(), data, args.size, args.bs, device, args.warmup_batches, peaks[mode],
                                          args.repeats, args.pair_seconds, precision=mode))
                results[-1]["bench_seconds"] = round(time.perf_counter() - t, 1)
                print(f"{arch} ({mode}): done in {results[-1]['bench_seconds']} s", file=sys.stderr)
    machine = {"cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
               "torch": torch.__version__, "matmul_peak_gflop_s": {m: round(v, 1) for m, v in peaks.items()},
               "cpu_runs_bf16": cpu_runs_bf16(),
               "gpu": torch.cuda.get_device_name(0) if device.type == "cuda" else None}
    print(f"\ncovfast bench: {args.size} px, bs {args.bs}, {device} ({machine['torch_threads']} threads), "
          f"data {'synthetic' if args.data is None else args.data}"
          + (f", end to end on {args.e2e_images or 'synthetic X-rays'}" if e2e else "") + "; matrix-product peak "
          + ", ".join(f"{m} {v:.0f} GFLOP/s" for m, v in peaks.items()) + "\n")
    if results:
        print(markdown(results))
    if e2e:
        print(f"\n`covfast predict` as a whole process against the bare forward ({e2e[0]['xrays']} X-rays):\n")
        print(markdown(e2e, E2E_COLUMNS))
    speedups = fast_path_speedups(results)
    if speedups:
        print("\nFast path against fp32, same run (img/s ratios):\n")
        print("| arch | precision | training loop | bare step | prediction |\n|---|---|---|---|---|")
        for s in speedups:
            print(f"| {s['arch']} | {s['precision']} | {s['train_speedup']}x | {s['bare_step_speedup']}x | {s['predict_speedup']}x |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine, "settings": {k: str(v) for k, v in vars(args).items()},
                                         "results": [r for r in results], "speedups": speedups,
                                         "end_to_end": e2e}, indent=2))
        print(f"\nWrote {args.json}")
    return 0


def fast_path_speedups(results: list[dict]) -> list[dict]:
    "Per arch, each non-fp32 precision's training-loop, bare-step and prediction rates over fp32's."
    fp32 = {r["arch"]: r for r in results if r["precision"] == "fp32"}
    return [{"arch": r["arch"], "precision": r["precision"],
             "train_speedup": round(r["train_img_s"] / fp32[r["arch"]]["train_img_s"], 2),
             "bare_step_speedup": round(r["bare_step_img_s"] / fp32[r["arch"]]["bare_step_img_s"], 2),
             "predict_speedup": round(r["predict_img_s"] / fp32[r["arch"]]["predict_img_s"], 2)}
            for r in results if r["precision"] != "fp32" and r["arch"] in fp32]


if __name__ == "__main__":
    sys.exit(main())
