import numpy as np
import pytest
import torch

from covfast.losses import SegLoss
from covfast.decision import Decision
from covfast.metrics import confusion_counts, dice_from_counts, iou_from_counts, pooled_dice
from covfast.outputs import model_output
from covfast.spec import RunSpec


def masks(*pixel_sets, size=4):
    out = torch.zeros(len(pixel_sets), size, size, dtype=torch.bool)
    for i, pixels in enumerate(pixel_sets):
        for r, c in pixels:
            out[i, r, c] = True
    return out


def test_hand_computed_cases():
    pred = masks([], [(0, 0)], [(0, 0), (0, 1), (1, 0), (1, 1)])
    truth = masks([], [(3, 3)], [(0, 0), (0, 1), (2, 2), (2, 3)])
    counts = confusion_counts(pred, truth)
    assert counts.tolist() == [[0, 0, 0], [0, 1, 1], [2, 2, 2]]
    tp, fp, fn = counts.T
    # empty + empty = 1; disjoint = 0; 2 of 4 vs 4: dice 2*2/(4+4), iou 2/6
    assert dice_from_counts(tp, fp, fn).tolist() == pytest.approx([1.0, 0.0, 0.5])
    assert iou_from_counts(tp, fp, fn).tolist() == pytest.approx([1.0, 0.0, 1 / 3])


def test_pooled_differs_from_per_image_mean():
    # image A predicted perfectly (100 px); image B has an empty truth and one false-positive pixel
    tp, fp, fn = np.array([100, 0]), np.array([0, 1]), np.array([0, 0])
    per_image = dice_from_counts(tp, fp, fn)
    assert per_image.tolist() == [1.0, 0.0] and per_image.mean() == 0.5
    assert pooled_dice(tp, fp, fn) == pytest.approx(200 / 201)
    assert pooled_dice([0], [0], [0]) == 1.0


def test_gate_empties_images_without_enough_evidence():
    logits = torch.zeros(3, 2, 16, 16)  # 256 pixels: topk 0.02 looks at the top 5
    logits[:, 1] = -5.0
    logits[0, 1, 0, 0] = 10.0  # one confident pixel: top-5 mean margin (10 - 20) / 5 < 0 -> emptied
    logits[1, 1, :4, :4] = 3.0  # a 16-pixel blob: top-5 mean 3 > 0 -> kept
    out = model_output(infection=logits)
    masks = Decision(gate_topk=0.02).apply(out)
    assert masks[0].sum() == 0 and masks[1].sum() == 16 and masks[2].sum() == 0
    assert torch.equal(masks[1], logits[1].argmax(0) == 1)
    assert torch.equal(Decision().apply(out), logits.argmax(1) == 1)  # no gate: the argmax alone


def test_predicted_infection_is_the_two_channel_argmax_with_ties_to_background():
    from covfast.decision import predicted_infection
    logits = torch.randn(3, 2, 5, 7)
    logits[0, :, 0, 0] = 0.5  # a tie
    assert torch.equal(predicted_infection(logits), logits.argmax(1) == 1)
    assert not predicted_infection(logits)[0, 0, 0]
    assert torch.equal(predicted_infection(logits[1], dim=0), logits[1].argmax(0) == 1)


def test_loss_weights_its_dice_term_against_cross_entropy():
    # one 2x2 image, infection in the top-left pixel; logits 0 give probability 1/2 everywhere
    truth = torch.tensor([[[1, 0], [0, 0]]])
    logits = torch.zeros(1, 2, 2, 2)
    ce = np.log(2)
    # Dice per class, 2*inter/(sum p + sum truth): background 2*1.5/(2+3) = 0.6, infection 2*0.5/(2+1) = 1/3
    dice_loss = ((1 - 0.6) + (1 - 1 / 3)) / 2
    for w in (0.0, 1.0, 3.0):
        assert float(SegLoss(RunSpec("attention-unet", dice_weight=w))(logits, truth)) == pytest.approx(ce + w * dice_loss, abs=1e-5)


def test_pooled_iou_sums_counts_over_images():
    from covfast.metrics import pooled_iou
    # image 1: TP 3, FP 1, FN 0; image 2: TP 1, FP 0, FN 3 -> 4 / (4 + 1 + 3)
    assert pooled_iou([3, 1], [1, 0], [0, 3]) == pytest.approx(0.5)
    assert pooled_iou([0], [0], [0]) == 1.0  # nothing predicted, nothing true


def test_severity_is_undefined_for_an_empty_lung_mask_everywhere():
    "One rule: infection % of lung is NaN without lung pixels, in evaluate's summary and in predict alike."
    import numpy as np
    import pandas as pd

    from covfast.evaluate import summarize
    from covfast.metrics import infection_pct, severity_band

    mask = np.zeros((4, 4), bool)
    mask[0, :2] = True
    lung = np.zeros((4, 4), bool)
    lung[0] = True
    assert infection_pct(mask, lung) == 50.0
    assert np.isnan(infection_pct(mask, np.zeros((4, 4), bool)))
    rows = pd.DataFrame({"class": ["COVID-19"] * 3, "dice": [1.0, 0.5, 0.0], "iou": [1.0, 0.4, 0.0],
                         "tp": [4, 2, 0], "fp": [0, 2, 1], "fn": [0, 2, 4], "pred_empty": [False] * 3,
                         "true_pct_lung": [30.0, 10.0, float("nan")], "pred_pct_lung": [40.0, 30.0, float("nan")]})
    by = summarize(rows, n_boot=10).set_index("group")
    # the third image has no lung: severity over the other two; Dice and IoU over all three
    assert by.loc["COVID-19", "severity_mae"] == pytest.approx(15.0)
    assert by.loc["COVID-19", "severity_band_agreement"] == 0.5  # 30 and 40 share 25-50; 10 and 30 do not
    assert by.loc["COVID-19", "dice"] == pytest.approx(0.5) and by.loc["COVID-19", "n"] == 3
    assert severity_band([30.0, 40.0]).tolist() == [2, 2]


def test_roc_auc_hand_cases():
    from covfast.metrics import roc_auc
    # positives 0.35, 0.8 against negatives 0.1, 0.4: of 4 pairs, 3 ranked right
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == 0.75
    assert roc_auc([0.2, 0.2, 0.9], [0, 1, 1]) == 0.75  # a tie counts half
    assert roc_auc([1, 1, 1, 1], [0, 1, 0, 1]) == 0.5
    assert np.isnan(roc_auc([0.1, 0.2], [1, 1]))  # one kind only


def test_roc_auc_is_the_share_of_rightly_ranked_pairs_with_many_ties():
    "Against the definition itself: over every (COVID-19, other) pair, 1 when ranked right, 1/2 when tied."
    from covfast.metrics import roc_auc
    rng = np.random.default_rng(0)
    for _ in range(50):
        scores, positive = rng.integers(0, 4, 20).astype(float), rng.random(20) < 0.4
        if positive.all() or not positive.any():
            continue
        pairs = [(a > b) + 0.5 * (a == b) for a in scores[positive] for b in scores[~positive]]
        assert roc_auc(scores, positive) == pytest.approx(np.mean(pairs))


def test_image_level_sensitivity_and_specificity_by_hand():
    from covfast.metrics import infected, sensitivity, specificity
    import pandas as pd
    # 3 infected images (one left empty), 2 empty-truth images (one outlined)
    table = pd.DataFrame({"tp": [5, 0, 3, 0, 0], "fn": [1, 4, 0, 0, 0], "fp": [0, 0, 1, 0, 7]})
    truth = infected(table)
    empty = (table.tp + table.fp == 0).to_numpy()
    assert truth.tolist() == [True, True, True, False, False]
    assert sensitivity(empty, truth) == pytest.approx(2 / 3) and specificity(empty, truth) == 0.5
    assert np.isnan(sensitivity(empty[3:], truth[3:])) and np.isnan(specificity(empty[:3], truth[:3]))


def test_severity_error_and_band_agreement_by_hand():
    from covfast.metrics import band_agreement, severity_mae
    pred, true = [0.0, 30.0, 60.0, float("nan"), 80.0], [0.0, 20.0, 80.0, 10.0, float("nan")]
    # the pairs with both defined: (0, 0), (30, 20), (60, 80): errors 0, 10, 20; bands 0=0, 25-50 vs <25, 50-75 vs >=75
    assert severity_mae(pred, true) == pytest.approx(10.0)
    assert band_agreement(pred, true) == pytest.approx(1 / 3)
    assert np.isnan(severity_mae([float("nan")], [1.0])) and np.isnan(band_agreement([], []))


def test_bootstrap_auc_is_scikit_learns_auc_with_an_interval_around_it():
    from sklearn.metrics import roc_auc_score

    from covfast.metrics import _auc_of_samples, bootstrap_auc, bootstrap_ci
    rng = np.random.default_rng(1)
    for _ in range(20):
        scores = rng.integers(0, 6, 40).astype(float)  # many ties
        positive = rng.random(40) < 0.5
        expected = roc_auc_score(positive, scores)
        # the statistic the bootstrap resamples is the same AUC (Mann-Whitney U), ties counted half
        assert _auc_of_samples(scores[positive], scores[~positive]) == pytest.approx(expected)
        auc, lo, hi = bootstrap_auc(scores, positive, n_boot=200)
        assert auc == pytest.approx(expected) and lo <= auc <= hi
    values = rng.random(50)
    lo, hi = bootstrap_ci(values)
    assert lo < values.mean() < hi and hi - lo < 0.3
    assert bootstrap_ci(np.array([0.4])) == (0.4, 0.4) and np.isnan(bootstrap_ci(np.array([]))[0])


def test_the_decision_upsamples_to_a_masks_own_size():
    logits = torch.zeros(1, 2, 2, 2)
    logits[0, 1, 0, 0] = 4.0  # infection in the top-left pixel only
    out = model_output(infection=logits, covid=torch.tensor([3.0]))
    mask = Decision(threshold=0.5).mask(out, (4, 4))
    assert mask.shape == (4, 4) and mask[0, 0] and not mask[3, 3] and mask.dtype == bool
    assert not Decision(threshold=0.99).mask(out, (4, 4)).any()  # sigmoid(3) = 0.95 is at or below 0.99


def test_severity_correlation_by_hand():
    from covfast.metrics import severity_correlation
    # pred = 2 * true + 1 exactly: r = 1; reversed: r = -1; undefined (NaN) images left out, a constant side gives NaN
    assert severity_correlation([1, 3, 5, float("nan")], [0, 1, 2, 7]) == pytest.approx(1.0)
    assert severity_correlation([5, 3, 1], [0, 1, 2]) == pytest.approx(-1.0)
    # by hand: x = (0, 10, 20), y = (0, 20, 10): cov = 50, var x = var y = 66.67 -> r = 0.5
    assert severity_correlation([0, 20, 10], [0, 10, 20]) == pytest.approx(0.5)
    assert np.isnan(severity_correlation([0, 0, 0], [1, 2, 3])) and np.isnan(severity_correlation([1], [1]))
