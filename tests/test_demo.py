"""covfast demo: the whole job end to end (at test sizes), the README's commands after it, and its refusal
to write into a used folder."""

import importlib.util
import os
import shlex
from pathlib import Path

import pytest
from typer.testing import CliRunner

from covfast.cli import app
from covfast.demo import demo

runner = CliRunner()

# .ci/newcomer runs the real `covfast demo`, checks both models learned, then runs the README's commands
# after it, and only then the test suite; there, the test below would repeat that work at a smaller size.
demo_checked_by_ci = pytest.mark.skipif(os.environ.get("COVFAST_DEMO_CHECKED") == "1",
                                        reason="the newcomer CI ran the full demo and the README's commands after it")

TINY = {"per_class": 3, "size": 32, "bs": 4, "epochs": {"attention-unet": 1, "resnet34": 1}}


def _readme_commands(which: str) -> list[str]:
    "The README's commands as .ci/newcomer reads them (the same parser, so CI and this test agree)."
    path = Path(__file__).resolve().parents[1] / ".ci" / "readme_commands.py"
    spec = importlib.util.spec_from_file_location("readme_commands", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.readme_commands(which)


def test_the_readme_has_the_two_setup_commands_and_commands_for_after_the_demo():
    setup = _readme_commands("setup")
    assert len(setup) == 2 and setup[0].startswith("pip install -e . && covfast demo")
    assert "pytest" in setup[1]
    after = _readme_commands("after-demo")
    assert {shlex.split(c)[1] for c in after} == {"evaluate", "report", "compare", "predict", "lr-find", "train"}


@pytest.mark.slow
@demo_checked_by_ci
def test_demo_writes_both_reports_and_the_comparison_and_the_readmes_commands_work_after_it(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the demo's default folder, runs/demo, as a newcomer gets it
    lines = []
    page = demo(say=lines.append, settings=TINY)
    assert page == Path("runs/demo/compare/index.html") and page.is_file()
    html = page.read_text()
    assert "attention-unet" in html and "resnet34" in html
    for arch in ("attention-unet", "resnet34"):
        run = Path("runs/demo/runs") / arch
        assert (run / "model.pth").is_file() and (run / "eval" / "Test" / "summary.csv").is_file()
        assert (run / "report" / "index.html").is_file() and not (run / "checkpoint.pth").exists()
    assert lines[-1].endswith(str(page)) and any(line.startswith("[5/5]") for line in lines)
    assert any("MB" in line for line in lines)  # it says how much it wrote
    for command in _readme_commands("after-demo"):  # as written, from the folder the demo ran in
        result = runner.invoke(app, shlex.split(command)[1:])
        assert result.exit_code == 0, (command, result.output)
    assert (Path("runs/demo-compare/index.html").is_file() and Path("runs/demo-predictions/predictions.csv").is_file())
    assert Path("runs/demo-lr-find/lr_find.png").is_file() and Path("runs/demo-more/model.pth").is_file()


def test_demo_refuses_a_used_folder(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "used")])
    assert result.exit_code == 2
    assert "not empty" in result.stderr and (tmp_path / "used" / "notes.txt").read_text() == "keep me"


# That the demo's short training learns: tests/test_notebooks.py (notebook 02 trains the demo's Attention U-Net).
