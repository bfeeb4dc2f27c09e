"""Reading and writing IDX files (the MNIST / FashionMNIST format), plain or gzip-compressed.

Only what these datasets use is supported: unsigned bytes (type code 0x08), labels ``[N]``
and images ``[N, H, W]`` of any size (MNIST-like sets are 28×28; :func:`read_images_and_labels`
checks that size unless told otherwise). Every problem with a file is a :class:`FevaeError` naming it.
"""

from __future__ import annotations

import gzip
import os
import zlib
from pathlib import Path

import numpy as np

from fevae.errors import FevaeError, require
from fevae.limits import check_size
from fevae.utils.io import write_bytes_atomic

#: First two bytes of every gzip stream.
GZIP_MAGIC = b"\x1f\x8b"
#: IDX type code of unsigned bytes, the only one supported.
UBYTE = 0x08
#: Image height and width of MNIST-like data (the default size :func:`read_images_and_labels` expects).
IMAGE_SIZE = 28

_IDX_TYPES = {0x08: "unsigned byte", 0x09: "signed byte", 0x0B: "short", 0x0C: "int",
              0x0D: "float", 0x0E: "double"}
_FIX_FILE = "re-download or re-extract this file (see `python -m fevae.data` for where data is read from)"


def _read_bytes(path: Path) -> bytes:
    """The file's content, decompressed when it starts with the gzip magic bytes, read no further than
    its header declares: the header is read first and its dimensions checked against the input limits
    (:mod:`fevae.limits`), then at most the declared bytes and one more (so a longer stream is "too long",
    never decompressed to its end). A pipe or device is refused before it is opened."""

    require(path.is_file(), f"IDX file {path} does not exist or is not a file", _FIX_FILE)  # os.stat: no pipe or device
    try:
        with path.open("rb") as raw:
            gz = raw.read(2) == GZIP_MAGIC
            raw.seek(0)
            stream = gzip.GzipFile(fileobj=raw, mode="rb") if gz else raw
            head = stream.read(4)
            if len(head) == 4 and head[:3] == bytes([0, 0, UBYTE]) and head[3] in (1, 3):
                head += stream.read(4 * head[3])
                if len(head) == 4 + 4 * head[3]:
                    dims = [int.from_bytes(head[4 + 4 * i: 8 + 4 * i], "big") for i in range(head[3])]
                    check_size(f"IDX file {path}", dims[0], int(np.prod(dims[1:], dtype=np.int64)))
                    expected = int(np.prod(dims, dtype=np.int64))
                    payload = stream.read(expected + 1)
                    if len(payload) > expected:  # never read to its end: the file's size, or for gzip only that it is longer
                        held = f"{path.stat().st_size - len(head)} bytes" if not gz else "more (its gzip stream goes on)"
                        raise FevaeError(f"IDX file {path} is too long: its header declares {dims[0]} items ({expected} bytes) "
                                         f"but it holds {held} of data", _FIX_FILE)
                    return head + payload
            return head  # not a uint8 IDX header: _parse names what is wrong with it
    except (EOFError, zlib.error, gzip.BadGzipFile) as err:
        raise FevaeError(f"IDX file {path} is a corrupt or truncated gzip file ({err})", _FIX_FILE) from err
    except OSError as err:
        raise FevaeError(f"cannot read IDX file {path}: {err.strerror or err}",
                         "check the file's permissions") from err


def _parse(data: bytes, path: Path) -> np.ndarray:
    """Validate an uncompressed IDX buffer and return its array (writable, uint8)."""
    require(len(data) >= 4, f"IDX file {path} is too short ({len(data)} bytes) to hold an IDX header",
            _FIX_FILE)
    require(data[0] == 0 and data[1] == 0,
            f"{path} is not an IDX file (magic bytes {data[:4].hex()}, expected 0000 08 01/03)", _FIX_FILE)
    code, ndim = data[2], data[3]
    require(code == UBYTE,
            f"IDX file {path} holds {_IDX_TYPES.get(code, 'unknown')} values (type code 0x{code:02X}); "
            "only unsigned bytes (0x08) are supported",
            "use the original MNIST/FashionMNIST files or write them with fevae.data.write_idx")
    require(ndim in (1, 3), f"IDX file {path} has {ndim} dimensions; expected 1 (labels) or 3 (images)",
            _FIX_FILE)
    header = 4 + 4 * ndim
    require(len(data) >= header, f"IDX file {path} ends inside its header ({len(data)} of {header} bytes)",
            _FIX_FILE)
    dims = tuple(int.from_bytes(data[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim))
    if ndim == 3:
        require(dims[1] > 0 and dims[2] > 0, f"IDX file {path} holds {dims[1]}×{dims[2]} images (an empty size)",
                _FIX_FILE)
    expected = int(np.prod(dims, dtype=np.int64))
    payload = len(data) - header
    require(payload == expected,
            f"IDX file {path} is {'truncated' if payload < expected else 'too long'}: its header declares "
            f"{dims[0]} items ({expected} bytes) but it holds {payload} bytes of data", _FIX_FILE)
    return np.frombuffer(bytearray(data[header:]), dtype=np.uint8).reshape(dims)


def read_idx(path: str | os.PathLike[str], ndim: int | None = None) -> np.ndarray:
    """Read an IDX file (gzip detected from its magic bytes) as uint8 ``[N, H, W]`` or ``[N]``.

    ``ndim`` (1 or 3), when given, is required of the file (labels or images).
    """
    path = Path(path)
    array = _parse(_read_bytes(path), path)
    if ndim is not None:
        kind = {1: "labels ([N])", 3: "images ([N, H, W])"}[ndim]
        require(array.ndim == ndim, f"IDX file {path} has {array.ndim} dimensions but should hold {kind}",
                "check that image and label files are not swapped")
    return array


def idx_bytes(array: np.ndarray) -> bytes:
    """The uncompressed IDX encoding of a uint8 array (header + row-major data)."""
    array = np.asarray(array)
    require(array.dtype == np.uint8, f"IDX arrays must be uint8, got {array.dtype}",
            "convert with array.astype(np.uint8) after clipping to 0..255")
    require(array.ndim in (1, 3), f"IDX arrays must be 1-D (labels) or 3-D (images), got shape {array.shape}",
            "pass labels as [N] and images as [N, H, W]")
    header = bytes([0, 0, UBYTE, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray, gz: bool | None = None) -> Path:
    """Write a uint8 array as an IDX file, atomically; gzip it if ``gz`` (default: ``.gz`` suffix)."""
    path = Path(path)
    data = idx_bytes(array)
    if gz is None:
        gz = path.suffix == ".gz"
    if gz:
        data = gzip.compress(data, mtime=0)
    return write_bytes_atomic(path, data)


#: Class labels of MNIST and FashionMNIST (0..9); the default of :func:`check_labels`.
N_CLASSES = 10
#: How to fix a split whose content is wrong (shared with the data doctor).
FIX_CONTENT = "replace the file with an original copy (see `python -m fevae.data`)"


def check_labels(labels: np.ndarray, labels_path: str | os.PathLike[str], n_classes: int = N_CLASSES,
                 first: int = 0) -> None:
    """Every label lies in ``first..n_classes-1`` (default 0..9; EMNIST letters: ``n_classes=27, first=1``
    for 1..26). A label file with other values is broken, for training and the doctor alike."""
    if len(labels):
        lo, hi = int(labels.min()), int(labels.max())
        bad = hi if hi >= n_classes else lo if lo < first else None
        require(bad is None, f"{labels_path}: label {bad} is outside {first}..{n_classes - 1}", FIX_CONTENT)


def read_images_and_labels(images_path: str | os.PathLike[str], labels_path: str | os.PathLike[str],
                           n_classes: int = N_CLASSES, image_size: tuple[int, int] | None = (IMAGE_SIZE, IMAGE_SIZE),
                           first_label: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Read a pair of IDX files: images ``[N, H, W]`` and labels ``[N]`` of the same ``N``.

    Labels must lie in ``first_label..n_classes-1`` (default 0..9, see :func:`check_labels`); the
    images must be ``image_size`` (default 28×28; ``None`` accepts any size).
    """
    images = read_idx(images_path, ndim=3)
    if image_size is not None:
        height, width = image_size
        require(images.shape[1:] == (height, width),
                f"IDX file {images_path} holds {images.shape[1]}×{images.shape[2]} images; expected {height}×{width}",
                f"give {height}×{width} images, the size of this dataset")
    labels = read_idx(labels_path, ndim=1)
    require(len(images) == len(labels),
            f"{images_path} holds {len(images)} images but {labels_path} holds {len(labels)} labels",
            "use image and label files of the same split (train-* with train-*, t10k-* with t10k-*)")
    check_labels(labels, labels_path, n_classes, first_label)
    return images, labels
