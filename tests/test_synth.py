import filecmp

import numpy as np
import pytest
from PIL import Image

from covfast.dataset import DATASET_DIR, scan_tree
from covfast.errors import CovfastError
from covfast.synth import write_synthetic


def tree_files(root):
    return sorted(p.relative_to(root) for p in root.rglob("*") if p.is_file())


def test_same_seed_gives_byte_identical_trees(tmp_path):
    a = write_synthetic(tmp_path / "a", per_class=2, size=48, seed=5)
    b = write_synthetic(tmp_path / "b", per_class=2, size=48, seed=5)
    files = tree_files(a)
    assert files == tree_files(b) and len(files) == 3 * 3 * 2 * 3 + 1
    _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
    assert mismatch == [] and errors == []
    c = write_synthetic(tmp_path / "c", per_class=2, size=48, seed=6)
    assert not filecmp.cmp(a / files[0], c / files[0], shallow=False)


def test_layout_values_and_classes(synth_root):
    df = scan_tree(synth_root)
    assert len(df) == 3 * 3 * 6
    assert {"covid_1.png", "non_COVID (7).png", "Normal (13).png"} <= set(df.name)  # the dataset's naming styles
    for row in df.itertuples():
        img, inf, lung = (np.asarray(Image.open(getattr(row, c))) for c in ("image", "infection_mask", "lung_mask"))
        assert img.shape == inf.shape == lung.shape == (64, 64) and img.dtype == np.uint8
        assert set(np.unique(inf)) <= {0, 255} and set(np.unique(lung)) == {0, 255}
        assert (inf.any()) == (row.label == "COVID-19")
        assert not (inf & ~lung).any()  # infection only inside the lungs


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / DATASET_DIR).mkdir()
    with pytest.raises(CovfastError, match="not made by covfast synth"):
        write_synthetic(tmp_path, per_class=1, size=32)
    out = write_synthetic(tmp_path / "s", per_class=1, size=32, seed=1)
    write_synthetic(out, per_class=1, size=32, seed=1)  # same settings: the same bytes again
    with pytest.raises(CovfastError, match="--force"):
        write_synthetic(out, per_class=1, size=32, seed=2)
    write_synthetic(out, per_class=2, size=32, seed=2, force=True)
    assert len(scan_tree(out)) == 18
