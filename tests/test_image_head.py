"""The image-level head: its output on every model family, its loss, and the one decision everywhere."""

import numpy as np
import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from typer.testing import CliRunner

from covfast.cli import app
from covfast.inference import load_run
from covfast.decision import Decision, image_probability
from covfast.learner import build_model
from covfast.losses import SegLoss
from covfast.outputs import model_output
from covfast.spec import RunSpec

runner = CliRunner()


pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write runs/ relative to the working directory


@pytest.mark.parametrize("arch", ["attention-unet", pytest.param("resnet18", marks=pytest.mark.slow),
                                  pytest.param("timm/resnet18", marks=pytest.mark.slow)])  # the three families
@pytest.mark.parametrize("size", [(32, 32), (64, 64), (64, 96)])
def test_every_model_family_returns_its_outputs_by_name(arch, size):
    "The infection logits, the image logit and the lung logits, each at its own shape; each output one flag away."
    features = (4, 8, 16) if arch == "attention-unet" else None
    model = build_model(RunSpec(arch, features=features, cls_weight=0.3, lung_weight=1.0), img_size=size).eval()
    with torch.no_grad():
        out = model(torch.randn(2, 3, *size))
    assert out.names == ("infection", "covid", "lung")
    assert out.infection.shape == (2, 2, *size) and out.lung.shape == (2, 2, *size)
    assert out.covid.shape == (2,) and out.covid.dtype == torch.float32
    without = build_model(RunSpec(arch, features=features, cls_weight=0, lung_weight=0), img_size=size).eval()
    plain = without(torch.randn(1, 3, *size))
    assert plain.names == ("infection",) and plain.infection.shape == (1, 2, *size) and plain.get("covid") is None


@pytest.mark.slow
def test_the_head_learns_from_the_dynamic_unets_deepest_features():
    "Its gradient reaches the encoder: the head sits on the encoder's output, not on the decoder's."
    model = build_model(RunSpec("resnet18", img_size=32))
    out = model(torch.randn(2, 3, 32, 32))
    out.covid.sum().backward()
    assert model.unet[0][0].weight.grad.abs().sum() > 0  # the encoder's stem
    assert model.image_head.fc.weight.grad.abs().sum() > 0


def test_loss_against_a_hand_computed_case():
    seg = torch.zeros(2, 2, 2, 2)
    seg[0, 1] = 2.0  # image 0: infection logit 2 everywhere
    pred = model_output(infection=seg, covid=torch.tensor([1.5, -0.5]))  # image logits
    targ = torch.tensor([[[1, 1], [0, 0]], [[0, 0], [0, 0]]])
    spec = RunSpec("attention-unet", dice_weight=0.0, cls_weight=2.0)
    loss = SegLoss(spec)(pred, targ)
    ce = F.cross_entropy(seg, targ)
    bce = F.binary_cross_entropy_with_logits(torch.tensor([1.5, -0.5]), torch.tensor([1.0, 0.0]))
    assert float(loss) == pytest.approx(float(ce + 2.0 * bce), rel=1e-5)
    # by hand: CE is log(1 + e^2) - 2 on image 0's infected pixels, log(1 + e^2) on its others, log 2 on image 1's
    by_hand = (2 * (np.log1p(np.e ** 2) - 2) + 2 * np.log1p(np.e ** 2) + 4 * np.log(2)) / 8
    assert float(ce) == pytest.approx(by_hand, rel=1e-5)
    assert float(bce) == pytest.approx((np.log1p(np.exp(-1.5)) + np.log1p(np.exp(-0.5))) / 2, rel=1e-5)
    # a model without the head: the same loss, no image term
    assert float(SegLoss(spec)(model_output(infection=seg), targ)) == pytest.approx(float(ce), rel=1e-5)


def test_the_decision_empties_masks_at_or_below_the_threshold():
    seg = torch.zeros(3, 2, 2, 2)
    seg[:, 1] = 1.0  # infection everywhere
    pred = model_output(infection=seg, covid=torch.tensor([-2.0, 0.0, 2.0]))  # probabilities 0.12, 0.5, 0.88
    masks = Decision(threshold=0.5).apply(pred)
    assert masks.flatten(1).all(1).tolist() == [False, False, True] and masks.flatten(1).any(1).tolist() == [False, False, True]
    assert image_probability(pred).tolist() == pytest.approx([0.1192, 0.5, 0.8808], abs=1e-4)
    assert Decision(threshold=0.1).apply(pred).flatten(1).all(1).tolist() == [True, True, True]
    assert Decision(threshold=0.5).apply(model_output(infection=seg)).all()  # without the head, the argmax alone
    # on get_preds' probabilities (softmax, sigmoid) the same masks
    probs = SegLoss(RunSpec("attention-unet")).activation(pred)
    assert torch.equal(Decision(threshold=0.5).apply(probs, activated=True), masks)


@pytest.mark.parametrize("threshold, outlined", [(0.9, False), (0.5, True)])
def test_get_preds_evaluate_and_predict_share_the_decision(synth_root, tmp_path, fake_run, threshold, outlined):
    "A model that paints infection everywhere, whose head says p = sigmoid(1) = 0.73 for every image."
    fake_run(tmp_path, synth_root, "h", infection=True, image_logit=1.0, threshold=threshold)
    learn, _ = load_run("h", with_data=True)
    preds, _, decoded = learn.get_preds(ds_idx=1, with_decoded=True)
    assert preds.names == ("infection", "covid") and torch.allclose(preds.covid, torch.sigmoid(torch.tensor(1.0)))
    assert bool(decoded.bool().all()) == outlined and bool(decoded.bool().any()) == outlined
    assert runner.invoke(app, ["evaluate", "h", "--split", "Test"]).exit_code == 0
    per_image = pd.read_csv(tmp_path / "runs" / "h" / "eval" / "Test" / "per_image.csv")
    assert (per_image.pred_empty != outlined).all() and per_image.p_covid.round(4).eq(0.7311).all()
    images = synth_root / "Infection Segmentation Data" / "Test" / "Non-COVID" / "images"
    assert runner.invoke(app, ["predict", "h", str(images), "--out", "p"]).exit_code == 0
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert ((table.infected_pixels > 0) == outlined).all()
    assert set(table.decision) == {"COVID-19 infection" if outlined else "no COVID-19 infection"}


def test_show_results_titles_each_prediction_with_its_probability_and_dice(synth_root, tmp_path, fake_run):
    import matplotlib.pyplot as plt
    # infection everywhere, but p = sigmoid(1) = 0.73 is below the threshold 0.9: every mask shown is empty
    fake_run(tmp_path, synth_root, "h", infection=True, image_logit=1.0, threshold=0.9)
    learn, _ = load_run("h", with_data=True)
    plt.close("all")
    shown = learn.show_results(max_n=4, shuffle=False)
    assert list(shown.columns) == ["truth", "p_covid", "decision", "dice"] and len(shown) == 4
    # the unshuffled Val batch opens with COVID-19 images, where an empty mask scores Dice 0
    assert set(shown.truth) == {"infection"} and (shown.dice == 0).all()
    assert shown.p_covid.round(4).eq(0.7311).all() and set(shown.decision) == {"no COVID-19 infection"}
    titles = [ax.get_title() for ax in plt.gcf().axes if ax.images]
    assert titles[1::2] == [f"p(COVID-19) 0.73: no COVID-19 infection\nDice {d:.2f}" for d in shown.dice]
    plt.close("all")


def test_a_run_from_before_the_head_still_evaluates_and_predicts(synth_root, tmp_path, fake_run):
    "Its config has no cls_weight: no head, its own pixel-evidence gate, and nothing image-level is claimed."
    fake_run(tmp_path, synth_root, "old", infection=True)
    result = runner.invoke(app, ["evaluate", "old", "--split", "Test"])
    assert result.exit_code == 0, result.output
    assert "ROC AUC" not in result.stdout
    summary = pd.read_csv(tmp_path / "runs" / "old" / "eval" / "Test" / "summary.csv")
    assert summary.auc.isna().all()
    images = synth_root / "Infection Segmentation Data" / "Test" / "COVID-19" / "images"
    assert runner.invoke(app, ["predict", "old", str(images), "--out", "p"]).exit_code == 0
    table = pd.read_csv(tmp_path / "p" / "predictions.csv")
    assert table.p_covid.isna().all() and (table.infected_pixels > 0).all()
