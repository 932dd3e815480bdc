"""ONNX export: both model families export, onnxruntime agrees with PyTorch, and predict --engine onnx writes the
masks the PyTorch path writes."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covfast.config import Config
from covfast.dataset import DATASET_DIR
from tests.helpers import cli, train

pytest.importorskip("onnxruntime")



pytestmark = pytest.mark.usefixtures("in_tmp")


@pytest.mark.slow
@pytest.mark.parametrize("arch, flags", [("attention-unet", {"features": (4, 8, 16)}), ("resnet18", {})])
def test_both_model_families_export_and_predict_the_same_through_onnxruntime(synth_root, tmp_path, arch, flags):
    train(arch, synth_root, Config(img_size=32, bs=4, epochs=1, lr="3e-3", runs_dir="runs"), name="r", pretrained=False,
          **flags)
    result = cli("export", "r")
    assert result.exit_code == 0, result.output
    folder = tmp_path / "runs" / "r" / "export"
    sidecar = json.loads((folder / "model.json").read_text())
    assert sidecar["input"]["shape"] == ["batch", 3, 32, 32] and sidecar["opset"] == 17
    assert set(sidecar["outputs"]) == {"infection", "covid", "lung"} and len(sidecar["weights_sha256"]) == 64
    assert sidecar["checked"]["max_abs_logit_difference"] <= 1e-3 and "max |logit difference|" in result.stdout
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    for engine in ("torch", "onnx"):
        assert cli("predict", "r", images, "--out", engine, "--engine", engine, "--precision", "fp32").exit_code == 0
    a, b = pd.read_csv(tmp_path / "torch" / "predictions.csv"), pd.read_csv(tmp_path / "onnx" / "predictions.csv")
    assert (a.p_covid - b.p_covid).abs().max() <= 1e-4
    differing = sum(int((np.asarray(Image.open(tmp_path / "torch" / m)) != np.asarray(Image.open(tmp_path / "onnx" / m))).sum())
                    for m in [*a["mask"], *a.lung_mask])
    assert differing == 0


def test_predict_onnx_needs_an_export_of_the_current_weights(synth_root, tmp_path, fake_run):
    run = fake_run(tmp_path, synth_root, "r", infection=True, image_logit=1.0)
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    result = cli("predict", "r", images, "--out", "p", "--engine", "onnx")
    assert result.exit_code == 2 and "covfast export r" in result.stderr
    assert cli("export", "r").exit_code == 0
    assert cli("predict", "r", images, "--out", "p", "--engine", "onnx").exit_code == 0
    (run / "model.pth").write_bytes((run / "model.pth").read_bytes() + b"\0")  # other weights now
    result = cli("predict", "r", images, "--out", "q", "--engine", "onnx")
    assert result.exit_code == 2 and "other weights" in result.stderr
