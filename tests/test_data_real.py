"""The real FashionMNIST / MNIST files: counts, shapes, the data module and the doctor CLI.

The data folder is ``$FEVAE_DATA_DIR`` or ``../shared/data`` beside the repository. Without it
these tests are skipped — except under CI (env ``CI`` set), where they fail instead.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from fevae.data.datamodule import FevaeDataModule
from fevae.data.discovery import locate_data
from fevae.data.idx import read_images_and_labels

pytestmark = pytest.mark.realdata
REPO = Path(__file__).resolve().parents[1]
COUNTS = {"fashionmnist/train": 60000, "fashionmnist/test": 10000, "mnist/test": 10000}


def test_real_counts_and_shapes(real_data_dir: Path) -> None:
    files = locate_data(real_data_dir)
    for key, count in COUNTS.items():
        assert files[key][0].is_relative_to(real_data_dir), files[key]
        images, labels = read_images_and_labels(*files[key])
        assert images.shape == (count, 28, 28) and labels.shape == (count,)
        assert set(labels.tolist()) == set(range(10))


def test_real_datamodule(real_data_dir: Path) -> None:
    dm = FevaeDataModule(real_data_dir, val_size=5000, seed=0)
    dm.setup()
    assert (len(dm.train_set), len(dm.val_set)) == (55000, 5000)
    assert {name: len(ds) for name, ds in dm.eval_sets.items()} == {
        "fashionmnist": 10000, "mnist": 10000, "mnist_saltpepper": 10000}
    x, y = dm.train_set.tensors
    assert x.shape == (55000, 1, 28, 28) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0


def test_real_doctor_cli(real_data_dir: Path, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    result = subprocess.run([sys.executable, "-m", "fevae.data", f"paths.data_dir={real_data_dir}"],
                            cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "fashionmnist/train: ok — 60000 images 28x28" in out
    assert "fashionmnist/test: ok — 10000 images 28x28" in out and "mnist/test: ok — 10000 images 28x28" in out
    assert out.count("md5 ok") == 3 and out.rstrip().endswith("result: ok")
