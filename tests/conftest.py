"""Shared pytest fixtures."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from helpers import make_data_dir


@pytest.fixture
def synthetic_data_dir(tmp_path: Path) -> Path:
    """A data folder with tiny gzipped FashionMNIST (64 train / 32 test) and MNIST (32 test)
    IDX files in the ``fashion-mnist/`` + ``mnist/`` layout; labels cover 0..9."""
    return make_data_dir(tmp_path / "data")


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The real data: ``$FEVAE_DATA_DIR`` or ``../shared/data`` beside the repository.

    Skipped when absent, except under CI (env ``CI`` set), where the real-data tests must run.
    """
    candidates = [Path(p) for p in (os.environ.get("FEVAE_DATA_DIR"),) if p]
    candidates.append(Path(__file__).resolve().parents[2] / "shared" / "data")
    for candidate in candidates:
        if candidate.is_dir():
            return candidate
    message = f"real data not found in {', '.join(map(str, candidates))} (set FEVAE_DATA_DIR)"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the real-data tests: {message}")
    pytest.skip(message)
