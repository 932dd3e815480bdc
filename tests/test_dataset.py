import shutil

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from covfast.cli import app
from covfast.dataset import DATASET_DIR, check_tree, dataset_summary, resolve_root, scan_tree
from covfast.errors import CovfastError

runner = CliRunner()


def test_three_root_forms(synth_copy):
    ds = synth_copy / DATASET_DIR
    assert resolve_root(synth_copy) == ds and resolve_root(ds) == ds
    for split in ("Train", "Val", "Test"):
        (ds / split).rename(ds / split.lower())
    df = scan_tree(ds)
    assert len(df) == 54 and set(df.split) == {"Train", "Val", "Test"}


def test_summary_table(synth_root):
    table = dataset_summary(scan_tree(synth_root))
    assert table.loc["Train", "COVID-19"] == 6 and table.loc["Total", "Total"] == 54
    assert list(table.columns) == ["COVID-19", "Non-COVID", "Normal", "Total"]


def test_missing_root_is_clear(tmp_path):
    with pytest.raises(CovfastError, match="does not exist"):
        scan_tree(tmp_path / "nope")
    with pytest.raises(CovfastError, match="neither"):
        scan_tree(tmp_path)


def ds_file(root, split, label, sub, index=0):
    folder = root / DATASET_DIR / split / label / sub
    return sorted(folder.iterdir())[index]


def delete_mask(root):
    p = ds_file(root, "Train", "COVID-19", "infection masks")
    p.unlink()
    return p.name


def truncate_image(root):
    p = ds_file(root, "Val", "Normal", "images")
    p.write_bytes(p.read_bytes()[:100])
    return p.name


def mask_128(root):
    p = ds_file(root, "Val", "COVID-19", "infection masks")
    a = np.asarray(Image.open(p)).copy()
    a[0, 0] = 128
    Image.fromarray(a).save(p)
    return p.name


def rename_split(root):
    (root / DATASET_DIR / "Train").rename(root / DATASET_DIR / "Trian")
    return "Trian"


@pytest.mark.parametrize("damage,in_summary", [(delete_mask, True), (truncate_image, False),
                                               (mask_128, False), (rename_split, True)])
def test_damaged_tree_exits_2_with_one_line(synth_copy, damage, in_summary):
    offending = damage(synth_copy)
    commands = [["data", "check"]] + ([["data", "summary"]] if in_summary else [])
    for cmd in commands:
        result = runner.invoke(app, [*cmd, "--data", str(synth_copy)])
        assert result.exit_code == 2, (cmd, result.output)
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and offending in lines[0], lines
        assert "Traceback" not in result.output


def test_check_counts_every_file(synth_root):
    result = runner.invoke(app, ["data", "check", "--data", str(synth_root)])
    assert result.exit_code == 0 and "opened 162 files" in result.stdout


def test_check_finds_size_mismatch_and_stray_files(synth_copy):
    p = ds_file(synth_copy, "Test", "Normal", "lung masks")
    Image.fromarray(np.zeros((32, 32), np.uint8)).save(p)
    stray = synth_copy / DATASET_DIR / "Test" / "Normal" / "images" / "notes.txt"
    stray.write_text("x")
    _, problems = check_tree(synth_copy)
    assert any("size mismatch" in m and p.name in m for m in problems)
    assert any("unexpected file" in m and "notes.txt" in m for m in problems)


def test_many_problems_are_listed_with_a_count(synth_copy):
    for split in ("Train", "Val"):  # 2 x 6 images lose their lung masks
        shutil.rmtree(synth_copy / DATASET_DIR / split / "Normal" / "lung masks")
        (synth_copy / DATASET_DIR / split / "Normal" / "lung masks").mkdir()
    with pytest.raises(CovfastError) as e:
        scan_tree(synth_copy)
    lines = str(e.value).splitlines()
    assert len(lines) == 11 and lines[-1].startswith("... and 2 more (12 problems")


def test_real_data_summary(real_root):
    for root in (real_root, real_root / DATASET_DIR):
        result = runner.invoke(app, ["data", "summary", "--data", str(root)])
        assert result.exit_code == 0, result.output
        rows = {line.split()[0]: line.split()[1:] for line in result.stdout.splitlines() if line.split()}
        # each count as the folders hold it (the shared copy's Train has grown once already: PROVENANCE.md)
        counted = {s: [sum(1 for _ in (real_root / DATASET_DIR / s / c / "images").glob("*.png"))
                       for c in ("COVID-19", "Non-COVID", "Normal")] for s in ("Train", "Val", "Test")}
        for split, counts in counted.items():
            assert rows[split] == [str(n) for n in (*counts, sum(counts))], split
        total = [sum(c) for c in zip(*counted.values())]
        assert rows["Total"] == [str(n) for n in (*total, sum(total))]
        assert rows["Val"] == ["466", "233", "233", "932"]  # Val is the whole COVID-QU-Ex Val split


@pytest.mark.slow
def test_real_data_check(real_root):
    result = runner.invoke(app, ["data", "check", "--data", str(real_root)])
    images = sum(1 for _ in (real_root / DATASET_DIR).glob("*/*/images/*.png"))  # read from the tree: it grows
    assert result.exit_code == 0 and f"opened {3 * images} files ({images} images with infection and lung masks)" in result.stdout
