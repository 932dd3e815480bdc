"""Shared fixtures: a tiny synthetic tree per session, and the real partial dataset when present."""

import os
import shutil
from pathlib import Path

import pytest

from covfast.dataset import DATASET_DIR
from covfast.synth import write_synthetic

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("COVFAST_SHARED_DATA", REPO.parent / "shared" / "data" / "covid-qu-ex"))


@pytest.fixture(scope="session")
def synth_root(tmp_path_factory) -> Path:
    "A synthetic COVID-QU-Ex tree: 6 images per class and split, 64 px. Do not modify it."
    return write_synthetic(tmp_path_factory.mktemp("synth"), per_class=6, size=64, seed=3)


@pytest.fixture
def synth_copy(synth_root, tmp_path) -> Path:
    "A private copy of the synthetic tree that a test may damage."
    return Path(shutil.copytree(synth_root, tmp_path / "copy"))


@pytest.fixture
def real_root() -> Path:
    "The shared partial COVID-QU-Ex copy; the test is skipped where it is absent."
    if not (SHARED_DATA / DATASET_DIR).is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA}")
    return SHARED_DATA
