"""Small helpers the tests share."""

from typer.testing import CliRunner

from covfast.cli import app
from covfast.config import Config
from covfast.spec import RunSpec
from covfast.train import train as train_spec

runner = CliRunner()


def cli(*args, env=None):
    "`covfast ARGS...` as a user types it (arguments may be paths or numbers)."
    return runner.invoke(app, [str(a) for a in args], env=env)


def one_line_exit_2(result, *needles):
    "The command refused its input: exit 2, one line on stderr holding every needle, no traceback."
    lines = result.stderr.strip().splitlines()
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and "Traceback" not in result.output, lines
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])


def train(arch, data, config: Config, name=None, cbs=None, **flags):
    "`covfast.train.train` on the spec of `config`'s settings and RunSpec `flags` over data root `data`, into config.runs_dir."
    spec = RunSpec.from_flags(arch, config.replace(data_path=str(data)), **flags)
    return train_spec(spec, name=name, runs_dir=config.runs_dir, cbs=cbs)
