"""Shared pytest fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest

from helpers import make_data_dir


@pytest.fixture
def synthetic_data_dir(tmp_path: Path) -> Path:
    """A data folder with tiny gzipped FashionMNIST (64 train / 32 test) and MNIST (32 test)
    IDX files in the ``fashion-mnist/`` + ``mnist/`` layout; labels cover 0..9."""
    return make_data_dir(tmp_path / "data")
