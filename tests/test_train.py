"""Training end to end on a tiny synthetic tree: run directory, pretrained fallback, resume, safe loading."""

import urllib.error

import pandas as pd
import pytest
import torch
from fastai.callback.core import Callback

from covfast.config import Config
from covfast.errors import CovfastError
from covfast.runs import HISTORY_COLUMNS, load_weights, read_json
from covfast.learner import learner_for_spec
from covfast.spec import RunSpec
from tests.helpers import cli, train

RUN_FILES = {"config.json", "history.csv", "model.pth"}


def tiny(tmp_path, **kw):
    return Config(img_size=32, bs=4, epochs=kw.pop("epochs", 1), lr="3e-3", runs_dir=str(tmp_path / "runs"), **kw)


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["attention-unet", "resnet34"])
def test_cli_training_writes_every_run_file(synth_root, tmp_path, arch):
    result = cli("train", arch, "--data", synth_root, "--size", 32, "--bs", 4, "--epochs", 2, "--lr", "3e-3",
                 "--no-pretrained", "--name", "r")
    assert result.exit_code == 0, result.output
    run = tmp_path / "runs" / "r"  # runs_dir is relative to the working directory
    assert RUN_FILES <= {p.name for p in run.iterdir()}
    # a complete run drops its optimizer state (it cannot be resumed; --keep-checkpoint keeps it)
    assert not (run / "checkpoint.pth").exists()
    history = pd.read_csv(run / "history.csv")
    assert list(history.columns) == HISTORY_COLUMNS and history.epoch.tolist() == [1, 2]
    assert history[["valid_dice_covid", "valid_dice_noncovid", "valid_dice_mean"]].apply(lambda c: c.between(0, 1)).all().all()
    cfg = read_json(run / "config.json")
    assert cfg["arch"] == arch and cfg["pretrained"] is False and cfg["status"] == "complete"
    # all three classes by default, and the image head (cls_weight 0.3)
    assert cfg["counts"]["Train"] == {"COVID-19": 6, "Non-COVID": 6, "Normal": 6} and cfg["versions"]["fastai"]
    assert cfg["classes"] == ["COVID-19", "Non-COVID", "Normal"] and cfg["cls_weight"] == 0.3
    assert history[["valid_dice_normal", "valid_auc"]].notna().all().all()
    weights = load_weights(run / "model.pth")
    assert all(isinstance(v, torch.Tensor) for v in weights.values())
    # a second run of the same name is refused, and nothing in the first is touched
    before = (run / "history.csv").read_bytes()
    again = cli("train", arch, "--data", synth_root, "--size", 32, "--epochs", 1, "--no-pretrained", "--name", "r")
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert (run / "history.csv").read_bytes() == before


pytestmark = pytest.mark.usefixtures("in_tmp")  # commands write runs/ relative to the working directory


@pytest.mark.slow
def test_offline_pretrained_warns_once_and_trains_from_scratch(synth_root, tmp_path, monkeypatch, capsys):
    from torchvision.models._api import WeightsEnum

    def offline(*args, **kwargs):
        raise urllib.error.URLError("Name or service not known")
    # torchvision binds load_state_dict_from_url at import, so patch the method that calls it: no network
    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    run = train("resnet18", synth_root, tiny(tmp_path), name="offline", pretrained=True)
    warnings = [line for line in capsys.readouterr().err.splitlines() if "warning" in line]
    assert len(warnings) == 1 and "trained from scratch" in warnings[0]
    cfg = read_json(run / "config.json")
    assert cfg["pretrained"] is False and cfg["pretrained_requested"] is True
    assert "URLError" in cfg["pretrained_reason"] and cfg["freeze_epochs"] == 0


@pytest.mark.slow
def test_pretrained_encoder_is_frozen_for_one_epoch_then_trained(synth_root, tmp_path, monkeypatch):
    import torchvision
    from torchvision.models._api import WeightsEnum
    fake = torchvision.models.resnet18().state_dict()  # stands in for ImageNet weights: no download in tests
    monkeypatch.setattr(WeightsEnum, "get_state_dict", lambda self, *a, **k: fake)

    class EncoderWatch(Callback):
        order = 70
        def before_fit(self):
            self.snap = self.model.unet[0][0].weight.detach().clone()  # the encoder's stem
            self.head = self.model.image_head.fc.weight.detach().clone()
        def after_epoch(self):
            watched.append((not torch.equal(self.snap, self.model.unet[0][0].weight),
                            not torch.equal(self.head, self.model.image_head.fc.weight)))
    watched = []
    run = train("resnet18", synth_root, tiny(tmp_path, epochs=2), name="ft", pretrained=True, cbs=[EncoderWatch()])
    cfg = read_json(run / "config.json")
    assert cfg["pretrained"] is True and cfg["freeze_epochs"] == 1
    # epoch 1 trains the decoder and the image head only; epoch 2 the encoder too
    assert watched == [(False, True), (True, True)]


class InterruptAfter(Callback):
    "Simulates Ctrl-C once `n` epochs have completed."
    order = 90
    def __init__(self, n): self.n = n
    def after_epoch(self):
        if self.epoch + 1 == self.n:
            raise KeyboardInterrupt


@pytest.mark.slow
def test_resume_continues_the_schedule(synth_root, tmp_path):
    config = tiny(tmp_path, epochs=3)
    full = train("attention-unet", synth_root, config, name="full")
    with pytest.raises(KeyboardInterrupt):
        train("attention-unet", synth_root, config, name="cut", cbs=[InterruptAfter(1)])
    cut = full.parent / "cut"
    assert len(pd.read_csv(cut / "history.csv")) == 1 and read_json(cut / "config.json")["status"] == "interrupted"
    result = cli("train", "attention-unet", "--resume", "cut")
    assert result.exit_code == 0, result.output
    a, b = pd.read_csv(full / "history.csv"), pd.read_csv(cut / "history.csv")
    assert b.epoch.tolist() == [1, 2, 3]
    assert b.lr.tolist() == pytest.approx(a.lr.tolist(), rel=1e-6)
    # the checkpoint restores the random states and the running loss: the resumed run is the uninterrupted one
    assert b.train_loss.tolist() == a.train_loss.tolist() and b.valid_loss.tolist() == a.valid_loss.tolist()
    assert read_json(cut / "config.json")["status"] == "complete"
    again = cli("train", "attention-unet", "--resume", "cut")
    assert again.exit_code == 2 and "already completed" in again.stderr
    wrong = cli("train", "resnet34", "--resume", "cut")
    assert wrong.exit_code == 2 and "attention-unet" in wrong.stderr


class Payload:
    "Unpickling this would run code."
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.mark.slow
def test_weights_with_pickle_payload_are_refused(synth_root, tmp_path):
    bad = tmp_path / "evil.pth"
    torch.save({"model": Payload()}, bad)
    with pytest.raises(CovfastError, match="refusing .*evil.pth"):
        load_weights(bad)
    # a tampered checkpoint stops --resume with one line and exit 2
    with pytest.raises(KeyboardInterrupt):
        train("attention-unet", synth_root, tiny(tmp_path, epochs=2), name="t", cbs=[InterruptAfter(1)])
    torch.save({"model": Payload(), "opt": {}, "epoch": 1}, tmp_path / "runs" / "t" / "checkpoint.pth")
    result = cli("train", "attention-unet", "--resume", "t")
    assert result.exit_code == 2 and "refusing" in result.stderr and "pwned" not in result.output


@pytest.mark.slow
def test_lr_find_prints_four_suggestions_and_a_plot(synth_root, tmp_path):
    result = cli("lr-find", "resnet18", "--data", synth_root, "--size", 32, "--bs", 4, "--no-pretrained",
                 "--num-it", 40, "--out", tmp_path / "lrf")
    assert result.exit_code == 0, result.output
    lines = [line.strip() for line in result.stdout.splitlines()]
    for key in ("valley", "slide", "minimum", "steep"):  # each on a line of its own, not after a progress bar
        assert any(line.startswith(f"{key}:") for line in lines), result.stdout
    png = tmp_path / "lrf" / "lr_find.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_bad_lr_is_one_line(synth_root):
    result = cli("train", "attention-unet", "--data", synth_root, "--lr", "fast")
    assert result.exit_code == 2 and "fast" in result.stderr and len(result.stderr.strip().splitlines()) == 1


@pytest.mark.slow
def test_lr_auto_runs_lr_find_into_the_run(synth_root, tmp_path):
    run = train("attention-unet", synth_root, tiny(tmp_path).replace(lr="auto"), name="auto")
    cfg = read_json(run / "config.json")
    assert (run / "lr_find.png").is_file() and cfg["lr"] == "auto" and cfg["lr_used"] > 0
    assert not (run / "models").exists()  # lr_find's scratch save stays out of the run directory


@pytest.mark.slow
def test_features_option_sets_the_attention_unet_widths(synth_root, tmp_path):
    result = cli("train", "attention-unet", "--data", synth_root, "--size", 32, "--bs", 4, "--epochs", 1,
                 "--features", "4,8,16", "--name", "narrow")
    assert result.exit_code == 0, result.output
    assert read_json(tmp_path / "runs" / "narrow" / "config.json")["features"] == [4, 8, 16]
    weights = load_weights(tmp_path / "runs" / "narrow" / "model.pth")
    assert max(v.shape[0] for k, v in weights.items() if k.endswith("weight") and v.ndim == 4) == 16
    bad = cli("train", "attention-unet", "--data", synth_root, "--features", "4,x")
    assert bad.exit_code == 2 and "two or more positive integers" in bad.stderr
    wrong = cli("train", "resnet34", "--data", synth_root, "--features", "4,8")
    assert wrong.exit_code == 2 and "attention-unet" in wrong.stderr


@pytest.mark.slow
def test_no_augment_trains_on_plain_batches_and_is_recorded(synth_root, tmp_path):
    result = cli("train", "attention-unet", "--data", synth_root, "--size", 32, "--bs", 4, "--epochs", 1,
                 "--features", "4,8", "--no-augment", "--name", "plain")
    assert result.exit_code == 0, result.output
    cfg = read_json(tmp_path / "runs" / "plain" / "config.json")
    assert cfg["augment"] is False
    # the learner rebuilt from config.json (as --resume does) has no augmentation in its training batches
    spec = RunSpec.from_json(cfg)
    learn, _ = learner_for_spec(spec, pretrained=False, warn=False)
    names = [type(t).__name__ for t in learn.dls.train.after_batch.fs]
    assert "Affine" not in " ".join(names) and "Brightness" not in names and "Normalize" in names
    augmented, _ = learner_for_spec(spec.replace(augment=True), pretrained=False, warn=False)
    assert len(augmented.dls.train.after_batch.fs) > len(learn.dls.train.after_batch.fs)
