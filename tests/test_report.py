"""The report page: exists, links only to files that exist, holds the tables."""

import re

import pandas as pd
import pytest
from typer.testing import CliRunner

from covfast.cli import app
from covfast.runs import HISTORY_COLUMNS

runner = CliRunner()


@pytest.mark.slow
def test_report_links_only_existing_files(synth_root, tmp_path, monkeypatch, fake_run):
    monkeypatch.chdir(tmp_path)
    run = fake_run(tmp_path, synth_root, "everywhere", infection=True)
    pd.DataFrame({"epoch": [1, 2], "train_loss": [1.0, 0.8], "valid_loss": [0.9, 0.8], "train_dice": [0.2, 0.3],
                  "valid_dice_covid": [0.3, 0.4], "valid_dice_noncovid": [0.5, 0.6], "valid_dice_normal": [0.6, 0.7],
                  "valid_dice_mean": [0.4, 0.5], "valid_auc": [0.7, 0.8], "valid_dice_lung": [float("nan")] * 2,
                  "lr": [1e-3, 1e-5], "seconds": [3.0, 3.0]}).reindex(columns=HISTORY_COLUMNS).to_csv(run / "history.csv", index=False)
    result = runner.invoke(app, ["report", "everywhere", "--split", "Test"])
    assert result.exit_code == 0, result.output
    page = run / "report" / "index.html"
    text = page.read_text()
    assert (run / "eval" / "Test" / "per_image.csv").is_file()  # evaluated first
    links = re.findall(r"(?:src|href)='([^']+)'", text)
    assert all((page.parent / link).is_file() for link in links)
    # every picture of the page (training curves, the three case grids, severity) and the metric definitions; this
    # run has no image head, so no ROC curve
    pictures = sorted(link for link in set(links) if not link.endswith("docs/metrics.md"))
    assert pictures == ["cases_0.png", "cases_1.png", "cases_2.png", "history.png", "severity.png"]
    assert any(link.endswith("docs/metrics.md") for link in links)
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


def test_case_figure_titles_fit_inside_the_figure(tmp_path):
    "Every panel title of a case figure, long file and run names included, lies inside the saved figure."
    import matplotlib
    import numpy as np

    from covfast.figures import plot_cases

    gray = np.full((64, 64), 100, np.uint8)
    mask = np.zeros((64, 64), bool)
    mask[10:20, 10:20] = True
    cases = [{"title": "non_COVID (11905) with a long name from a hospital archive.png\nNon-COVID · Dice 0.000\n"
                       "p(COVID-19) 0.625: outlined\nloss 1.234", "gray": gray, "truth": None,
              "preds": [("attention-unet-20261130-193000-seed42-lungs\nDice 0.938", mask, None),
                        ("resnet34-20261130-193000-seed42-lungs\nDice 0.412", mask, mask)]}] * 2
    fig = plot_cases(cases, "the same images through every model")
    fig.canvas.draw()
    renderer, frame = fig.canvas.get_renderer(), fig.bbox
    titled = [ax for ax in fig.axes if ax.get_title()]
    titles = [ax.title for ax in titled]
    assert len(titles) == 8
    for ax, title in zip(titled, titles):
        box = title.get_window_extent(renderer)
        assert frame.x0 <= box.x0 and box.x1 <= frame.x1 and frame.y0 <= box.y0 and box.y1 <= frame.y1, title.get_text()
        # no wider than its panel's slot, so neighbouring titles do not run into each other
        assert box.width <= frame.width / 4, title.get_text()
    # the class is whole on its line (a clipped first line read 'COVID' on a Non-COVID X-ray)
    assert "Non-COVID · Dice 0.000" in titles[0].get_text()
    matplotlib.pyplot.close(fig)


@pytest.mark.slow
def test_report_tables_read_as_plain_words_with_every_column_defined(synth_root, tmp_path, monkeypatch, fake_run):
    "Settings as values a person writes; every column heading with a definition (hover) and a legend entry."
    from html.parser import HTMLParser

    monkeypatch.chdir(tmp_path)
    fake_run(tmp_path, synth_root, "h", infection=True, image_logit=1.0, threshold=0.5, lungs="everywhere")
    assert runner.invoke(app, ["report", "h", "--split", "Test"]).exit_code == 0
    page = (tmp_path / "runs" / "h" / "report" / "index.html").read_text()

    class Tables(HTMLParser):
        "Each table's headings (with their title attributes) and cells, and the legend's terms after it."
        def __init__(self):
            super().__init__()
            self.tables, self.tag, self.title = [], None, None

        def handle_starttag(self, tag, attrs):
            self.tag = tag
            if tag == "table":
                self.tables.append({"th": [], "td": [], "dt": []})
            if tag == "th":
                self.title = dict(attrs).get("title")

        def handle_data(self, data):
            if self.tag in ("th", "td", "dt") and self.tables and data.strip():
                self.tables[-1][self.tag].append((data.strip(), self.title) if self.tag == "th" else data.strip())

        def handle_endtag(self, tag):
            self.tag = None

    parsed = Tables()
    parsed.feed(page)
    assert len(parsed.tables) >= 6
    for table in parsed.tables:
        for heading, title in table["th"]:
            assert title and heading in table["dt"], (heading, table["dt"])
    settings = parsed.tables[0]["td"]
    values = settings[1::2]
    assert not {"None", "False", "True", "nan"} & set(values) and not any(v.startswith("[") for v in values)
    assert "COVID-19, Non-COVID" in values and "no" in values  # the classes as a person writes them; pretrained: no
    assert "docs/metrics.md" in page and "Pooled Dice adds up pixels" in page
