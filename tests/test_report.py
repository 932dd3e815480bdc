"""The report page: exists, links only to files that exist, holds the tables."""

import re

import pandas as pd
from typer.testing import CliRunner

from covfast.cli import app
from covfast.runs import HISTORY_COLUMNS

from .test_evaluate import fake_run

runner = CliRunner()


def test_report_links_only_existing_files(synth_root, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path, synth_root, "everywhere", infection=True)
    pd.DataFrame([[1, 1.0, 0.2, 0.9, 0.3, 0.5, 0.4, 1e-3, 3.0], [2, 0.8, 0.3, 0.8, 0.4, 0.6, 0.5, 1e-5, 3.0]],
                 columns=HISTORY_COLUMNS).to_csv(run / "history.csv", index=False)
    result = runner.invoke(app, ["report", "everywhere", "--split", "Test"])
    assert result.exit_code == 0, result.output
    page = run / "report" / "index.html"
    text = page.read_text()
    assert (run / "eval" / "Test" / "per_image.csv").is_file()  # evaluated first
    links = re.findall(r"(?:src|href)='([^']+)'", text)
    assert len(links) >= 5 and all((page.parent / link).is_file() for link in links)
    assert "http" not in "".join(links) and "<script" not in text
    for heading in ("Settings", "Training curves", "Evaluation on Test", "Against the reference study",
                    "COVID-19: best, median, worst", "Empty-truth images", "Top losses", "Severity"):
        assert heading in text
    assert text.count("<table") >= 5 and "attention (finest gate)" not in text  # PNG text is not in the HTML
