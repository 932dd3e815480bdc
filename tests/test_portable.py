"""An export without covfast: examples/onnx_predict.py (covfast/portable.py) against `covfast predict --engine onnx`."""

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from PIL import Image

from covfast.dataset import DATASET_DIR
from covfast.portable import read_xray, resize_bilinear

from .helpers import cli
from .test_dicom import write_dicom
from .test_ensemble import member

REPO = Path(__file__).resolve().parents[1]
# run in a fresh interpreter where `import torch` or `import covfast` fails, and which says what it imported
GUARDED = """
import runpy, sys
sys.argv = sys.argv[1:]
try:
    runpy.run_path(sys.argv[0], run_name="__main__")
    code = 0
except SystemExit as e:
    code = e.code or 0
imported = sorted({m.split(".")[0] for m in sys.modules} & {"torch", "covfast", "fastai"})
print("IMPORTED", imported)
sys.exit(code if not imported else 3)
"""


def test_bilinear_resize_is_pytorchs():
    x = torch.randn(2, 7, 9, generator=torch.Generator().manual_seed(0))
    for size in [(64, 64), (13, 20), (4, 5), (7, 9)]:
        want = F.interpolate(x[None], size=size, mode="bilinear", align_corners=False)[0].numpy()
        assert np.abs(resize_bilinear(x.numpy(), *size) - want).max() < 1e-5, size


def test_the_example_needs_neither_covfast_nor_torch_and_writes_covfasts_masks(synth_root, in_tmp):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("pydicom")
    member(in_tmp / "runs", synth_root, "r", 32, 7)
    assert cli("calibrate", "r", "--specificity", "0.5").exit_code == 0  # a threshold that empties some X-rays
    assert cli("export", "r").exit_code == 0
    export = in_tmp / "runs" / "r" / "export"
    assert (export / "onnx_predict.py").read_bytes() == (REPO / "covfast" / "portable.py").read_bytes()
    xrays = in_tmp / "xrays"
    xrays.mkdir()
    for path in sorted((synth_root / DATASET_DIR / "Test").glob("*/images/*.png")):
        Image.open(path).save(xrays / path.name)  # 8-bit
    gray = read_xray(path)
    Image.fromarray(gray.astype(np.uint16) * 257).save(xrays / "wide.png")  # 16-bit: read over its full range
    assert Image.open(xrays / "wide.png").mode.startswith("I")
    write_dicom(xrays / "scan.dcm", (gray.astype(np.uint16) * 16), bits_stored=12)
    made = cli("predict", "r", xrays, "--out", "covfast", "--engine", "onnx")
    assert made.exit_code == 0, made.output
    poison = in_tmp / "poison"
    for name in ("torch", "covfast", "fastai"):
        (poison / name).mkdir(parents=True)
        (poison / name / "__init__.py").write_text(f"raise ImportError('{name} was imported')\n")
    files = sorted(xrays.iterdir())
    run = subprocess.run([sys.executable, "-c", GUARDED, str(REPO / "examples" / "onnx_predict.py"), str(export),
                          *map(str, files), "--out", str(in_tmp / "alone")], capture_output=True, text=True,
                         env={"PYTHONPATH": str(poison), "PATH": "/usr/bin:/bin"}, cwd=in_tmp)
    assert run.returncode == 0, run.stdout + run.stderr
    assert "IMPORTED []" in run.stdout
    table = pd.read_csv(in_tmp / "covfast" / "predictions.csv")
    assert len(table) == len(files) == 20
    outlined = 0
    for f in files:
        row = table[table.file == str(f)].iloc[0]
        ours = np.asarray(Image.open(in_tmp / "covfast" / row["mask"]))
        theirs = np.asarray(Image.open(in_tmp / "alone" / f"{f.stem}.png"))
        assert ours.shape == theirs.shape and int((ours != theirs).sum()) == 0, f.name
        assert f"{f}: {row.decision} (p {row.p_covid:.4f})" in run.stdout
        outlined += int(ours.any())
    assert 0 < outlined < len(files), "some X-rays outlined and some not, or the comparison proves little"
