"""ONNX export: both model families export, onnxruntime agrees with PyTorch, and predict --engine onnx writes the
masks the PyTorch path writes."""

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from covfast.config import Config
from covfast.dataset import DATASET_DIR
from tests.helpers import cli, one_line_exit_2, train

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


def _exported(tmp_path, synth_root, fake_run, name="r", **kwargs):
    "A fake run (no calibration.json unless asked), exported; its folder."
    run = fake_run(tmp_path, synth_root, name, infection=True, image_logit=1.0, lungs="everywhere", **kwargs)
    result = cli("export", name)
    assert result.exit_code == 0, result.output
    return run, result


def test_an_uncalibrated_export_says_so_in_its_sidecar_and_on_the_terminal(synth_root, tmp_path, fake_run):
    run, result = _exported(tmp_path, synth_root, fake_run)
    decision = json.loads((run / "export" / "model.json").read_text())["decision"]
    assert decision["calibrated_on"] is None and "r was never calibrated" in decision["not_calibrated"]
    assert "note: r was never calibrated: its decision uses the threshold 0.5" in result.stderr
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    predicted = cli("predict", "r", images, "--out", "p")  # predict says it too, in one line before its work
    assert predicted.exit_code == 0 and "r was never calibrated" in predicted.stdout


@pytest.mark.parametrize("damage", ["cut short", "empty", "junk"])
def test_a_damaged_model_onnx_is_one_line_naming_it(synth_root, tmp_path, fake_run, damage):
    run, _ = _exported(tmp_path, synth_root, fake_run, threshold=0.5)
    onnx = run / "export" / "model.onnx"
    data = onnx.read_bytes()
    onnx.write_bytes({"cut short": data[: len(data) // 2], "empty": b"", "junk": b"not a model" * 100}[damage])
    sidecar = json.loads((run / "export" / "model.json").read_text())
    from covfast.runs import sha256, write_json
    write_json(run / "export" / "model.json", {**sidecar, "model_sha256": sha256(onnx)})  # past the hash: onnxruntime's turn
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    result = cli("predict", "r", images, "--out", "p", "--engine", "onnx")
    one_line_exit_2(result, "model.onnx is not an ONNX model onnxruntime can load", "covfast export")
    assert "INVALID_PROTOBUF" not in result.stderr or "(" in result.stderr


def test_a_model_onnx_of_another_run_is_refused(synth_root, tmp_path, fake_run):
    run, _ = _exported(tmp_path, synth_root, fake_run, threshold=0.5)
    other = fake_run(tmp_path, synth_root, "other", infection=False, image_logit=-1.0, lungs="everywhere", threshold=0.5)
    assert cli("export", "other").exit_code == 0
    (run / "export" / "model.onnx").write_bytes((other / "export" / "model.onnx").read_bytes())
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    one_line_exit_2(cli("predict", "r", images, "--out", "p", "--engine", "onnx"),
                    "model.onnx is not the file `covfast export` wrote", "covfast export r")


def test_a_sidecar_resaved_with_sorted_keys_still_predicts_the_same(synth_root, tmp_path, fake_run):
    "jq -S: the outputs listed in another order; the names come from the graph, so nothing changes."
    run, _ = _exported(tmp_path, synth_root, fake_run, threshold=0.5)
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    assert cli("predict", "r", images, "--out", "a", "--engine", "onnx").exit_code == 0
    path = run / "export" / "model.json"
    path.write_text(json.dumps(json.loads(path.read_text()), sort_keys=True, indent=2))
    assert list(json.loads(path.read_text())["outputs"]) == ["covid", "infection", "lung"]
    result = cli("predict", "r", images, "--out", "b", "--engine", "onnx")
    assert result.exit_code == 0, result.output
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "a" / "predictions.csv").drop(columns=["mask", "lung_mask", "overlay"]),
                                  pd.read_csv(tmp_path / "b" / "predictions.csv").drop(columns=["mask", "lung_mask", "overlay"]))


def test_a_sidecar_without_the_lung_output_is_refused_not_nan(synth_root, tmp_path, fake_run):
    run, _ = _exported(tmp_path, synth_root, fake_run, threshold=0.5)
    path = run / "export" / "model.json"
    sidecar = json.loads(path.read_text())
    del sidecar["outputs"]["lung"]
    path.write_text(json.dumps(sidecar))
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    one_line_exit_2(cli("predict", "r", images, "--out", "p", "--engine", "onnx"),
                    "lists the outputs covid, infection", "has covid, infection, lung", "covfast export r")


def test_calibrating_after_export_says_the_export_is_stale_and_onnx_refuses_it(synth_root, tmp_path, fake_run):
    run, _ = _exported(tmp_path, synth_root, fake_run, threshold=0.5)
    result = cli("calibrate", "r", "--force")
    assert result.exit_code == 0, result.output
    new = json.loads((run / "calibration.json").read_text())["threshold"]
    assert new != 0.5 and f"holds threshold 0.5, the run's decision is now {new:.4g}" in result.stdout
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    one_line_exit_2(cli("predict", "r", images, "--out", "p", "--engine", "onnx"), "holds threshold 0.5", "`covfast export r` again")
    assert cli("export", "r").exit_code == 0  # exported again: current
    assert cli("predict", "r", images, "--out", "p", "--engine", "onnx").exit_code == 0
