import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from covfast.cli import app
from covfast.compare import paired_differences

runner = CliRunner()


def test_paired_differences_by_hand():
    a = pd.DataFrame({"image": ["../d/x.png", "../d/y.png", "../d/z.png"], "file": ["x.png", "y.png", "z.png"],
                      "class": ["COVID-19", "COVID-19", "Non-COVID"], "dice": [0.5, 0.2, 1.0]})
    # the same images scored from another folder (an absolute data root): paired by class and file name
    b = a.assign(dice=[0.7, 0.2, 0.0], image=["/work/d/x.png", "/work/d/y.png", "/work/d/z.png"]).iloc[::-1]
    table = paired_differences(a, b, n_boot=200).set_index("group")
    assert table.loc["COVID-19", "mean_dice_difference"] == pytest.approx(0.1)
    assert table.loc["All", "mean_dice_difference"] == pytest.approx((0.2 + 0 - 1) / 3)
    assert table.loc["All", ["b_better", "a_better", "ties"]].tolist() == [1, 1, 1]


@pytest.mark.slow
def test_compare_two_runs_writes_its_files(synth_root, tmp_path, monkeypatch, fake_run):
    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path, synth_root, "everywhere", infection=True)
    fake_run(tmp_path, synth_root, "nowhere", infection=False)
    assert runner.invoke(app, ["report", "everywhere", "--split", "Test"]).exit_code == 0
    result = runner.invoke(app, ["compare", "everywhere", "nowhere", "--split", "Test", "--out", "cmp"])
    assert result.exit_code == 0, result.output
    page = (tmp_path / "cmp" / "index.html").read_text()
    # each run's report linked by a path relative to the page; a run without a report is named, not linked
    assert "href='../runs/everywhere/report/index.html'" in page and "../runs/nowhere" in page
    assert page.count("report/index.html") == 1 and "SYNTHETIC DATA" in page
    assert "docs/metrics.md" in page  # where every figure is defined
    # image counts as integers in the side-by-side table (one row per group and metric)
    counts = re.findall(r"<td>n</td>\s*<td>([^<]*)</td>\s*<td>([^<]*)</td>", page)
    assert counts and all(v.isdigit() for row in counts for v in row), counts
    for name in ("index.html", "metrics.csv", "paired.csv", "grid.png"):
        assert (tmp_path / "cmp" / name).is_file()
    paired = pd.read_csv(tmp_path / "cmp" / "paired.csv").set_index("group")
    # nowhere - everywhere: Non-COVID images go from Dice 0 to 1, COVID images from > 0 to 0
    assert paired.loc["Non-COVID", "mean_dice_difference"] == 1 and paired.loc["COVID-19", "mean_dice_difference"] < 0
    assert "everywhere: dice" in (tmp_path / "cmp" / "metrics.csv").read_text()
    one = runner.invoke(app, ["compare", "everywhere"])
    assert one.exit_code == 2 and "at least two" in one.stderr
