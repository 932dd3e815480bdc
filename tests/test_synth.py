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


def _hashes(folder):
    import hashlib
    return {p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()}


def test_refuses_to_overwrite(tmp_path):
    (tmp_path / DATASET_DIR).mkdir()
    with pytest.raises(CovfastError, match="did not write"):
        write_synthetic(tmp_path, per_class=1, size=32)
    with pytest.raises(CovfastError, match="not made by covfast synth"):
        write_synthetic(tmp_path, per_class=1, size=32, force=True)
    out = write_synthetic(tmp_path / "s", per_class=1, size=32, seed=1)
    write_synthetic(out, per_class=1, size=32, seed=1)  # same settings: the same bytes again
    with pytest.raises(CovfastError, match="--force"):
        write_synthetic(out, per_class=1, size=32, seed=2)
    write_synthetic(out, per_class=2, size=32, seed=2, force=True)
    assert len(scan_tree(out)) == 18


def test_synth_never_removes_a_file_it_did_not_write(tmp_path):
    "A user's files beside or inside a synthetic tree survive every rewrite, --force included."
    out = write_synthetic(tmp_path / "s", per_class=1, size=32)
    (out / "my_notes.txt").write_text("keep me")
    (out / DATASET_DIR / "Train" / "notes.txt").write_text("and me")
    for kwargs in ({}, {"per_class": 2, "force": True}):
        write_synthetic(out, **{"per_class": 1, "size": 32, **kwargs})
        assert (out / "my_notes.txt").read_text() == "keep me"
        assert (out / DATASET_DIR / "Train" / "notes.txt").read_text() == "and me"
    assert len(list((out / DATASET_DIR / "Train" / "COVID-19" / "images").iterdir())) == 2  # the old tree's files went
    # a folder holding a user's files is refused without --force, and left as it was
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "my_notes.txt").write_text("keep me")
    before = _hashes(mine)
    with pytest.raises(CovfastError, match="did not write"):
        write_synthetic(mine, per_class=1, size=32)
    assert _hashes(mine) == before
    write_synthetic(mine, per_class=1, size=32, force=True)  # beside them
    assert (mine / "my_notes.txt").read_text() == "keep me" and (mine / DATASET_DIR).is_dir()
