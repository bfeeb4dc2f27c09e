"""Shared helpers of the tests: tiny synthetic MNIST-like IDX data sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fevae.data.idx import write_idx

#: Sizes of the synthetic splits: (dataset, file prefix) -> number of images.
SIZES = {("fashionmnist", "train"): 64, ("fashionmnist", "t10k"): 32, ("mnist", "t10k"): 32}
#: Folder of each dataset below the data root, per layout.
FOLDERS = {"debian": {"fashionmnist": "fashion-mnist", "mnist": "mnist"},
           "torchvision": {"fashionmnist": "FashionMNIST/raw", "mnist": "MNIST/raw"}}


def labelled_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 images [n, 28, 28] and labels [n] covering 0..9 (n ≥ 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool = True) -> None:
    """Write ``<prefix>-images-idx3-ubyte[.gz]`` and ``<prefix>-labels-idx1-ubyte[.gz]`` into ``folder``."""
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels)


def make_data_dir(root: Path, layout: str = "debian", gz: bool = True,
                  sizes: dict[tuple[str, str], int] | None = None) -> Path:
    """Write the synthetic splits ``sizes`` (default :data:`SIZES`) below ``root`` in ``layout``."""
    for seed, ((dataset, prefix), n) in enumerate((sizes or SIZES).items()):
        images, labels = labelled_images(n, seed)
        write_split(root / FOLDERS[layout][dataset], prefix, images, labels, gz=gz)
    return root
