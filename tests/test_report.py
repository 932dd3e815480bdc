"""The report page: exists, links only to files that exist, holds the tables."""

import re

import pandas as pd
from typer.testing import CliRunner

from covfast.cli import app
from covfast.runs import HISTORY_COLUMNS

runner = CliRunner()


def test_report_links_only_existing_files(synth_root, tmp_path, monkeypatch, fake_run):
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path, synth_root, "everywhere", infection=True)
    pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.8], "valid_loss": [0.9, 0.8], "train_dice": [0.2, 0.3],
                  "valid_dice_covid": [0.3, 0.4], "valid_dice_noncovid": [0.5, 0.6], "valid_dice_normal": [0.6, 0.7],
                  "valid_dice_mean": [0.4, 0.5], "valid_auc": [0.7, 0.8], "valid_dice_lung": [float("nan")] * 2,
                  "lr": [1e-3, 1e-5], "seconds": [3.0, 3.0]})[HISTORY_COLUMNS].to_csv(run / "history.csv", index=False)
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
    assert text.count("<table") >= 4
    # synthetic data says so on top, with the disclaimer, and no claim against the real study
    assert "SYNTHETIC DATA" in text and "not a medical device" in text
    assert "Not comparable: synthetic data" in text and "beats reference" not in text
    # numbers read as numbers: counts as integers, learning rates in scientific notation, no raw NaN
    assert "<td>12</td>" in text and "1.0e-03" in text and "nan" not in text.lower().replace("non-covid", "")
    assert ".0000" not in text


def test_cells_are_formatted_for_reading():
    from covfast.pages import _cell
    assert _cell(16.0, "n") == "16" and _cell(float("nan"), "dice") == "–" and _cell(None, "x") == "–"
    assert _cell(0.00001234, "lr") == "1.2e-05" and _cell(0.73114, "dice") == "0.731" and _cell(3, "tp") == "3"


def test_attention_unet_triptychs_add_the_finest_gates_map(synth_root, tmp_path, fake_run):
    "An Attention U-Net's case figures get a fourth column, its finest attention map; other models keep three."
    from PIL import Image

    from covfast.cases import infer_cases, report_case
    from covfast.figures import case_figure
    from covfast.inference import load_run

    run = fake_run(tmp_path, synth_root, "everywhere", infection=True)
    learn, _ = load_run(run)
    images = sorted((synth_root / "Infection Segmentation Data" / "Test" / "COVID-19" / "images").iterdir())[:2]
    rows = pd.DataFrame({"image": [str(p) for p in images], "file": [p.name for p in images],
                         "class": "COVID-19", "dice": 0.5})
    entries = infer_cases(learn, rows)
    assert len(entries) == 2
    for e in entries:
        # the finest gate's map is at the model's input resolution (32 px), with values in [0, 1]
        assert e["attention"].shape == (32, 32) and 0 <= e["attention"].min() <= e["attention"].max() <= 1
        assert e["pred"].shape == e["gray"].shape == e["truth"].shape
    with_map = Image.open(case_figure([report_case(e) for e in entries], tmp_path / "four.png", "t"))
    without = Image.open(case_figure([report_case({k: v for k, v in e.items() if k != "attention"}) for e in entries],
                                     tmp_path / "three.png", "t"))
    # 3 inches per column at 90 dpi: 4 columns against 3
    assert with_map.size == (4 * 270, 2 * 270) and without.size == (3 * 270, 2 * 270)
