"""covfast demo: the whole job end to end (at test sizes), and its refusal to write into a used folder."""

from typer.testing import CliRunner

from covfast.cli import app
from covfast.demo import demo

runner = CliRunner()

TINY = {"per_class": 3, "size": 32, "bs": 4, "epochs": {"attention-unet": 1, "resnet34": 1}}


def test_demo_writes_both_reports_and_the_comparison(tmp_path):
    lines = []
    page = demo(tmp_path / "demo", say=lines.append, settings=TINY)
    assert page == tmp_path / "demo" / "compare" / "index.html" and page.is_file()
    html = page.read_text()
    assert "attention-unet" in html and "resnet34" in html
    for arch in ("attention-unet", "resnet34"):
        run = tmp_path / "demo" / "runs" / arch
        assert (run / "model.pth").is_file() and (run / "eval" / "Test" / "summary.csv").is_file()
        assert (run / "report" / "index.html").is_file()
    assert lines[-1].endswith(str(page)) and any(line.startswith("[5/5]") for line in lines)


def test_demo_refuses_a_used_folder(tmp_path):
    (tmp_path / "used").mkdir()
    (tmp_path / "used" / "notes.txt").write_text("keep me")
    result = runner.invoke(app, ["demo", "--out", str(tmp_path / "used")])
    assert result.exit_code == 2
    assert "not empty" in result.stderr and (tmp_path / "used" / "notes.txt").read_text() == "keep me"
