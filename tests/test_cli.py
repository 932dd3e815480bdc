import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from covfast import __version__
from covfast.cli import app

REPO = Path(__file__).resolve().parents[1]
runner = CliRunner()


def test_python_cli_py_matches_console_script():
    a = subprocess.run([sys.executable, str(REPO / "cli.py"), "--help"], capture_output=True, text=True, cwd=REPO)
    b = subprocess.run(["covfast", "--help"], capture_output=True, text=True, cwd=REPO)
    c = subprocess.run([sys.executable, "-m", "covfast", "--help"], capture_output=True, text=True, cwd=REPO)
    assert a.returncode == 0 and b.returncode == 0 and c.returncode == 0
    assert a.stdout == b.stdout == c.stdout and "synth" in a.stdout and "data" in a.stdout and "demo" in a.stdout


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and result.stdout.strip() == f"covfast {__version__}"


def test_every_option_has_help():
    for cmd in (["data", "summary"], ["data", "check"], ["synth"]):
        out = runner.invoke(app, [*cmd, "--help"]).stdout
        assert "Usage" in out
    out = runner.invoke(app, ["synth", "--help"]).stdout
    for opt in ("--per-class", "--size", "--seed", "--force"):
        assert opt in out


def test_debug_shows_traceback(tmp_path):
    plain = runner.invoke(app, ["data", "summary", "--data", str(tmp_path / "nope")])
    assert plain.exit_code == 2 and "does not exist" in plain.stderr and "Traceback" not in plain.output
    debug = runner.invoke(app, ["--debug", "data", "summary", "--data", str(tmp_path / "nope")])
    assert debug.exit_code != 0 and debug.exception is not None


def test_synth_then_summary(tmp_path):
    out = tmp_path / "s"
    assert runner.invoke(app, ["synth", str(out), "--per-class", "2", "--size", "32", "--seed", "1"]).exit_code == 0
    result = runner.invoke(app, ["data", "summary", "--data", str(out)])
    assert result.exit_code == 0 and "Total" in result.stdout
    again = runner.invoke(app, ["synth", str(out), "--per-class", "3", "--size", "32"])
    assert again.exit_code == 2 and "--force" in again.stderr
