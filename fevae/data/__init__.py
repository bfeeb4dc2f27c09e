"""Data layer: IDX, CIFAR-10 and SVHN files, their discovery (the dataset registry), pixel transforms and the Lightning data module.

Attributes are imported lazily so that ``python -m fevae.data`` (the doctor) starts without
importing torch or Lightning.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "read_idx": "fevae.data.idx",
    "write_idx": "fevae.data.idx",
    "locate_data": "fevae.data.discovery",
    "load_split": "fevae.data.discovery",
    "DATASET_INFO": "fevae.data.discovery",
    "DatasetInfo": "fevae.data.discovery",
    "LoadedSplit": "fevae.data.discovery",
    "preprocess": "fevae.data.transforms",
    "salt_and_pepper": "fevae.data.transforms",
    "FevaeDataModule": "fevae.data.datamodule",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(_EXPORTS[name]), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
