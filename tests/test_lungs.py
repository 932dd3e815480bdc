"""The lung output: lung masks read and checked like infection masks, severity from the model's own lungs on any
X-ray, one rule for an empty predicted lung, and runs from before the lung output still at work."""

import numpy as np
import pandas as pd
import pytest
import torch
from PIL import Image

from covfast.data import covid_dataloaders
from covfast.dataset import DATASET_DIR
from covfast.decision import Decision, predicted_lung
from covfast.metrics import NO_LUNGS, infection_pct, severity_band_name
from covfast.outputs import model_output
from tests.helpers import cli




pytestmark = pytest.mark.usefixtures("in_tmp")


def test_batches_carry_the_lung_masks_augmented_with_the_xray(synth_root):
    dls = covid_dataloaders(synth_root, img_size=32, bs=4, lungs=True, device="cpu")
    x, infection, lung = dls.train.one_batch()
    assert type(lung).__name__ == "LungMask" and lung.shape == infection.shape == (4, 32, 32)
    assert set(lung.unique().tolist()) <= {0, 1} and lung.sum() > 0  # 0/1 class indices, warped as masks (nearest)
    # every COVID-19 infection pixel of the synthetic tree lies in its lungs; the validation batch keeps that
    _, infection, lung = dls.valid.one_batch()
    assert not (infection.bool() & ~lung.bool()).any()


@pytest.mark.parametrize("damage", ["missing", "size", "values"])
def test_a_bad_lung_mask_stops_training_before_it_starts_naming_the_file(synth_copy, tmp_path, damage):
    folder = synth_copy / DATASET_DIR / "Val" / "Normal" / "lung masks"
    bad = sorted(folder.iterdir())[0]
    if damage == "missing":
        bad.unlink()
    elif damage == "size":
        Image.fromarray(np.zeros((40, 40), np.uint8)).save(bad)
    else:
        values = np.zeros((64, 64), np.uint8)
        values[3, 3] = 7
        Image.fromarray(values).save(bad)
    result = cli("train", "attention-unet", "--data", synth_copy, "--size", "32", "--bs", "4", "--epochs", "1", "--name", "t")
    assert result.exit_code == 2 and bad.name in result.stderr, result.output
    assert not (tmp_path / "runs" / "t").exists()


def test_severity_of_hand_made_masks_and_the_empty_lung_rule():
    lung = np.zeros((4, 4), bool)
    lung[:, :2] = True  # 8 lung pixels
    infection = np.zeros((4, 4), bool)
    infection[0, :3] = True  # 3 pixels, 2 inside the lungs
    assert infection_pct(infection, lung) == 25.0 and severity_band_name(25.0) == "25-50"
    assert severity_band_name(0.0) == "0" and severity_band_name(10.0) == "<25" and severity_band_name(80.0) == ">=75"
    # an empty lung mask has no infection % of lung: NaN, and the band says so
    assert np.isnan(infection_pct(infection, np.zeros((4, 4), bool))) and severity_band_name(float("nan")) == NO_LUNGS


def test_the_lungs_and_the_inside_lungs_decision_on_hand_made_logits():
    infection = torch.zeros(1, 2, 2, 2)
    infection[0, 1] = 1.0  # infection everywhere
    lung = torch.zeros(1, 2, 2, 2)
    lung[0, 1, :, 0] = 2.0  # lungs: the left column
    out = model_output(infection=infection, covid=torch.tensor([5.0]), lung=lung)
    assert predicted_lung(out).tolist() == [[[True, False], [True, False]]]
    assert Decision(inside_lungs=True).apply(out).tolist() == [[[True, False], [True, False]]]
    assert Decision(inside_lungs=False).apply(out).all()
    assert Decision(inside_lungs=True).apply(model_output(infection=infection)).all()  # no lung output: no effect


def test_predict_without_lung_masks_writes_the_models_lungs_and_severity(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "lungs", infection=True, image_logit=2.0, lungs="everywhere")
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    result = cli("predict", "lungs", images, "--out", "p")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert {"lung_pixels", "infection_pct_of_lung", "severity_band", "lung_source"} <= set(table.columns)
    # lungs everywhere, infection everywhere: 100% of the lungs, the top band, measured with the model's lungs
    assert (table.lung_pixels == 64 * 64).all() and (table.infection_pct_of_lung == 100).all()
    assert set(table.severity_band) == {">=75"} and set(table.lung_source) == {"predicted"}
    first = table.iloc[0]
    lung_png = np.asarray(Image.open(tmp_path / "p" / first.lung_mask))
    assert lung_png.shape == (64, 64) and set(np.unique(lung_png)) == {255}
    overlay = np.asarray(Image.open(tmp_path / "p" / first.overlay))
    edge = overlay[0, 10]  # the lungs' outline runs along the image border here: cyan, over the infection's red
    assert tuple(edge) == (0, 220, 220) and overlay[10, 10, 0] > overlay[10, 10, 1]


def test_an_empty_predicted_lung_leaves_severity_empty_and_inside_lungs_empties_the_outline(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "nolungs", infection=True, image_logit=2.0, lungs="nowhere", inside_lungs=True)
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    assert cli("predict", "nolungs", images, "--out", "p").exit_code == 0
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert (table.lung_pixels == 0).all() and table.infection_pct_of_lung.isna().all()
    assert set(table.severity_band) == {NO_LUNGS}
    assert (table.infected_pixels == 0).all()  # --inside-lungs keeps the infection inside the (empty) lungs
    # the same run with the infection anywhere: its outline stands, its severity still has no lungs to measure with
    fake_run(tmp_path, synth_root, "anywhere", infection=True, image_logit=2.0, lungs="nowhere", inside_lungs=False)
    assert cli("predict", "anywhere", images, "--out", "q").exit_code == 0
    table = pd.read_csv(tmp_path / "q" / "predictions.csv")
    assert (table.infected_pixels == 64 * 64).all() and set(table.severity_band) == {NO_LUNGS}


def test_given_lung_masks_override_the_models_own(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "lungs", infection=True, image_logit=2.0, lungs="everywhere", inside_lungs=False)
    images = synth_root / DATASET_DIR / "Test" / "COVID-19"
    result = cli("predict", "lungs", images / "images", "--out", "p", "--lung-masks", images / "lung masks")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    lungs = [np.asarray(Image.open(images / "lung masks" / f.split("/")[-1])) > 127 for f in table.file]
    assert set(table.lung_source) == {"given"} and table.lung_pixels.tolist() == [int(m.sum()) for m in lungs]


def test_evaluate_scores_the_lungs_and_severity_from_both_lungs(synth_root, tmp_path, fake_run):
    run = fake_run(tmp_path, synth_root, "lungs", infection=True, image_logit=2.0, lungs="everywhere", inside_lungs=False)
    result = cli("evaluate", "lungs", "--split", "Test")
    assert result.exit_code == 0, result.output
    assert "with the model's own" in result.stdout
    per_image = pd.read_csv(run / "eval" / "Test" / "per_image.csv")
    summary = pd.read_csv(run / "eval" / "Test" / "summary.csv").set_index("group")
    # lungs everywhere: lung Dice 2|L| / (N + |L|) per image against the true lung mask
    true_lungs = [np.asarray(Image.open(p.replace("/images/", "/lung masks/"))) > 127 for p in per_image.image]
    expected = [2 * m.sum() / (m.size + m.sum()) for m in true_lungs]
    assert per_image.lung_dice.tolist() == pytest.approx(expected)
    assert summary.loc["All", "lung_dice"] == pytest.approx(np.mean(expected))
    # infection everywhere inside lungs everywhere: 100% of the predicted lungs, against the truth's share
    assert (per_image.pred_pct_pred_lung == 100).all()
    assert summary.loc["All", "severity_mae_pred_lung"] == pytest.approx((100 - per_image.true_pct_lung).mean())
    assert {"severity_band_agreement_pred_lung", "lung_iou", "lung_dice_ci_low"} <= set(summary.columns)


def test_a_run_without_the_lung_output_says_so(synth_root, tmp_path, fake_run):
    fake_run(tmp_path, synth_root, "old", infection=True, image_logit=2.0)
    result = cli("evaluate", "old", "--split", "Test")
    assert result.exit_code == 0 and "has no lung output" in result.stdout
    images = synth_root / DATASET_DIR / "Test" / "COVID-19" / "images"
    result = cli("predict", "old", images, "--out", "p")
    assert result.exit_code == 0 and "has no lung output" in result.stdout and "--lung-masks" in result.stdout
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert table.infection_pct_of_lung.isna().all() and table.lung_source.isna().all()


def test_show_results_draws_lungs_and_infection_in_two_colours(synth_root, tmp_path, fake_run):
    import matplotlib.pyplot as plt

    from covfast.inference import load_run
    fake_run(tmp_path, synth_root, "lungs", infection=True, image_logit=2.0, lungs="everywhere", inside_lungs=False)
    learn, _ = load_run("lungs", with_data=True)
    plt.close("all")
    table = learn.show_results(max_n=2, shuffle=False)
    shown = [ax for ax in plt.gcf().axes if ax.images]
    assert len(shown) == 4 and [ax.get_title() for ax in shown[::2]] == ["truth", "truth"]
    for ax in shown:  # truth and prediction: the lungs' outline in cyan beside the infection's red
        rgb = np.asarray(ax.images[0].get_array())
        assert ((rgb == (0, 220, 220)).all(-1)).any() and (rgb[..., 0] > rgb[..., 1] + 50).any()
    assert list(table.columns) == ["truth", "p_covid", "decision", "dice"]
    plt.close("all")
