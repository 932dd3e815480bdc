"""A fastai Learner for an arch: model, loss, metrics, pretrained policy, device and precision."""

from __future__ import annotations

import sys
from dataclasses import dataclass

import pandas as pd
import torch
from fastai.data.core import DataLoaders
from fastai.learner import Learner
from fastai.optimizer import Adam
from fastai.torch_core import set_seed
from fastai.vision.core import imagenet_stats
from torch import nn

from .callbacks import QuietConsoleBars
from .data import covid_dataloaders, loader_settings
from .decision import Decision, image_probability, predicted_lung
from .errors import CovfastError
from .figures import plot_cases
from .losses import SegLoss
from .metrics import SegmentationStats, confusion_counts, dice_from_counts, has_infection, segmentation_metrics
from .archs import arch_entry, check_arch
from .device import pick_device  # noqa: F401  (covfast.learner's name too)
from .precision import resolve_precision, use_precision
from .spec import RunSpec

__all__ = ["Pretrained", "probe_pretrained", "build_model", "CovfastLearner", "covfast_learner", "spec_dataloaders",
           "learner_for_spec", "pick_device"]


@dataclass
class Pretrained:
    "Whether ImageNet weights are in use, and why not when they were asked for."
    used: bool
    reason: str = ""


def _warn(msg: str) -> None:
    print(f"covfast: warning: {msg}", file=sys.stderr)


def probe_pretrained(arch: str) -> Pretrained:
    "Fetch (or find cached) ImageNet weights for `arch` (its registry entry says how); offline, say why not in one line."
    arch = check_arch(arch)
    entry = arch_entry(arch)
    if entry.fetch_pretrained is None:
        return Pretrained(False, f"{arch} has no pretrained weights; trained from scratch")
    try:
        entry.fetch_pretrained(arch)
        return Pretrained(True)
    except Exception as e:  # offline, no cache, blocked hub: train from scratch rather than fail
        reason = f"ImageNet weights for {arch} could not be loaded ({e.__class__.__name__}: {str(e)[:120]}); trained from scratch"
        return Pretrained(False, reason)


def build_model(
    spec: RunSpec,  # arch, features (attention-unet), cls_weight (> 0: the image head), lung_weight (> 0: the lung output)
    img_size: tuple[int, int] | None = None,  # what DynamicUnet sizes its decoder with (default: the spec's square)
    pretrained: bool = False,  # ImageNet encoder weights (downloaded, or found cached)
) -> nn.Module:
    """The model of a run spec, returning named outputs (`outputs.ModelOutput`), built by its entry in the
    architecture registry (`archs.ARCHS`): the one factory behind the learner, the benchmark and the tests."""
    return arch_entry(spec.arch).build(spec, img_size, pretrained)


class CovfastLearner(Learner):
    """A fastai Learner that holds its run's settings (`spec`) and decision (`decision`): `get_preds(with_decoded=True)`
    decodes with that decision, and `show_results` titles each prediction with the image head's probability, the
    verdict and its Dice."""

    def __init__(self, dls: DataLoaders, model: nn.Module, spec: RunSpec, decision: Decision | None = None, **kwargs):
        super().__init__(dls, model, **kwargs)
        self.spec = spec
        self.decision = decision or Decision(gate_topk=spec.gate_topk)

    def get_preds(self, ds_idx: int = 1, dl=None, with_input: bool = False, with_decoded: bool = False, act=None,
                  **kwargs) -> tuple:
        """fastai's `get_preds`; the decoded predictions (`with_decoded=True`) are the infection masks of the run's
        decision, (B, H, W) 0/1, made from the activated outputs (from the raw ones when `act` is given)."""
        res = list(super().get_preds(ds_idx, dl, with_input=with_input, act=act, **kwargs))
        if with_decoded:  # where fastai puts the loss function's decodes: after the predictions and the targets
            i = 1 if with_input else 0
            res.insert(i + 2, self.decision.apply(res[i], activated=act is None).long())
        return tuple(res)

    def show_results(self, ds_idx: int = 1, dl=None, max_n: int = 9, shuffle: bool = True,
                     figsize: tuple[float, float] | None = None) -> pd.DataFrame:
        """One batch, truth | prediction per image (infection in red, lungs outlined in cyan where the model and the
        data have them), each prediction titled with p(COVID-19), the decision and the image's Dice
        (docs/metrics.md: 1 when both masks are empty). Returns the same, one row per image shown."""
        if dl is None:
            dl = self.dls[ds_idx].new(shuffle=shuffle)
        b = dl.one_batch()
        preds, _, decoded = self.get_preds(dl=[b], with_decoded=True)
        n = min(max_n, len(decoded))
        truth = b[1][:n].cpu() > 0
        dice = dice_from_counts(*confusion_counts(decoded[:n] > 0, truth).T).tolist()
        probs = image_probability(preds, activated=True)
        table = pd.DataFrame({"truth": ["infection" if t else "empty" for t in has_infection(truth)], "dice": dice})
        if probs is not None:
            table.insert(1, "p_covid", probs[:n].tolist())
            # the verdict in the words every covfast file uses (`decision.OUTCOMES`), of the masks drawn below
            table.insert(2, "decision", self.decision.outcomes(preds, decoded > 0, activated=True)[:n])
        # the X-rays as they went in: undo the ImageNet normalisation of the first channel (the three are equal)
        mean, std = imagenet_stats[0][0], imagenet_stats[1][0]
        grays = ((b[0][:n, 0].float().cpu() * std + mean).clamp(0, 1) * 255).round().byte().numpy()
        true_lungs = b[2][:n].cpu().numpy() > 0 if len(b) > 2 else [None] * n
        lungs = predicted_lung(preds, activated=True)
        lungs = lungs[:n].cpu().numpy() if lungs is not None else [None] * n
        cases = [{"title": "", "gray": g, "truth": t.numpy(), "truth_lung": tl, "truth_title": "truth",
                  "preds": [((f"p(COVID-19) {row.p_covid:.2f}: {row.decision}\n" if probs is not None else "")
                             + f"Dice {row.dice:.2f}", d.cpu().numpy() > 0, pl)]}
                 for g, t, tl, d, pl, row in zip(grays, truth, true_lungs, decoded[:n], lungs, table.itertuples())]
        plot_cases(cases, xray=False, figsize=figsize or (6, 3 * n))
        return table


def covfast_learner(
    dls: DataLoaders,
    spec: RunSpec,  # the run's settings: arch, loss weights, precision, pretrained ...
    decision: Decision | None = None,  # the run's decision (default: threshold 0.5; `Decision.load` reads a calibrated one)
    pretrained: bool | None = None,  # override spec.pretrained: False where the weights come from a run's files
    warn: bool = True,  # print the one-line warning when pretrained weights cannot be had
    check_data: bool = True,  # refuse DataLoaders whose targets do not fit the spec's outputs (inference's carry none)
    model: nn.Module | None = None,  # a model built elsewhere (an ensemble's, of its members' weights) instead of build_model's
) -> tuple[Learner, Pretrained]:
    """A Learner with covfast's model, loss and metrics for `spec`, in its precision on the data's device (bf16
    autocast where the CPU runs it natively: about twice as fast); a pretrained encoder comes frozen (unfreeze
    before the main phase). DataLoaders without lung masks for a spec with the lung output (or the reverse) are
    refused: its lung head would get no gradient. `spec_dataloaders(spec)` builds the ones that fit."""
    if check_data:
        _check_targets(dls, spec)
    want = spec.pretrained if pretrained is None else pretrained
    entry = None if model is not None else arch_entry(spec.arch)
    if entry is None:
        status = Pretrained(False, "a model of trained weights")
    elif entry.fetch_pretrained is None:
        status = Pretrained(False, f"{spec.arch} has no pretrained weights; trained from scratch")
    elif want:
        status = probe_pretrained(spec.arch)
        if not status.used and warn:
            _warn(status.reason)
    else:
        status = Pretrained(False, "--no-pretrained")
    stats = SegmentationStats()
    common = dict(loss_func=SegLoss(spec), opt_func=Adam, cbs=[stats, QuietConsoleBars()],
                  metrics=segmentation_metrics(stats, spec.image_head, spec.lungs))
    if entry is not None:
        # DynamicUnet sizes its decoder on a batch, as fastai's unet_learner does
        size = tuple(dls.one_batch()[0].shape[-2:]) if entry.sized_on_batch else None
        model = build_model(spec, img_size=size, pretrained=status.used)
    if entry is not None and entry.splitter is not None:
        common["splitter"] = entry.splitter(spec.arch)
    learn = CovfastLearner(dls, model, spec, decision, **common)
    if status.used:
        learn.freeze()  # a pretrained encoder comes frozen, as unet_learner leaves it
    use_precision(learn, resolve_precision(spec.precision, dls.device))
    return learn, status


def _check_targets(dls: DataLoaders, spec: RunSpec) -> None:
    "One line when the DataLoaders' targets do not fit the spec's outputs (the lung masks, for the lung output)."
    targets = len(dls.train_ds.tls) - dls.n_inp if hasattr(dls.train_ds, "tls") else None
    if targets is None:
        return
    fix = "build them with spec_dataloaders(spec), or covid_dataloaders(..., lungs={})"
    if spec.lungs and targets < 2:
        raise CovfastError(f"the DataLoaders carry no lung masks, but the spec has a lung output (lung_weight "
                           f"{spec.lung_weight:g}): its lung head would learn nothing; {fix.format(True)}, or give the "
                           f"spec lung_weight=0")
    if not spec.lungs and targets >= 2:
        raise CovfastError(f"the DataLoaders carry lung masks, but the spec has no lung output (lung_weight 0): "
                           f"{fix.format(False)}, or give the spec a lung_weight")


def spec_dataloaders(spec: RunSpec, device: str | torch.device | None = None, num_workers: int = 0,
                     **kwargs) -> DataLoaders:
    """The Train/Val DataLoaders of a spec (its data root, classes, size, batch size, augmentation, and lung masks
    when it has the lung output) on `device` (default: the GPU when there is one), with `loader_settings`."""
    device = pick_device(device)
    settings = {**loader_settings(device, num_workers), **kwargs}
    return covid_dataloaders(spec.data_root, spec.img_size, spec.bs, spec.classes, augment=spec.augment,
                             lungs=spec.lungs, device=device, **settings)


def learner_for_spec(spec: RunSpec, device: str | torch.device | None = None, num_workers: int = 0,
                     decision: Decision | None = None, pretrained: bool | None = None, warn: bool = True,
                     model: nn.Module | None = None, **dl_kwargs) -> tuple[Learner, Pretrained]:
    """The training learner of a spec: its Train/Val data, seeded (train, resume, lr-find, the benchmark all
    build theirs here, so they build the same model). A learner without training data, for scoring and
    prediction, is `inference.inference_learner`."""
    device = device if isinstance(device, torch.device) else pick_device(device)
    # cuDNN's deterministic kernels cost GPU speed; on CPU a seed reproduces the run exactly
    set_seed(spec.seed, reproducible=device.type != "cuda")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    dls = spec_dataloaders(spec, device, num_workers, **dl_kwargs)
    return covfast_learner(dls, spec, decision, pretrained, warn, model=model)
