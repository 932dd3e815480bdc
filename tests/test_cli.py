import subprocess
import sys
from pathlib import Path

import typer
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


def all_commands(group=None, path=()):
    "(path, click command) for every command of the app, sub-commands included."
    group = group or typer.main.get_command(app)
    for name, cmd in group.commands.items():
        if hasattr(cmd, "commands"):  # a group (typer may vendor its own click)
            yield from all_commands(cmd, (*path, name))
        else:
            yield (*path, name), cmd


def test_every_command_and_option_has_help_text():
    commands = dict(all_commands())
    assert {("train",), ("evaluate",), ("data", "check"), ("predict",), ("demo",)} <= set(commands)
    missing = [f"{' '.join(path)} {p.opts[0] if p.opts else p.name}" for path, cmd in commands.items()
               for p in cmd.params if p.param_type_name == "option" and p.name != "help" and not (p.help or "").strip()]
    assert not missing, f"options without help text: {missing}"
    assert not [path for path, cmd in commands.items() if not (cmd.help or "").strip()]
    # and the help screen shows it
    out = runner.invoke(app, ["synth", "--help"]).stdout
    assert "Images per class" in out and "--per-class" in out


def test_debug_shows_traceback_and_a_bad_input_still_exits_2(tmp_path):
    plain = runner.invoke(app, ["data", "summary", "--data", str(tmp_path / "nope")])
    assert plain.exit_code == 2 and "does not exist" in plain.stderr and "Traceback" not in plain.output
    debug = runner.invoke(app, ["--debug", "data", "summary", "--data", str(tmp_path / "nope")])
    assert debug.exit_code == 2 and "Traceback" in debug.stderr and "does not exist" in debug.stderr.splitlines()[-1]
    typo = runner.invoke(app, ["--debug", "train", "nosucharch"])
    assert typo.exit_code == 2 and "Traceback" in typo.stderr


def test_synth_then_summary(tmp_path):
    out = tmp_path / "s"
    assert runner.invoke(app, ["synth", str(out), "--per-class", "2", "--size", "32", "--seed", "1"]).exit_code == 0
    result = runner.invoke(app, ["data", "summary", "--data", str(out)])
    assert result.exit_code == 0 and "Total" in result.stdout
    again = runner.invoke(app, ["synth", str(out), "--per-class", "3", "--size", "32"])
    assert again.exit_code == 2 and "--force" in again.stderr


def test_flags_are_not_shown_as_taking_a_value():
    "--help and --pretrained/--no-pretrained take no value; the help must not list a <bool> type beside them."
    for path, _ in all_commands():
        out = runner.invoke(app, [*path, "--help"]).stdout
        assert "<bool>" not in out, path
    assert "<int" in runner.invoke(app, ["train", "--help"]).stdout  # options that take a value keep theirs


def test_a_wrong_name_or_path_is_refused_before_torch_loads(tmp_path, synth_root):
    "A typo costs no seconds of torch and fastai loading: every command refuses it first (exit 2), with the fix."
    (tmp_path / "runs" / "real").mkdir(parents=True)
    (tmp_path / "runs" / "real" / "config.json").write_text("{}")
    wrong = [["train", "nosucharch"], ["train", "attention-unet", "--data", "no/such/data"],
             ["train", "attention-unet", "--resume", "nosuch"], ["lr-find", "attention-unet", "--data", "no/such"],
             ["predict", "nosuch", str(synth_root)], ["predict", "real", "no/such.png"], ["evaluate", "nosuch"],
             ["calibrate", "nosuch"], ["report", "nosuch"], ["compare", "real", "nosuch"], ["ensemble", "real", "nosuch"],
             ["export", "nosuch"], ["serve", "nosuch"]]
    script = ("import sys; from covfast.cli import app\n"
              f"for args in {wrong!r}:\n"
              "    print(args[0], app(args, prog_name='covfast', standalone_mode=False))\n"
              "print('torch loaded:', 'torch' in sys.modules)\n")
    env = {k: v for k, v in __import__("os").environ.items() if not k.startswith("COVFAST_")}
    done = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, env=env)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == [f"{args[0]} 2" for args in wrong] + ["torch loaded: False"]
    said = done.stderr.splitlines()
    assert len(said) == len(wrong) and all(line.startswith("covfast: error: ") for line in said), said
    assert "no run directory 'nosuch'" in said[4] and "no/such.png does not exist" in said[5], said
