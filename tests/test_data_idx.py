"""IDX reading and writing: valid files and every kind of broken one."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest

from fevae.data.idx import read_idx, read_images_and_labels, write_idx
from fevae.errors import FevaeError
from helpers import labelled_images


def _error(path_or_call, *args) -> str:
    """The one-line message of the FevaeError raised by ``read_idx(path)`` (or ``call(*args)``)."""
    call = path_or_call if callable(path_or_call) else read_idx
    args = args if callable(path_or_call) else (path_or_call,)
    with pytest.raises(FevaeError) as info:
        call(*args)
    message = str(info.value)
    assert "\n" not in message and " — " in message
    return message


@pytest.mark.parametrize("name", ["x-images-idx3-ubyte", "x-images-idx3-ubyte.gz"])
def test_roundtrip_images_and_labels(tmp_path: Path, name: str) -> None:
    images, labels = labelled_images(20, seed=1)
    write_idx(tmp_path / name, images)
    write_idx(tmp_path / f"labels-{name}", labels)
    assert (tmp_path / name).read_bytes().startswith(b"\x1f\x8b") == name.endswith(".gz")
    got_images, got_labels = read_images_and_labels(tmp_path / name, tmp_path / f"labels-{name}")
    assert got_images.dtype == np.uint8 and got_images.shape == (20, 28, 28)
    assert got_labels.dtype == np.uint8 and got_labels.shape == (20,)
    np.testing.assert_array_equal(got_images, images)
    np.testing.assert_array_equal(got_labels, labels)
    assert got_images.flags.writeable
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp files left


def test_gzip_decided_by_magic_bytes_not_extension(tmp_path: Path) -> None:
    images, _ = labelled_images(10, seed=2)
    write_idx(tmp_path / "gz-without-suffix", images, gz=True)
    write_idx(tmp_path / "plain-with-suffix.gz", images, gz=False)
    np.testing.assert_array_equal(read_idx(tmp_path / "gz-without-suffix"), images)
    np.testing.assert_array_equal(read_idx(tmp_path / "plain-with-suffix.gz"), images)


def test_idx_header_is_standard(tmp_path: Path) -> None:
    write_idx(tmp_path / "l", np.array([3, 1, 4], dtype=np.uint8))
    assert (tmp_path / "l").read_bytes() == b"\x00\x00\x08\x01\x00\x00\x00\x03\x03\x01\x04"


@pytest.mark.parametrize("delta, word", [(-5, "truncated"), (7, "too long")])
def test_wrong_payload_size(tmp_path: Path, delta: int, word: str) -> None:
    images, _ = labelled_images(10, seed=3)
    path = tmp_path / "img"
    write_idx(path, images)
    data = path.read_bytes()
    path.write_bytes(data[:delta] if delta < 0 else data + b"\x00" * delta)
    message = _error(path)
    assert word in message and str(path) in message
    assert "7840 bytes" in message and f"{7840 + delta} bytes" in message


def test_truncated_header_and_empty_file(tmp_path: Path) -> None:
    (tmp_path / "empty").write_bytes(b"")
    assert "too short" in _error(tmp_path / "empty")
    (tmp_path / "header").write_bytes(b"\x00\x00\x08\x03\x00\x00")
    assert "header" in _error(tmp_path / "header")


def test_wrong_magic(tmp_path: Path) -> None:
    (tmp_path / "x").write_bytes(b"P5\n28 28\n255\n" + bytes(784))
    assert "not an IDX file" in _error(tmp_path / "x")


def test_wrong_dtype_code(tmp_path: Path) -> None:
    path = tmp_path / "floats"
    path.write_bytes(b"\x00\x00\x0d\x01" + (2).to_bytes(4, "big") + np.zeros(2, ">f4").tobytes())
    message = _error(path)
    assert "0x0D" in message and "float" in message and "0x08" in message


def test_wrong_ndim_and_image_size(tmp_path: Path) -> None:
    (tmp_path / "2d").write_bytes(b"\x00\x00\x08\x02" + (1).to_bytes(4, "big") * 2 + b"\x00")
    assert "2 dimensions" in _error(tmp_path / "2d")
    write_idx(tmp_path / "big", np.zeros((2, 32, 30), np.uint8))
    assert read_idx(tmp_path / "big").shape == (2, 32, 30)  # any H×W is an IDX image file
    write_idx(tmp_path / "labels", np.zeros(2, np.uint8))
    assert "32×30" in _error(read_images_and_labels, tmp_path / "big", tmp_path / "labels")  # 28×28 by default
    images, _ = read_images_and_labels(tmp_path / "big", tmp_path / "labels", image_size=None)
    assert images.shape == (2, 32, 30)
    (tmp_path / "empty-size").write_bytes(b"\x00\x00\x08\x03" + (1).to_bytes(4, "big") + (0).to_bytes(4, "big") * 2)
    assert "0×0" in _error(tmp_path / "empty-size")


def test_corrupt_gzip(tmp_path: Path) -> None:
    images, _ = labelled_images(50, seed=4)
    data = gzip.compress(images.tobytes())
    path = tmp_path / "broken.gz"
    path.write_bytes(data[: len(data) // 2])
    assert "corrupt" in _error(path) and str(path) in _error(path)
    garbled = bytearray(data)
    garbled[20:60] = bytes(40)
    path.write_bytes(bytes(garbled))
    assert "gzip" in _error(path)


def test_missing_file(tmp_path: Path) -> None:
    assert "does not exist" in _error(tmp_path / "nope.gz")


def test_count_mismatch_names_both_files(tmp_path: Path) -> None:
    images, labels = labelled_images(12, seed=5)
    write_idx(tmp_path / "i.gz", images)
    write_idx(tmp_path / "l.gz", labels[:10])
    message = _error(read_images_and_labels, tmp_path / "i.gz", tmp_path / "l.gz")
    assert str(tmp_path / "i.gz") in message and str(tmp_path / "l.gz") in message
    assert "12 images" in message and "10 labels" in message


def test_swapped_images_and_labels(tmp_path: Path) -> None:
    images, labels = labelled_images(10, seed=6)
    write_idx(tmp_path / "i", images)
    write_idx(tmp_path / "l", labels)
    assert "swapped" in _error(read_images_and_labels, tmp_path / "l", tmp_path / "i")


def test_write_refuses_non_uint8_and_bad_ndim(tmp_path: Path) -> None:
    assert "uint8" in _error(write_idx, tmp_path / "f", np.zeros((2, 28, 28), np.float32))
    assert "1-D" in _error(write_idx, tmp_path / "f", np.zeros((2, 28), np.uint8))
    assert not (tmp_path / "f").exists()
