"""The README's Python snippet runs as written (on a tiny synthetic tree instead of the real dataset)."""

import re
from pathlib import Path

import matplotlib
import pytest
import torch

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.mark.slow
def test_the_readmes_notebook_snippet_runs(synth_root, tmp_path, monkeypatch):
    matplotlib.use("Agg")
    monkeypatch.chdir(tmp_path)
    snippet = re.search(r"```python\n(.*?)```", README.read_text(), re.S).group(1)
    # the same code at test size: the synthetic tree for the dataset, 32 px, one epoch
    tiny = (snippet.replace('"data/covidqu"', repr(str(synth_root))).replace("img_size=128", "img_size=32")
            .replace("epochs=6", "epochs=1").replace("fit_one_cycle(5,", "fit_one_cycle(1,").replace("max_n=6", "max_n=2")
            .replace("lr_find()", "lr_find(num_it=10)"))
    assert tiny.count(str(synth_root)) == 2 and "img_size=32" in tiny  # every substitution found its text
    namespace: dict = {}
    # the first paragraph trains a learner by hand: its lung output must learn (its DataLoaders carry lung masks)
    first, rest = tiny.split("\n\n", 1)
    lines = first.splitlines()
    made = next(i for i, line in enumerate(lines) if "covfast_learner(" in line) + 1
    exec(compile("\n".join(lines[:made]), str(README), "exec"), namespace)
    last = [m for m in namespace["learn"].model.modules() if isinstance(m, torch.nn.Conv2d) and m.out_channels == 4][-1]
    before = last.weight[2:].detach().clone()  # (background, lung) share the last 1x1 convolution with the infection's 2
    exec(compile("\n".join(lines[made:]), str(README), "exec"), namespace)
    assert (last.weight[2:].detach() - before).abs().max() > 0, "the lung output got no gradient"
    exec(compile(rest, str(README), "exec"), namespace)
    assert (namespace["run"] / "report" / "index.html").is_file() and (namespace["run"] / "calibration.json").is_file()
    assert namespace["summary"].set_index("group").loc["All", "n"] == 18
