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


def colour_images(n: int, seed: int, size: int = 32) -> tuple[np.ndarray, np.ndarray]:
    """Random uint8 colour images [n, size, size, 3] (channels last) and labels [n] covering 0..9 (n ≥ 10)."""
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
    labels = rng.permutation(np.arange(n) % 10).astype(np.uint8)
    return images, labels


def write_cifar10_bin(root: Path, n_train: int = 50, n_test: int = 40, seed: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """CIFAR-10's binary layout ``root/cifar-10-batches-bin/``: ``data_batch_1..5.bin`` (the training
    images spread over them) and ``test_batch.bin``; a record = label byte + R, G, B planes of 32×32.
    Returns the (train, test) images [n, 32, 32, 3] that were written."""
    folder = root / "cifar-10-batches-bin"
    folder.mkdir(parents=True, exist_ok=True)
    train, train_labels = colour_images(n_train, seed)
    test, test_labels = colour_images(n_test, seed + 1)

    def records(images: np.ndarray, labels: np.ndarray) -> bytes:
        planes = images.transpose(0, 3, 1, 2).reshape(len(images), -1)
        return np.concatenate([labels[:, None], planes], axis=1).astype(np.uint8).tobytes()

    for k, chunk in enumerate(np.array_split(np.arange(n_train), 5), start=1):
        (folder / f"data_batch_{k}.bin").write_bytes(records(train[chunk], train_labels[chunk]))
    (folder / "test_batch.bin").write_bytes(records(test, test_labels))
    return train, test


def write_svhn_mat(root: Path, n_train: int = 30, n_test: int = 40, seed: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """SVHN's torchvision layout: ``root/train_32x32.mat`` and ``root/test_32x32.mat`` (MATLAB v5: ``X``
    [32, 32, 3, N], ``y`` [N, 1] with 10 for the digit 0). Returns the (train, test) images [n, 32, 32, 3]."""
    from scipy.io import savemat

    root.mkdir(parents=True, exist_ok=True)
    out = []
    for offset, (split, n) in enumerate((("train", n_train), ("test", n_test))):
        images, labels = colour_images(n, seed + offset)
        y = np.where(labels == 0, 10, labels).astype(np.uint8)[:, None]
        savemat(root / f"{split}_32x32.mat", {"X": images.transpose(1, 2, 3, 0), "y": y})
        out.append(images)
    return out[0], out[1]
