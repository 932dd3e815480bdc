import pytest
import torch

from covfast.errors import CovfastError
from covfast.learner import build_model
from covfast.models import AttentionUNet, check_arch
from covfast.models.attention_unet import AttentionGate
from covfast.spec import RunSpec


@pytest.mark.parametrize("shape", [(64, 64), (50, 70), (33, 96)])
def test_attention_unet_any_input_size(shape):
    model = AttentionUNet(3, 2, features=(4, 8, 16, 32)).eval()
    x = torch.randn(2, 3, *shape)
    out, maps = model.forward_with_attention(x)
    out = out.infection
    assert out.shape == (2, 2, *shape)
    # one map per gated skip, coarsest first, each in [0, 1] at its skip's (padded) spatial size
    padded = [((s + 7) // 8) * 8 for s in shape]
    assert [m.shape for m in maps] == [(2, 1, padded[0] // f, padded[1] // f) for f in (4, 2, 1)]
    for m in maps:
        assert m.min() >= 0 and m.max() <= 1
    assert torch.equal(model(x).infection, out)


def test_attention_gate_weighs_the_skip_by_sigmoid_of_the_joint_signal():
    "Hand-computed: 1x1 weights of 1, no bias, fresh BatchNorm (identity in eval): alpha = sigmoid(relu(g + x))."
    gate = AttentionGate(1, 1, 1).eval()
    with torch.no_grad():
        for conv in (gate.w_g[0], gate.w_x[0], gate.psi[0]):
            conv.weight.fill_(1.0)
        gate.psi[0].bias.zero_()
    g = torch.tensor([[[[-3.0, 0.0], [1.0, 2.0]]]])
    x = torch.tensor([[[[1.0, 1.0], [1.0, -1.0]]]])
    gated, alpha = gate(g, x)
    # relu(g + x) = [[0, 1], [2, 1]]: where signal and skip cancel out the skip passes at half
    expected = torch.tensor([[[[0.5, 0.7310586], [0.8807971, 0.7310586]]]])
    assert torch.allclose(alpha, expected, atol=1e-4)
    assert torch.allclose(gated, torch.tensor([[[[0.5, 0.7310586], [0.8807971, -0.7310586]]]]), atol=1e-4)


def test_bad_widths_raise():
    with pytest.raises(ValueError, match="features"):
        AttentionUNet(3, 2, features=(8,))


@pytest.mark.slow
@pytest.mark.parametrize("arch", ["resnet18", "timm/resnet18"])
def test_dynamic_unet_shapes(arch):
    model = build_model(RunSpec(arch, img_size=64, cls_weight=0)).eval()
    assert model(torch.randn(1, 3, 64, 64)).infection.shape == (1, 2, 64, 64)


def test_arch_names():
    assert check_arch("ResNet34") == "resnet34" and check_arch("attention-unet") == "attention-unet"
    assert check_arch("timm/efficientnet_b0") == "timm/efficientnet_b0"
    with pytest.raises(CovfastError, match="unknown architecture"):
        check_arch("vgg16")
    with pytest.raises(CovfastError, match="unknown timm model"):
        check_arch("timm/not_a_model")


def test_a_new_architecture_is_one_registry_entry(monkeypatch, synth_root):
    "An arch added to `archs.ARCHS` alone is known by name, listed in --help, takes the spec, and trains."
    from typer.testing import CliRunner

    from covfast import archs
    from covfast.cli import app
    from covfast.learner import learner_for_spec

    class Tiny(torch.nn.Module):  # an encoder-free model with the image head's output, built by its entry alone
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Linear(3, 1)

        def forward(self, x):
            from covfast.outputs import model_output
            return model_output(infection=self.conv(x), covid=self.fc(x.mean((2, 3)))[:, 0])

    entry = archs.Arch("tiny", "a one-layer test model", build=lambda spec, img_size, pretrained: Tiny())
    monkeypatch.setitem(archs.ARCHS, "tiny", entry)
    assert check_arch("TINY") == "tiny"
    assert "tiny: a one-layer test model" in archs.arch_help()
    with pytest.raises(CovfastError, match="takes its widths from its encoder"):
        RunSpec("tiny", features=(4, 8))
    spec = RunSpec("tiny", data_root=str(synth_root), img_size=32, bs=4, lung_weight=0, precision="fp32")
    learn, status = learner_for_spec(spec, device="cpu")
    assert isinstance(learn.model, Tiny) and not status.used and "no pretrained weights" in status.reason
    before = learn.model.conv.weight.detach().clone()
    learn.fit(1, 1e-2)
    assert not torch.equal(before, learn.model.conv.weight)
    # the training CLI refuses a typo without it, and takes it by name
    assert "unknown architecture" in CliRunner().invoke(app, ["train", "nosuch"]).stderr


def test_a_new_output_is_one_declaration(monkeypatch, synth_root, tmp_path):
    """An output declared in `outputs.OUTPUTS` with a per-X-ray figure, filled by a model, reaches predictions.csv,
    per_image.csv and summary.csv, the report, the page and the export's sidecar, with nothing else changed."""
    import json

    import pandas as pd
    from typer.testing import CliRunner

    from covfast import archs, outputs
    from covfast.cli import app
    from covfast.inference import load_run
    from covfast.serve import _said, analyse

    class Spread(torch.nn.Module):  # infection and image head from one layer; a "spread" map of logit 0 everywhere
        def __init__(self):
            super().__init__()
            self.conv, self.fc = torch.nn.Conv2d(3, 2, 3, padding=1), torch.nn.Linear(3, 1)

        def forward(self, x):
            return outputs.model_output(infection=self.conv(x), covid=self.fc(x.mean((2, 3)))[:, 0],
                                        spread=torch.zeros_like(x[:, :1]))

    mean = outputs.Figure("spread_mean", "mean spread", lambda p: p.mean())  # of sigmoid(0): 0.5 on every X-ray
    monkeypatch.setitem(outputs.OUTPUTS, "spread", outputs.OutputKind("spread", "sigmoid", "logits (batch, 1, H, W): "
                                                                       "the spread", (mean,)))
    monkeypatch.setitem(archs.ARCHS, "spread", archs.Arch("spread", "a test model", build=lambda *a: Spread()))
    monkeypatch.chdir(tmp_path)
    run = lambda *args: CliRunner().invoke(app, [str(a) for a in args])  # noqa: E731
    done = run("train", "spread", "--data", synth_root, "--size", "32", "--bs", "4", "--epochs", "1",
               "--lung-weight", "0", "--precision", "fp32", "--name", "s")
    assert done.exit_code == 0, done.output
    test = synth_root / "Infection Segmentation Data" / "Test"
    assert run("predict", "s", test / "COVID-19" / "images", "--out", "p").exit_code == 0
    assert pd.read_csv(tmp_path / "p" / "predictions.csv").spread_mean.eq(0.5).all()
    assert run("evaluate", "s", "--split", "Test").exit_code == 0
    assert pd.read_csv(tmp_path / "runs" / "s" / "eval" / "Test" / "per_image.csv").spread_mean.eq(0.5).all()
    assert pd.read_csv(tmp_path / "runs" / "s" / "eval" / "Test" / "summary.csv").spread_mean.eq(0.5).all()
    assert run("report", "s").exit_code == 0
    assert "<th title='mean spread, mean over the images'>mean spread</th>" in \
        (tmp_path / "runs" / "s" / "report" / "index.html").read_text()
    learn, loaded = load_run("s", precision="fp32")
    xray = next((test / "COVID-19" / "images").iterdir())
    assert "**mean spread**: 0.5" in _said(analyse(learn, loaded, xray), loaded)
    done = run("export", "s")
    assert done.exit_code == 0, done.output
    sidecar = json.loads((tmp_path / "runs" / "s" / "export" / "model.json").read_text())
    assert sidecar["outputs"]["spread"] == "logits (batch, 1, H, W): the spread"
