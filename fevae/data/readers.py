"""Readers of the colour datasets' on-disk formats: CIFAR-10 (binary and python versions) and SVHN.

IDX files (the MNIST family) are read by :mod:`fevae.data.idx`. Every reader here returns
``(images, labels)``: uint8 images ``[N, 32, 32, 3]`` (channels last, rows top to bottom) and
int64 labels ``[N]``; every problem with a file is one :class:`FevaeError` naming it.

* CIFAR-10 binary version (``cifar-10-batches-bin/*.bin``): records of 1 label byte then 3072
  pixel bytes, the 32×32 red plane, then green, then blue (each row-major).
* CIFAR-10 python version (``cifar-10-batches-py/``, torchvision's download): pickled dicts
  ``{b"data": uint8 [N, 3072] (same layout), b"labels": [N ints], ...}``. Pickles can run code when
  loaded, so they are read by :class:`ArrayUnpickler`, which refuses every object but plain
  containers, bytes, numbers and numeric numpy arrays.
* SVHN (``train_32x32.mat``, ``test_32x32.mat``): MATLAB v5 files read with :func:`scipy.io.loadmat`,
  ``X`` uint8 ``[32, 32, 3, N]`` and ``y`` ``[N, 1]`` in 1..10, where 10 is the digit 0 (mapped to 0).
"""

from __future__ import annotations

import io
import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fevae.data.idx import FIX_CONTENT
from fevae.errors import FevaeError, require

#: CIFAR images: 3 planes of 32×32 pixels.
CIFAR_SHAPE = (3, 32, 32)
CIFAR_PIXELS = 3 * 32 * 32
#: Bytes of one record of the CIFAR-10 binary version: the label, then the pixels.
CIFAR_RECORD = 1 + CIFAR_PIXELS
CIFAR_CLASSES = 10

_FIX_FILE = "re-download or re-extract this file (see `python -m fevae.data` for where data is read from)"
_FIX_PICKLE = ("use the CIFAR-10 binary version (cifar-10-batches-bin/, which needs no unpickling) "
               "or re-download the python version from https://www.cs.toronto.edu/~kriz/cifar.html")


def _read(path: Path) -> bytes:
    require(path.is_file(), f"{path} does not exist or is not a file", _FIX_FILE)
    try:
        return path.read_bytes()
    except OSError as err:
        raise FevaeError(f"cannot read {path}: {err.strerror or err}", "check the file's permissions") from err


def _planes_to_hwc(pixels: np.ndarray) -> np.ndarray:
    """``[N, 3072]`` rows (R plane, G plane, B plane) → contiguous ``[N, 32, 32, 3]``."""
    return np.ascontiguousarray(pixels.reshape(-1, *CIFAR_SHAPE).transpose(0, 2, 3, 1))


def _check_cifar_labels(labels: np.ndarray, path: Path) -> None:
    if len(labels):
        lo, hi = int(labels.min()), int(labels.max())
        bad = lo if lo < 0 else hi if hi >= CIFAR_CLASSES else None
        require(bad is None, f"{path}: label {bad} is outside 0..{CIFAR_CLASSES - 1}", FIX_CONTENT)


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    if len(parts) == 1:
        return parts[0]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


# --------------------------------------------------------------------------- CIFAR-10 binary
def read_cifar_bin_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the CIFAR-10 binary version: images ``[N, 32, 32, 3]`` and labels ``[N]``."""
    path = Path(path)
    data = _read(path)
    require(len(data) > 0, f"CIFAR-10 file {path} is empty", _FIX_FILE)
    require(len(data) % CIFAR_RECORD == 0,
            f"CIFAR-10 file {path} is truncated or not a CIFAR-10 binary batch: its {len(data)} bytes are not a "
            f"whole number of {CIFAR_RECORD}-byte records (1 label byte + {CIFAR_PIXELS} pixel bytes)", _FIX_FILE)
    records = np.frombuffer(data, dtype=np.uint8).reshape(-1, CIFAR_RECORD)
    labels = records[:, 0].astype(np.int64)
    _check_cifar_labels(labels, path)
    return _planes_to_hwc(records[:, 1:]), labels


def read_cifar_bin(paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, np.ndarray]:
    """The batches ``paths`` of the CIFAR-10 binary version, concatenated in order."""
    return _concat([read_cifar_bin_file(p) for p in paths])


# --------------------------------------------------------------------------- CIFAR-10 python
class RefusedPickle(pickle.UnpicklingError):
    """A pickle references something other than :data:`ALLOWED_GLOBALS`, or calls one of them otherwise
    than numpy's own array pickles do."""


_NUMERIC_KINDS = "biuf"
#: numpy's array-unpickling helper (``numpy._core.multiarray._reconstruct`` in numpy 2), without
#: importing the deprecated ``numpy.core`` alias.
_NP_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(0))[0]


#: What ``numpy.ndarray`` loads as: a token only :func:`_reconstruct` accepts (the class itself,
#: called by a pickle, could allocate any amount of uninitialised memory).
_NDARRAY = object()


def _reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
    """numpy's ``_reconstruct`` as numpy's own pickles call it: an empty plain ndarray, then filled
    by its ``__setstate__`` (which checks the data against the shape)."""
    if subtype is not _NDARRAY or shape != (0,):
        raise RefusedPickle("numpy _reconstruct called otherwise than for a plain ndarray")
    return _NP_RECONSTRUCT(np.ndarray, (0,), _dtype(dtype))


def _dtype(spec: Any, align: Any = False, copy: Any = False) -> np.dtype:
    """``numpy.dtype`` of a plain numeric type code (``'u1'``, ``b'<i8'``; no objects, records or subarrays)."""
    if isinstance(spec, bytes):  # Python 2 pickles loaded with encoding="bytes"
        spec = spec.decode("ascii")
    if not isinstance(spec, str):
        raise RefusedPickle(f"numpy.dtype of {type(spec).__name__}, not of a type code")
    dtype = np.dtype(spec)
    if dtype.kind not in _NUMERIC_KINDS or dtype.fields is not None or dtype.shape != ():
        raise RefusedPickle(f"numpy.dtype {spec!r}, not a plain numeric type")
    return np.dtype(spec, bool(align), bool(copy))


def _latin1_encode(text: Any, encoding: Any = "utf-8", *_: Any) -> bytes:
    """``_codecs.encode`` as Python 3's protocol-2 pickles use it for ``bytes``: latin-1 only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise RefusedPickle("_codecs.encode otherwise than for latin-1 bytes")
    return text.encode("latin1")


#: The only globals a CIFAR-10 python batch may reference, and what they are loaded as. The
#: original files (Python 2, protocol 2) use the three numpy ones; files pickled by Python 3 at
#: protocol 2 also write every ``bytes`` object as ``_codecs.encode(str, "latin1")``.
ALLOWED_GLOBALS: dict[tuple[str, str], Any] = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _dtype,
    ("_codecs", "encode"): _latin1_encode,
}


class ArrayUnpickler(pickle.Unpickler):
    """An unpickler that builds only containers, bytes, str, numbers and numeric numpy arrays.

    Any other global (a class or function, e.g. ``os.system``) is refused before it is imported,
    so loading can neither import modules nor call anything but the functions of
    :data:`ALLOWED_GLOBALS` (which check their arguments). Persistent ids are refused too.
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise RefusedPickle(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise RefusedPickle("a persistent id")


def load_array_pickle(path: str | os.PathLike[str]) -> Any:
    """Unpickle ``path`` with :class:`ArrayUnpickler` (``encoding="bytes"``, as the Python 2 CIFAR
    files need); anything but arrays and plain data is a :class:`FevaeError` and is not loaded."""
    path = Path(path)
    data = _read(path)
    try:
        return ArrayUnpickler(io.BytesIO(data), encoding="bytes").load()
    except RefusedPickle as err:
        raise FevaeError(f"{path} holds a pickled object other than arrays ({err}); it is not loaded, since "
                         "unpickling it could run arbitrary code", _FIX_PICKLE) from None
    except Exception as err:  # noqa: BLE001 - a broken pickle fails in many ways (EOFError, ValueError, ...)
        reason = " ".join(str(err).split()) or "no detail"
        raise FevaeError(f"{path} is not a readable CIFAR-10 python batch ({type(err).__name__}: {reason})",
                         _FIX_FILE) from None


def read_cifar_py_file(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """One batch of the CIFAR-10 python version: images ``[N, 32, 32, 3]`` and labels ``[N]``."""
    path = Path(path)
    batch = load_array_pickle(path)
    what = "a dict with b'data' (uint8 [N, 3072]) and b'labels' ([N] ints)"
    require(isinstance(batch, dict), f"{path} holds a {type(batch).__name__}, not {what}", _FIX_FILE)
    batch = {k.decode("latin1") if isinstance(k, bytes) else k: v for k, v in batch.items()}
    require("data" in batch and "labels" in batch,
            f"{path} has the keys {sorted(map(str, batch))}, not {what}", _FIX_FILE)
    data, labels = batch["data"], batch["labels"]
    require(isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.ndim == 2
            and data.shape[1] == CIFAR_PIXELS,
            f"{path}: 'data' is {getattr(data, 'dtype', type(data).__name__)} {list(getattr(data, 'shape', []))}, "
            f"not uint8 [N, {CIFAR_PIXELS}]", _FIX_FILE)
    require(isinstance(labels, (list, tuple, np.ndarray))
            and all(isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in labels),
            f"{path}: 'labels' is not a list of integers", _FIX_FILE)
    labels = np.asarray(labels, dtype=np.int64).reshape(-1)
    require(len(labels) == len(data), f"{path} holds {len(data)} images but {len(labels)} labels", _FIX_FILE)
    _check_cifar_labels(labels, path)
    return _planes_to_hwc(data), labels


def read_cifar_py(paths: Sequence[str | os.PathLike[str]]) -> tuple[np.ndarray, np.ndarray]:
    """The batches ``paths`` of the CIFAR-10 python version, concatenated in order."""
    return _concat([read_cifar_py_file(p) for p in paths])


# ------------------------------------------------------------------------------------- SVHN
def read_svhn_mat(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray]:
    """An SVHN cropped-digits ``.mat`` file: images ``[N, 32, 32, 3]`` and labels ``[N]`` in 0..9."""
    path = Path(path)
    require(path.is_file(), f"{path} does not exist or is not a file", _FIX_FILE)
    try:
        from scipy.io import loadmat
    except ImportError as err:  # pragma: no cover - scipy is a dependency
        raise FevaeError(f"reading SVHN's {path} needs scipy ({err})", "pip install scipy") from err
    try:
        mat = loadmat(str(path), variable_names=("X", "y"))
    except NotImplementedError as err:  # MATLAB v7.3 (HDF5) files
        raise FevaeError(f"{path} is a MATLAB v7.3 file, which scipy cannot read ({err})",
                         "use the original SVHN train_32x32.mat / test_32x32.mat (MATLAB v5)") from None
    except Exception as err:  # noqa: BLE001 - scipy raises ValueError, TypeError, MatReadError, ...
        reason = " ".join(str(err).split()) or "no detail"
        raise FevaeError(f"{path} is not a readable SVHN .mat file ({type(err).__name__}: {reason})", _FIX_FILE) from None
    require("X" in mat and "y" in mat, f"{path} lacks the variables X and y of an SVHN file", _FIX_FILE)
    x, y = mat["X"], mat["y"]
    require(isinstance(x, np.ndarray) and x.dtype == np.uint8 and x.ndim == 4 and x.shape[:3] == (32, 32, 3),
            f"{path}: X is {getattr(x, 'dtype', type(x).__name__)} {list(getattr(x, 'shape', []))}, "
            "not uint8 [32, 32, 3, N]", _FIX_FILE)
    require(isinstance(y, np.ndarray) and y.dtype.kind in "iuf" and y.size == x.shape[3] and
            (y.ndim == 1 or (y.ndim == 2 and 1 in y.shape)),
            f"{path}: y has shape {list(getattr(y, 'shape', []))}, not [N, 1] with N = {x.shape[3]} images", _FIX_FILE)
    raw = y.reshape(-1)
    require(bool(np.all(raw == np.round(raw))), f"{path}: y holds non-integer labels", FIX_CONTENT)
    labels = raw.astype(np.int64)
    if len(labels):
        lo, hi = int(labels.min()), int(labels.max())
        bad = lo if lo < 1 else hi if hi > 10 else None
        require(bad is None, f"{path}: label {bad} is outside 1..10 (SVHN's 10 is the digit 0)", FIX_CONTENT)
    labels[labels == 10] = 0
    return np.ascontiguousarray(x.transpose(3, 0, 1, 2)), labels

