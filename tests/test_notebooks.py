"""The notebooks in nbs/: committed with their outputs and clean of execution metadata, and they run top to
bottom, headless, on their default synthetic tree (with fewer epochs where no cell needs more), showing figures
and a model that learned."""

import json
import sys
from pathlib import Path

import nbformat
import pytest

from covfast.demo import DEMO_SETTINGS

NBS = Path(__file__).resolve().parents[1] / "nbs"
NOTEBOOKS = sorted(NBS.glob("*.ipynb"))
sys.path.insert(0, str(NBS))
from run import clean, execute  # noqa: E402  (nbs/run.py: how they are executed and saved)


def _images(nb) -> list:
    return [o for c in nb.cells for o in c.get("outputs", []) if "image/png" in o.get("data", {})]


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_is_committed_with_its_outputs_and_clean(path):
    "The repository page shows the figures; nothing run-specific (counts, timings, kernel versions) is kept."
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert code[-1].outputs, "saved without running to the end: run `python nbs/run.py`"
    assert _images(nb), "the notebook shows no figure"
    assert not [o for c in code for o in c.outputs if o.get("output_type") == "error"]
    assert nb == clean(nbformat.from_dict(json.loads(json.dumps(nb)))), "not cleaned: run `python nbs/run.py`"
    assert any("parameters" in c.metadata.get("tags", []) for c in nb.cells)


# Fewer epochs than the notebooks' own where nothing below needs a model that learned (the rest as saved):
# each notebook still runs every cell top to bottom; this keeps the suite minutes shorter
QUICKER = {"01_train": {"EPOCHS": {"attention-unet": 3, "resnet34": 2}},
           "02_results": {"EPOCHS": {"attention-unet": 25, "resnet34": 2}}}


# a probe appended to notebook 02: what show_results displays, and the Attention U-Net's Test evaluation
PROBE = """import json
covid = per_image_a[per_image_a["class"] == "COVID-19"]
print(json.dumps({"shown": learn_a.show_results(max_n=8, shuffle=False).to_dict("list"),
                  "summary": summary_a.set_index("group")[["dice", "sensitivity", "specificity"]].to_dict("index"),
                  # the Dice of a mask that paints every pixel infected: what chance gets
                  "everything": float((2 * (covid.tp + covid.fn) / (SIZE ** 2 + covid.tp + covid.fn)).max())}))"""


def _parameters(nb) -> dict:
    "The values the notebook's parameters cell sets."
    values: dict = {}
    exec(next(c.source for c in nb.cells if "parameters" in c.metadata.get("tags", [])), values)
    return values


@pytest.mark.slow
@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.stem)
def test_notebook_runs_top_to_bottom(path, tmp_path):
    nb = nbformat.read(path, as_version=4)
    if path.stem == "02_results":
        nb.cells.append(nbformat.v4.new_code_cell(PROBE))
    nb = execute(path, nb=nb, parameters=QUICKER.get(path.stem))
    errors = [o for c in nb.cells for o in c.get("outputs", []) if o.get("output_type") == "error"]
    assert not errors, errors
    assert _images(nb), "the notebook shows no figure"
    if path.stem == "02_results":
        probe = json.loads(next(o.text for o in nb.cells[-1].outputs if o.get("name") == "stdout"))
        shown = probe["shown"]
        covid = [d for d, t in zip(shown["dice"], shown["truth"]) if t == "infection"]
        # painting every pixel scores about 0.08 on these images and an empty mask 0: a model that learned
        assert covid and sum(covid) / len(covid) > 0.4, shown
        assert probe["everything"] < 0.2
        by = probe["summary"]  # the demo's Attention U-Net, calibrated on Val, on Test (see the test below)
        assert by["COVID-19"]["dice"] > 0.5, by
        assert by["All"]["sensitivity"] >= 0.7 and by["All"]["specificity"] >= 0.7, by


def test_notebook_02_trains_the_demos_attention_unet():
    """Notebook 02's Attention U-Net is the one `covfast demo` trains (same data, size, batch size, lr and
    epochs), so its run above shows the demo's short training learns: on Test images it never saw (threshold
    chosen on Val) a COVID-19 Dice above 0.5 and at least 70% of images outlined / left empty, where chance
    cannot get there (an all-infection mask scores at most 0.2 on these images, an empty one 0, and a
    decision that ignores the image outlines all or none)."""
    values = _parameters(nbformat.read(NBS / "02_results.ipynb", as_version=4))
    s = DEMO_SETTINGS
    assert (values["PER_CLASS"], values["SIZE"], values["BS"]) == (s["per_class"], s["size"], s["bs"])
    assert values["EPOCHS"]["attention-unet"] == QUICKER["02_results"]["EPOCHS"]["attention-unet"] == s["epochs"]["attention-unet"]
    assert values["LR"]["attention-unet"] == float(s["lr"]["attention-unet"])
