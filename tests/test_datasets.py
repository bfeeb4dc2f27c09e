"""The dataset registry: every dataset's on-disk layouts, read from tiny synthetic files.

No real KMNIST/EMNIST/CIFAR-10/SVHN data is needed: each test writes a few images in the exact
format of the originals (IDX, CIFAR-10 binary records, CIFAR-10 python pickles, SVHN MATLAB v5)
and checks shapes, dtypes, labels and pixel orientation of what :func:`load_split` returns.
"""

from __future__ import annotations

import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from fevae.data import discovery
from fevae.data.discovery import LoadedSplit, load_split, locate_data
from fevae.data.catalog import DATASET_INFO
from fevae.data.doctor import run_doctor
from fevae.data.idx import check_labels, write_idx
from fevae.data.readers import load_array_pickle
from fevae.errors import FevaeError
from helpers import make_data_dir


@pytest.fixture(autouse=True)
def no_system_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore data installed on this machine (e.g. Debian's dataset-fashion-mnist)."""
    monkeypatch.setattr(discovery, "SYSTEM_DIRS", [])


def _error(call, *args, **kwargs) -> str:
    """The one-line message of the FevaeError raised by ``call``."""
    with pytest.raises(FevaeError) as info:
        call(*args, **kwargs)
    message = str(info.value)
    assert "\n" not in message and " — " in message
    return message


def _images(n: int, shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, size=(n, *shape), dtype=np.uint8)


# ---------------------------------------------------------------------------------- registry
def test_registry() -> None:
    assert list(DATASET_INFO) == ["fashionmnist", "mnist", "kmnist", "emnist_letters", "cifar10", "svhn"]
    cifar = DATASET_INFO["cifar10"]
    assert (cifar.title, cifar.image_shape, cifar.n_classes) == ("CIFAR-10", (3, 32, 32), 10)
    assert DATASET_INFO["svhn"].image_shape == (3, 32, 32)
    assert DATASET_INFO["kmnist"].image_shape == (1, 28, 28)
    letters = DATASET_INFO["emnist_letters"]
    assert letters.n_classes == 26 and letters.label_range == (1, 26) and letters.transposed
    assert all(info.label_range == (0, 9) for name, info in DATASET_INFO.items() if name != "emnist_letters")


def test_unknown_dataset_and_split(tmp_path: Path) -> None:
    message = _error(load_split, "cifar100", "train", tmp_path)
    assert "cifar100" in message and all(name in message for name in DATASET_INFO)
    assert "'val'" in _error(load_split, "mnist", "val", tmp_path)
    assert "nope" in _error(locate_data, tmp_path, datasets=["nope"])


# --------------------------------------------------------------------------- IDX datasets
IDX_CASES = {  # dataset -> (upstream folder, torchvision folder, file prefix of train, of test)
    "fashionmnist": ("fashion-mnist", "FashionMNIST/raw", "train", "t10k"),
    "mnist": ("mnist", "MNIST/raw", "train", "t10k"),
    "kmnist": ("kmnist", "KMNIST/raw", "train", "t10k"),
    "emnist_letters": ("emnist", "EMNIST/raw", "emnist-letters-train", "emnist-letters-test"),
}


def _write_idx_split(folder: Path, prefix: str, images: np.ndarray, labels: np.ndarray, gz: bool) -> None:
    suffix = ".gz" if gz else ""
    write_idx(folder / f"{prefix}-images-idx3-ubyte{suffix}", images)
    write_idx(folder / f"{prefix}-labels-idx1-ubyte{suffix}", labels.astype(np.uint8))


@pytest.mark.parametrize("gz", [True, False], ids=["gz", "plain"])
@pytest.mark.parametrize("layout", [0, 1], ids=["upstream", "torchvision"])
@pytest.mark.parametrize("name", list(IDX_CASES))
@pytest.mark.parametrize("split", ["train", "test"])
def test_idx_datasets(tmp_path: Path, name: str, layout: int, gz: bool, split: str) -> None:
    folder, prefix = IDX_CASES[name][layout], IDX_CASES[name][2 if split == "train" else 3]
    upright = _images(12, (28, 28), seed=1)
    upright[0] = 0
    upright[0, 2, 25] = 255  # one bright pixel: row 2, column 25 (top right)
    first = DATASET_INFO[name].first_label
    labels = (np.arange(12) % DATASET_INFO[name].n_classes + first).astype(np.uint8)
    stored = upright.transpose(0, 2, 1) if name == "emnist_letters" else upright  # EMNIST: column by column
    _write_idx_split(tmp_path / folder, prefix, stored, labels, gz)
    data = load_split(name, split, data_dir=tmp_path)
    assert isinstance(data, LoadedSplit) and len(data) == 12
    assert data.images.dtype == np.uint8 and data.images.shape == (12, 28, 28) and data.images.flags.c_contiguous
    assert data.labels.dtype == np.int64 and data.labels.tolist() == labels.tolist()
    np.testing.assert_array_equal(data.images, upright)
    assert data.images[0, 2, 25] == 255 and data.images[0].sum() == 255
    images_file = tmp_path / folder / f"{prefix}-images-idx3-ubyte{'.gz' if gz else ''}"
    assert data.source == str(images_file) and data.files[0] == images_file
    assert (data.dataset, data.split) == (name, split)


def test_emnist_label_range(tmp_path: Path) -> None:
    images = _images(3, (28, 28), seed=2)
    _write_idx_split(tmp_path / "emnist", "emnist-letters-test", images, np.array([1, 26, 0]), gz=True)
    assert "label 0 is outside 1..26" in _error(load_split, "emnist_letters", "test", tmp_path)
    _write_idx_split(tmp_path / "emnist", "emnist-letters-test", images, np.array([1, 26, 27]), gz=True)
    assert "label 27 is outside 1..26" in _error(load_split, "emnist_letters", "test", tmp_path)
    check_labels(np.array([1, 26], np.uint8), "x", n_classes=27, first=1)
    with pytest.raises(FevaeError, match="label 10 is outside 0..9"):
        check_labels(np.array([0, 10], np.uint8), "x")


def test_idx_image_size_checked_against_the_registry(tmp_path: Path) -> None:
    _write_idx_split(tmp_path / "kmnist", "t10k", _images(4, (32, 32), seed=3), np.arange(4), gz=False)
    message = _error(load_split, "kmnist", "test", tmp_path)
    assert "32×32" in message and "Kuzushiji-MNIST images are 28×28" in message


# ------------------------------------------------------------------------------- CIFAR-10
def _cifar_images(n: int, seed: int) -> np.ndarray:
    """Random ``[n, 32, 32, 3]`` images; image 0 has a known pixel per channel (orientation)."""
    images = _images(n, (32, 32, 3), seed)
    images[0] = 0
    images[0, 0, 1, 0] = 200  # red at row 0, column 1
    images[0, 1, 0, 1] = 100  # green at row 1, column 0
    images[0, 2, 3, 2] = 50   # blue at row 2, column 3
    return images


def _planes(images: np.ndarray) -> np.ndarray:
    """``[N, 32, 32, 3]`` → CIFAR's rows of 3072 bytes: the R plane, then G, then B."""
    return images.transpose(0, 3, 1, 2).reshape(len(images), 3072)


def _write_cifar_bin(folder: Path, name: str, images: np.ndarray, labels: np.ndarray) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    records = np.concatenate([labels.astype(np.uint8)[:, None], _planes(images)], axis=1)
    (folder / name).write_bytes(records.tobytes())
    return folder / name


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Writes like Python 2's cPickle did for the original CIFAR-10 files: every str/bytes as a
    byte string (BINSTRING), numpy's helper as ``numpy.core.multiarray._reconstruct``."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_py2_string(self, obj: str | bytes) -> None:
        data = obj if isinstance(obj, bytes) else obj.encode("latin1")
        if len(data) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(data)) + data)
        self.memoize(obj)

    dispatch[bytes] = save_py2_string
    dispatch[str] = save_py2_string

    def save_global(self, obj, name=None) -> None:
        module = obj.__module__.replace("numpy._core", "numpy.core")
        self.write(pickle.GLOBAL + f"{module}\n{name or obj.__qualname__}\n".encode())
        self.memoize(obj)


def _write_cifar_py(folder: Path, name: str, images: np.ndarray, labels: np.ndarray, py2: bool = False) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    batch = {b"batch_label": b"training batch 1 of 5", b"labels": [int(v) for v in labels],
             b"data": np.ascontiguousarray(_planes(images)), b"filenames": [f"img_{i}.png".encode() for i in range(len(labels))]}
    with open(folder / name, "wb") as f:
        if py2:
            Py2Pickler(f, protocol=2).dump({k.decode(): v for k, v in batch.items()})
        else:
            pickle.dump(batch, f, protocol=2)
    return folder / name


def _write_cifar(root: Path, version: str, seed: int = 0, n: int = 3) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """All CIFAR-10 batches (``n`` images each) below ``root`` in ``version``: bin, py or py2."""
    folder = root / ("cifar-10-batches-bin" if version == "bin" else "cifar-10-batches-py")
    written: dict[str, list[tuple[np.ndarray, np.ndarray]]] = {"train": [], "test": []}
    for i, batch in enumerate([f"data_batch_{k}" for k in range(1, 6)] + ["test_batch"]):
        images, labels = _cifar_images(n, seed + i), (np.arange(n) + i) % 10
        if version == "bin":
            _write_cifar_bin(folder, f"{batch}.bin", images, labels)
        else:
            _write_cifar_py(folder, batch, images, labels, py2=version == "py2")
        written["test" if batch == "test_batch" else "train"].append((images, labels))
    return {split: (np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts]))
            for split, parts in written.items()}


@pytest.mark.parametrize("below", ["", "cifar10"])
@pytest.mark.parametrize("version", ["bin", "py", "py2"])
def test_cifar10(tmp_path: Path, version: str, below: str) -> None:
    root = tmp_path / below if below else tmp_path
    written = _write_cifar(root, version)
    for split, n in (("train", 15), ("test", 3)):
        data = load_split("cifar10", split, data_dir=tmp_path)
        images, labels = written[split]
        assert data.images.dtype == np.uint8 and data.images.shape == (n, 32, 32, 3)
        assert data.labels.dtype == np.int64 and data.labels.tolist() == labels.tolist()
        np.testing.assert_array_equal(data.images, images)
        assert data.source == str(root / ("cifar-10-batches-bin" if version == "bin" else "cifar-10-batches-py"))
    first = load_split("cifar10", "test", data_dir=tmp_path).images[0]
    assert (first[0, 1, 0], first[1, 0, 1], first[2, 3, 2], int(first.sum())) == (200, 100, 50, 350)


def test_cifar_binary_preferred_and_data_dir_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_cifar(tmp_path / "mine", "py", seed=0)
    binary = _write_cifar(tmp_path / "mine", "bin", seed=10)
    data = load_split("cifar10", "test", data_dir=tmp_path / "mine")
    assert data.source == str(tmp_path / "mine/cifar-10-batches-bin")
    np.testing.assert_array_equal(data.images, binary["test"][0])
    monkeypatch.setattr(discovery, "SYSTEM_DIRS", [tmp_path / "mine"])
    _write_cifar(tmp_path / "other", "py", seed=20)
    assert load_split("cifar10", "test", data_dir=tmp_path / "other").source == str(tmp_path / "other/cifar-10-batches-py")
    assert load_split("cifar10", "test").source == str(tmp_path / "mine/cifar-10-batches-bin")


def test_truncated_or_broken_cifar_bin(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "bin")
    batch = tmp_path / "cifar-10-batches-bin/test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    message = _error(load_split, "cifar10", "test", tmp_path)
    assert str(batch) in message and "truncated" in message and "3073-byte records" in message
    batch.write_bytes(b"")
    assert "empty" in _error(load_split, "cifar10", "test", tmp_path)
    _write_cifar_bin(batch.parent, batch.name, _cifar_images(2, 0), np.array([3, 10]))
    assert "label 10 is outside 0..9" in _error(load_split, "cifar10", "test", tmp_path)


def test_incomplete_cifar_folder_is_named(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "bin")
    for k in (2, 5):
        (tmp_path / f"cifar-10-batches-bin/data_batch_{k}.bin").unlink()
    assert load_split("cifar10", "test", tmp_path).images.shape == (3, 32, 32, 3)  # the test split is whole
    message = _error(load_split, "cifar10", "train", tmp_path)
    assert "holds only 3 of the 5 files" in message and "data_batch_2.bin, data_batch_5.bin" in message


class _Exploit:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


class _EncodeRot13:
    def __reduce__(self):
        import codecs

        return (codecs.encode, ("data", "rot13"))


@pytest.mark.parametrize("payload", ["os.system", "object-array", "ndarray-subclass", "rot13"])
def test_malicious_cifar_pickle_is_refused(tmp_path: Path, payload: str) -> None:
    marker = tmp_path / "pwned_x"
    folder = tmp_path / "cifar-10-batches-py"
    _write_cifar(tmp_path, "py")
    evil = {"os.system": lambda: _Exploit(marker), "object-array": lambda: np.array([print], dtype=object),
            "ndarray-subclass": lambda: np.zeros((1, 3072), np.uint8).view(np.recarray), "rot13": _EncodeRot13}[payload]()
    with open(folder / "test_batch", "wb") as f:
        pickle.dump({b"data": evil, b"labels": [1]}, f, protocol=2)
    message = _error(load_split, "cifar10", "test", tmp_path)
    assert str(folder / "test_batch") in message
    assert "holds a pickled object other than arrays" in message and "not loaded" in message
    assert not marker.exists()
    with pytest.raises(FevaeError):
        load_array_pickle(folder / "test_batch")
    assert not marker.exists()


def test_broken_cifar_pickles(tmp_path: Path) -> None:
    _write_cifar(tmp_path, "py")
    batch = tmp_path / "cifar-10-batches-py/test_batch"
    batch.write_bytes(batch.read_bytes()[:200])
    assert "not a readable CIFAR-10 python batch" in _error(load_split, "cifar10", "test", tmp_path)
    for content, word in (([1, 2], "list"), ({b"labels": [1]}, "keys"), ({b"data": np.zeros((1, 5), np.uint8), b"labels": [1]}, "3072"),
                          ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "2 images but 1 labels")):
        batch.write_bytes(pickle.dumps(content, protocol=2))
        assert word in _error(load_split, "cifar10", "test", tmp_path)


# ------------------------------------------------------------------------------------ SVHN
def _write_svhn(path: Path, images: np.ndarray, labels: np.ndarray) -> Path:
    from scipy.io import savemat

    path.parent.mkdir(parents=True, exist_ok=True)
    savemat(str(path), {"X": np.ascontiguousarray(images.transpose(1, 2, 3, 0)), "y": labels.astype(np.uint8)[:, None]})
    return path


@pytest.mark.parametrize("below", ["", "svhn"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_svhn(tmp_path: Path, below: str, split: str) -> None:
    images = _cifar_images(7, seed=4)
    raw = np.array([10, 1, 2, 3, 9, 10, 5])
    path = _write_svhn((tmp_path / below if below else tmp_path) / f"{split}_32x32.mat", images, raw)
    data = load_split("svhn", split, data_dir=tmp_path)
    assert data.images.dtype == np.uint8 and data.images.shape == (7, 32, 32, 3) and data.images.flags.c_contiguous
    assert data.labels.dtype == np.int64 and data.labels.tolist() == [0, 1, 2, 3, 9, 0, 5]
    np.testing.assert_array_equal(data.images, images)
    assert (data.images[0, 0, 1, 0], data.images[0, 1, 0, 1], data.images[0, 2, 3, 2]) == (200, 100, 50)
    assert data.source == str(path)


def test_broken_svhn(tmp_path: Path) -> None:
    path = _write_svhn(tmp_path / "test_32x32.mat", _cifar_images(2, seed=5), np.array([11, 1]))
    assert "label 11 is outside 1..10" in _error(load_split, "svhn", "test", tmp_path)
    path.write_bytes(b"not a mat file at all" * 10)
    assert "not a readable SVHN .mat file" in _error(load_split, "svhn", "test", tmp_path)
    from scipy.io import savemat

    savemat(str(path), {"X": np.zeros((28, 28, 1, 2), np.uint8), "y": np.ones((2, 1), np.uint8)})
    assert "not uint8 [32, 32, 3, N]" in _error(load_split, "svhn", "test", tmp_path)


# --------------------------------------------------------------------------- search, errors
def test_missing_split_names_every_folder_and_the_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(discovery, "SYSTEM_DIRS", [tmp_path / "system"])
    data_dir = make_data_dir(tmp_path / "d")  # FashionMNIST + MNIST only
    message = _error(load_split, "cifar10", "train", data_dir)
    what, fix = message.split(" — ")
    assert what.startswith("cifar10/train (") and "not found" in what
    for root in (data_dir, tmp_path / "system"):
        for sub in ("cifar-10-batches-bin", "cifar10/cifar-10-batches-bin", "cifar-10-batches-py",
                    "cifar10/cifar-10-batches-py"):
            assert str(root / sub) in what
    assert f"{data_dir}/cifar-10-batches-bin/" in fix and "paths.data_dir=" in fix and "FEVAE_DATA_DIR" in fix
    assert "data.download=true" in fix and "apt-get" not in fix
    svhn = _error(load_split, "svhn", "test", data_dir)
    assert f"looked in: {data_dir}, {data_dir / 'svhn'}, {tmp_path / 'system'}, {tmp_path / 'system/svhn'}" in svhn
    assert f"{data_dir}/test_32x32.mat" in svhn
    emnist = _error(load_split, "emnist_letters", "test", None)
    assert "emnist-letters-test-images-idx3-ubyte[.gz]" in emnist and str(tmp_path / "system/EMNIST/raw") in emnist
    assert "paths.data_dir=<folder>" in emnist


def test_runs_need_only_their_own_datasets(tmp_path: Path) -> None:
    fashion = make_data_dir(tmp_path / "fashion")  # no CIFAR-10: a default run works
    assert set(locate_data(fashion)) == {"fashionmnist/train", "fashionmnist/test", "mnist/test"}
    cifar = tmp_path / "cifar"
    _write_cifar(cifar, "bin")  # no FashionMNIST/MNIST: a CIFAR-10 run works
    files = locate_data(cifar, datasets=["cifar10"])
    assert set(files.locations) == {"cifar10/train", "cifar10/test"} and len(files) == 0
    assert load_split("cifar10", "train", cifar).images.shape == (15, 32, 32, 3)
    with pytest.raises(FevaeError, match="mnist/test"):
        locate_data(cifar, datasets=["cifar10", "mnist/test"])
    files = locate_data(fashion, datasets=["mnist/test"])
    assert list(files) == ["mnist/test"] and files["mnist/test"][0].parent == fashion / "mnist"


# --------------------------------------------------------------------------------- download
class FakeDownloads:
    """Stands in for torchvision's dataset classes: records calls, writes files like theirs."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[tuple[str, str, dict]] = []
        self.fail = fail

    def cls(self, name: str):
        def download(root: str, **kwargs):
            self.calls.append((name, root, kwargs))
            if self.fail:
                raise OSError("network unreachable\n(no route)")
            assert kwargs["download"] is True
            root_path = Path(root)
            if name == "CIFAR10":
                _write_cifar(root_path, "py")
            elif name == "SVHN":
                _write_svhn(root_path / f"{kwargs['split']}_32x32.mat", _cifar_images(4, 1), np.array([1, 2, 10, 3]))
            elif name == "EMNIST":
                assert kwargs["split"] == "letters"
                for split in ("train", "test"):
                    _write_idx_split(root_path / "EMNIST/raw", f"emnist-letters-{split}", _images(5, (28, 28), 2),
                                     np.arange(1, 6), gz=False)
            else:
                folder = root_path / f"{name}/raw"
                for prefix in ("train", "t10k"):
                    _write_idx_split(folder, prefix, _images(10, (28, 28), 3), np.arange(10), gz=False)
        return download

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("FashionMNIST", "MNIST", "KMNIST", "EMNIST", "CIFAR10", "SVHN"):
            monkeypatch.setattr(f"torchvision.datasets.{name}", self.cls(name))


@pytest.mark.parametrize("name, split, cls, kwargs", [
    ("cifar10", "train", "CIFAR10", {"train": True}),
    ("svhn", "test", "SVHN", {"split": "test"}),
    ("emnist_letters", "train", "EMNIST", {"split": "letters", "train": True}),
    ("kmnist", "test", "KMNIST", {"train": False}),
])
def test_download_only_on_request(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, name: str, split: str,
                                  cls: str, kwargs: dict) -> None:
    fake = FakeDownloads()
    fake.install(monkeypatch)
    dl, data_dir = tmp_path / "dl", tmp_path / "data"
    data_dir.mkdir()
    message = _error(load_split, name, split, data_dir, download_dir=dl)  # download=False
    assert fake.calls == [] and not dl.exists() and "not found" in message
    data = load_split(name, split, data_dir=data_dir, download=True, download_dir=dl)
    assert fake.calls == [(cls, str(dl), {**kwargs, "download": True})]
    assert data.source.startswith(str(dl)) and len(data) > 0
    # already downloaded: read from download_dir without calling torchvision again
    assert load_split(name, split, data_dir=data_dir, download=True, download_dir=dl).source == data.source
    assert len(fake.calls) == 1


def test_no_download_when_found(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = FakeDownloads()
    fake.install(monkeypatch)
    _write_cifar(tmp_path / "data", "bin")
    assert load_split("cifar10", "test", tmp_path / "data", download=True, download_dir=tmp_path / "dl").images.shape[0] == 3
    assert fake.calls == [] and not (tmp_path / "dl").exists()


def test_download_failure_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    FakeDownloads(fail=True).install(monkeypatch)
    message = _error(load_split, "cifar10", "test", None, download=True, download_dir=tmp_path / "dl")
    assert "cifar10/test" in message and message.count(f"{tmp_path / 'dl/cifar-10-batches-bin'},") == 1
    assert f"download of cifar10 (test) into {tmp_path / 'dl'} failed (OSError: network unreachable (no route))" in message
    assert "download folder" in _error(load_split, "svhn", "test", None, download=True, download_dir=None)


# ----------------------------------------------------------------------------------- doctor
def test_doctor_lists_every_dataset(tmp_path: Path) -> None:
    data_dir = make_data_dir(tmp_path / "data")
    _write_cifar(data_dir, "bin", n=10)
    lines, ok = run_doctor(data_dir)
    text = "\n".join(lines)
    assert ok, text
    for name in DATASET_INFO:
        for split in ("train", "test"):
            assert any(line.startswith(f"{name}/{split}: ") for line in lines), (name, split)
    assert "cifar10/test: ok — 10 images 32x32x3, pixels 0..255, labels 0..9 (all 10 classes)" in text
    assert "kmnist/train: MISSING (optional) — looked in: " in text and "svhn/test: MISSING (optional)" in text
    assert text.endswith("result: ok")
    batch = data_dir / "cifar-10-batches-bin/test_batch.bin"
    batch.write_bytes(batch.read_bytes()[:-1])
    lines, ok = run_doctor(data_dir)
    assert ok and any(line.startswith("cifar10/test: BROKEN (optional)") and "truncated" in line for line in lines)
    (data_dir / "mnist/t10k-images-idx3-ubyte.gz").unlink()
    lines, ok = run_doctor(data_dir)
    assert not ok and lines[-1].startswith("result: PROBLEMS (mnist/test missing)")

