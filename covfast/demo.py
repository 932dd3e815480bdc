"""`covfast demo`: the whole job on a synthetic tree in a few minutes, offline, on a laptop CPU."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

from .calibrate import calibrate
from .compare import compare
from .config import Config
from .errors import CovfastError
from .evaluate import evaluate
from .learner import pick_device
from .report import report
from .spec import RunSpec
from .synth import write_synthetic
from .train import train

__all__ = ["DEMO_SETTINGS", "demo"]

# Small enough for 2 CPU cores in a few minutes, large enough that both models learn the synthetic
# infection pattern (a Dice far from 0) so the reports show something worth reading. ResNet34 from
# scratch at bs 8 diverges at 3e-3 (valid loss 247.89 at epoch 4, every mask empty: Test COVID-19 Dice 0);
# at 1e-3 it scored Test COVID-19 Dice 0.6876 with every Non-COVID and Normal image left empty. The Attention
# U-Net outlined nothing after 15 epochs for 2 of 3 seeds (Val COVID-19 Dice 0); after 25, 0.446-0.546 for all 3.
DEMO_SETTINGS = {"per_class": 16, "size": 64, "bs": 8,
                 "lr": {"attention-unet": "3e-3", "resnet34": "1e-3"},
                 "epochs": {"attention-unet": 25, "resnet34": 20}}


def demo(
    out: str | Path | None = None,  # folder for data/, runs/ and the comparison (default runs/demo)
    device: str | None = None,
    say: Callable[[str], None] = print,  # where the stage headlines go
    progress=None,  # progress-bar factory for evaluation, as the CLI passes it
    settings: dict | None = None,  # overrides of DEMO_SETTINGS (tests use smaller ones)
) -> Path:
    "Synthesize data, train both models briefly, evaluate on Test, write both reports and their comparison."
    s = {**DEMO_SETTINGS, **(settings or {})}
    pick_device(device)  # a bad --device is refused before anything is written
    out = Path(out) if out is not None else Path("runs") / "demo"
    if out.exists() and any(out.iterdir()):
        raise CovfastError(f"{out} exists and is not empty (an earlier demo?); pass --out with a new folder, or delete it")
    out.mkdir(parents=True, exist_ok=True)
    say(f"[1/5] Writing a synthetic COVID-QU-Ex tree ({s['per_class']} images per class and split, "
        f"{s['size']} px) to {out / 'data'}")
    data = write_synthetic(out / "data", per_class=s["per_class"], size=s["size"], seed=0)
    config = Config(data_path=str(data), runs_dir=str(out / "runs"), img_size=s["size"], bs=s["bs"])
    runs = []
    for step, arch in enumerate(("attention-unet", "resnet34"), start=2):
        epochs = s["epochs"][arch]
        say(f"[{step}/5] Training {arch} for {epochs} epochs from scratch (no downloads)")
        spec = RunSpec.from_flags(arch, config, epochs=epochs, lr=s["lr"][arch], pretrained=False)
        runs.append(train(spec, name=arch, runs_dir=config.runs_dir, device=device))
    say("[4/5] Choosing each run's threshold on Val, then evaluating on Test and writing the reports")
    pages = []
    for run in runs:
        calibrate(run, config=config, device=device, progress=progress)  # the protocol: threshold on Val, scores on Test
        _, summary, _ = evaluate(run, "Test", config=config, device=device, progress=progress)
        dice = ", ".join(f"{g} {d:.3f}" for g, d in zip(summary.group, summary.dice))
        say(f"  {run.name}: per-image Dice on Test: {dice}")
        pages.append(report(run, "Test", config, device=device, progress=progress))
    say("[5/5] Comparing the two models")
    page = compare(runs, "Test", out / "compare", config, device=device, progress=progress)
    for run, rep in zip(runs, pages):
        say(f"Report of {run.name}: {rep}")
    written = sum(f.stat().st_size for f in out.rglob("*") if f.is_file())
    say(f"The demo wrote {written / 1e6:.0f} MB to {out}/ (most of it the models' weights, model.pth); "
        f"delete the folder when done")
    say(f"Comparison of both models: {page}")
    return page
