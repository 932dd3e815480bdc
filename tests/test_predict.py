"""predict on a mixed folder, and the overlay's colours."""

import numpy as np
import torch
import pandas as pd
import pytest
from PIL import Image
from typer.testing import CliRunner

from covfast.cli import app
from covfast.dataset import DATASET_DIR
from covfast.figures import overlay

runner = CliRunner()


def test_overlay_is_red_exactly_where_the_mask_is():
    gray = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
    mask = np.zeros((8, 8), bool)
    mask[2:5, 3:7] = True
    rgb = overlay(gray, mask)
    assert rgb.shape == (8, 8, 3)
    assert ((rgb[..., 0] > rgb[..., 1]) == mask).all()  # red dominates on the mask only
    assert (rgb[~mask] == gray[~mask][:, None]).all()  # elsewhere the X-ray is untouched


@pytest.fixture
def mixed_folder(synth_root, tmp_path):
    src = sorted((synth_root / DATASET_DIR / "Test" / "COVID-19" / "images").iterdir())
    folder = tmp_path / "mixed"
    folder.mkdir()
    good = np.asarray(Image.open(src[0]))
    Image.fromarray(good).save(folder / "good.png")
    Image.fromarray(good.astype(np.uint16) * 257).save(folder / "deep16.png")  # 16-bit
    Image.fromarray(np.stack([good] * 3, -1)).resize((50, 40)).save(folder / "photo.jpg")  # RGB JPEG, other size
    (folder / "notes.png").write_text("not an image")
    lungs = tmp_path / "lungs"
    lungs.mkdir()
    Image.open(synth_root / DATASET_DIR / "Test" / "COVID-19" / "lung masks" / src[0].name).save(lungs / "good.png")
    Image.fromarray(np.zeros_like(good)).save(lungs / "deep16.png")  # an empty lung mask: no % of lung
    return folder, lungs


def test_predict_mixed_folder(synth_root, tmp_path, mixed_folder, monkeypatch, fake_run):
    monkeypatch.chdir(tmp_path)
    folder, lungs = mixed_folder
    fake_run(tmp_path, synth_root, "everywhere", infection=True)
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", "everywhere", str(folder), "--out", str(out), "--lung-masks", str(lungs)])
    assert result.exit_code == 1, result.output
    assert "notes.png" in result.stderr and "1 of 4 files" in result.stderr
    table = pd.read_csv(out / "predictions.csv").set_index("file")
    assert len(table) == 3 and not any("notes" in f for f in table.index)
    row = table.loc[str(folder / "photo.jpg")]
    mask = np.asarray(Image.open(out / row["mask"]))
    assert mask.shape == (40, 50) and set(np.unique(mask)) == {255}  # input resolution, 0/255
    assert row.infected_pixels == 2000 and row.infection_pct_image == 100
    assert table.loc[str(folder / "good.png"), "infection_pct_of_lung"] == 100
    assert table.loc[str(folder / "good.png"), ["severity_band", "lung_source"]].tolist() == [">=75", "given"]
    # an empty lung mask: no infection % of lung, and the band says why
    assert np.isnan(table.loc[str(folder / "deep16.png"), "infection_pct_of_lung"])
    assert table.loc[str(folder / "deep16.png"), "severity_band"] == "no lungs found"
    # no lung mask of that name, and a run without lungs of its own: nothing to measure with, and said so
    assert np.isnan(table.loc[str(folder / "photo.jpg"), "infection_pct_of_lung"])
    assert "photo.jpg: lung mask not used (no lung mask of that name)" in result.stderr
    assert (out / "overlays" / "deep16.png").is_file()
    again = runner.invoke(app, ["predict", "everywhere", str(folder), "--out", str(out)])
    assert again.exit_code == 2 and "already holds" in again.stderr


def test_predict_needs_only_the_run_directory(synth_root, tmp_path, monkeypatch, fake_run):
    "A run copied to another machine, without the data it was trained on, still predicts."
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path, tmp_path / "gone" / "covid-qu-ex", "copied", infection=False)
    images = synth_root / DATASET_DIR / "Test" / "Non-COVID" / "images"
    out = tmp_path / "pred"
    result = runner.invoke(app, ["predict", "copied", str(images), "--out", str(out)])
    assert result.exit_code == 0, result.output
    table = pd.read_csv(out / "predictions.csv")
    assert len(table) == len(list(images.iterdir())) and (table.infected_pixels == 0).all()


def test_prediction_batches_hold_the_pixels_of_fastais_validation_pipeline(mixed_folder, synth_root):
    "iter_outputs builds its batches without fastai's per-item pipeline; they must be the same tensors."
    from covfast.data import inference_dataloaders
    from covfast.learner import covfast_learner
    from covfast.inference import _input_size, validation_batch
    from covfast.predictor import _batch_pixels
    from covfast.spec import RunSpec

    folder, _ = mixed_folder
    masks = synth_root / DATASET_DIR / "Test" / "COVID-19" / "infection masks"
    good_mask = str(sorted(masks.iterdir())[0])
    items = pd.DataFrame({"image": [str(folder / n) for n in ("good.png", "deep16.png", "photo.jpg")],
                          "infection_mask": [good_mask] * 3})
    for size in (32, 48):
        learn, _ = covfast_learner(inference_dataloaders(size, 3), RunSpec("attention-unet", features=(4, 8)),
                                   check_data=False)
        assert _input_size(learn) == (size, size)
        fast = validation_batch(learn, _batch_pixels(items, _input_size(learn), with_labels=True))
        slow = learn.dls.test_dl(items, with_labels=True, bs=3).one_batch()
        assert type(fast[0]) is type(slow[0]) and type(fast[1]) is type(slow[1])
        assert fast[0].shape == slow[0].shape == (3, 3, size, size)
        assert torch.equal(fast[0], slow[0]), (fast[0] - slow[0]).abs().max()
        assert torch.equal(fast[1], slow[1]) and fast[1].dtype == slow[1].dtype


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_predict_without_fastai_feeds_the_model_what_the_learner_does(synth_root, tmp_path, monkeypatch, precision):
    """covfast predict's `Predictor` (PyTorch alone) against the learner evaluate uses (`inference.iter_batches`): the
    same input tensors bit for bit, the same outputs, in either precision; and a predict process on an Attention
    U-Net run never imports fastai."""
    import os
    import subprocess
    import sys

    from fastai.vision.core import imagenet_stats

    from covfast.config import Config
    from covfast.inference import _input_size, iter_batches, load_run, validation_batch
    from covfast.precision import learner_precision
    from covfast.predictor import IMAGENET_MEAN, IMAGENET_STD, _batch_pixels, load_predictor
    from tests.helpers import train

    assert [list(IMAGENET_MEAN), list(IMAGENET_STD)] == [list(v) for v in imagenet_stats]
    monkeypatch.chdir(tmp_path)
    train("attention-unet", synth_root, Config(img_size=32, bs=4, epochs=1, runs_dir="runs", precision="fp32"),
          name="a", features="4,8")
    learn, _ = load_run("a", precision=precision)
    predictor, _ = load_predictor("a", precision=precision)
    assert predictor.precision == learner_precision(learn)
    images = sorted((synth_root / DATASET_DIR / "Test" / "COVID-19" / "images").iterdir())
    items = pd.DataFrame({"image": [str(p) for p in images]})
    pixels = _batch_pixels(items, _input_size(learn), with_labels=False)
    assert predictor.size == _input_size(learn)
    fastai_batch = validation_batch(learn, pixels)[0].as_subclass(torch.Tensor)
    assert torch.equal(predictor.inputs(pixels[0]), fastai_batch)
    through_learner = [out for _, out, _ in iter_batches(learn, items, bs=4)]
    through_predictor = [out for _, out in predictor.batches(items, bs=4)]
    for a, b in zip(through_learner, through_predictor, strict=True):
        assert a.names == b.names and all(torch.equal(x, y) for x, y in zip(a, b))
    script = ("import sys; from covfast.cli import app\n"
              f"app(['predict', 'a', {str(images[0])!r}, '--out', 'p'], prog_name='covfast', standalone_mode=False)\n"
              "print(sorted({m.split('.')[0] for m in sys.modules} & {'fastai', 'matplotlib', 'sklearn'}))\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("COVFAST_")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "[]" and (tmp_path / "p" / "predictions.csv").is_file()


def test_the_written_decision_is_the_one_that_emptied_the_mask():
    "predict's 'decision' column says what the mask shows: an old run's pixel gate can empty an image the head would keep."
    from covfast.decision import Decision
    from covfast.outputs import model_output
    from covfast.predict import outline
    infection = torch.zeros(1, 2, 4, 4)
    infection[0, 1, :2, :2] = 3.0  # 4 infected pixels, margin 3
    out = model_output(infection=infection, covid=torch.tensor([2.0]))  # p = sigmoid(2) = 0.881
    gray = np.zeros((4, 4), np.uint8)
    kept = outline(out, gray, Decision(threshold=0.5))
    assert kept.decided == "COVID-19 infection" and kept.mask.sum() == 4
    assert outline(out, gray, Decision(threshold=0.9)).decided == "no COVID-19 infection"
    gated = outline(out, gray, Decision(threshold=0.5, gate_topk=0.25, gate_margin=5.0))  # top 4 pixels: margin 3 < 5
    assert gated.mask.sum() == 0 and gated.decided == "no COVID-19 infection"
    # no head: the segmentation's own verdict
    assert outline(model_output(infection=infection), gray, Decision()).decided == "COVID-19 infection"
    assert outline(model_output(infection=-infection), gray, Decision()).decided == "no COVID-19 infection"
    # the head keeps it (0.881 > 0.5), no pixel beats the background: one named outcome, not "COVID-19 infection"
    flagged = outline(model_output(infection=-infection, covid=torch.tensor([2.0])), gray, Decision(threshold=0.5))
    assert flagged.mask.sum() == 0 and flagged.decided == "COVID-19 flagged, nothing outlined"
    assert flagged.caption.startswith("COVID-19 flagged, nothing outlined (p 0.88)")
