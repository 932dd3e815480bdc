"""Small helpers the tests share."""

from covfast.config import Config
from covfast.spec import RunSpec
from covfast.train import train as train_spec


def train(arch, data, config: Config, name=None, cbs=None, **flags):
    "`covfast.train.train` on the spec of `config`'s settings and RunSpec `flags` over data root `data`, into config.runs_dir."
    spec = RunSpec.from_flags(arch, config.replace(data_path=str(data)), **flags)
    return train_spec(spec, name=name, runs_dir=config.runs_dir, cbs=cbs)
