"""The data doctor: where each split of every registered dataset is read from, and whether its content looks right.

Only the default run's splits (:data:`~fevae.data.catalog.REQUIRED_KEYS`: FashionMNIST train and
test, MNIST test) decide the result; the other datasets are listed as found, missing or broken
without making it fail, and are never downloaded by the doctor.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from fevae.data.discovery import FIX, LoadedSplit, SplitLocation, read_split, search_data

from fevae.data.catalog import ALL_KEYS, DATASET_INFO, REQUIRED_KEYS
from fevae.data.idx import FIX_CONTENT, idx_bytes
from fevae.errors import FevaeError, require

#: MD5 of the *uncompressed* IDX files as published (the .gz files differ between mirrors).
KNOWN_MD5: dict[str, dict[str, str]] = {
    "fashionmnist/train": {"images": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
                           "labels": "9018921c3c673c538a1fc5bad174d6f9"},
    "fashionmnist/test": {"images": "8181f5470baa50b63fa0f6fddb340f0a",
                          "labels": "15d484375f8d13e6eb1aabb0c3f46965"},
    "mnist/test": {"images": "2646ac647ad5339dbf082846283269ea",
                   "labels": "27ae3e4e09519cfbb04c329615203637"},
}


def _md5_note(key: str, images: np.ndarray, labels: np.ndarray) -> str:
    """``md5 ok`` / ``md5 differs (...)`` against :data:`KNOWN_MD5` (information only)."""
    known = KNOWN_MD5.get(key)
    if known is None:
        return "md5 not checked (no reference)"
    actual = {"images": hashlib.md5(idx_bytes(images)).hexdigest(),
              "labels": hashlib.md5(idx_bytes(labels.astype(np.uint8))).hexdigest()}
    differs = [f"{part} {actual[part]} != {known[part]}" for part in known if actual[part] != known[part]]
    return "md5 ok" if not differs else f"md5 differs ({'; '.join(differs)})"


def check_loaded(key: str, data: LoadedSplit) -> str:
    """Check the content of a split read in memory; returns a summary, raises FevaeError if broken."""
    info = DATASET_INFO[key.split("/")[0]]
    images, labels, fix = data.images, data.labels, FIX_CONTENT
    require(len(images) > 0, f"{data.source} holds no images", fix)
    lo, hi = int(images.min()), int(images.max())
    require(hi > 0, f"{data.source}: every pixel is 0", fix)
    first, last = info.label_range
    classes = np.unique(labels)
    require(len(classes) == info.n_classes,
            f"{data.source}: only classes {classes.tolist()} of {first}..{last} are present", fix)
    size = f"{images.shape[1]}x{images.shape[2]}" + (f"x{images.shape[3]}" if images.ndim == 4 else "")
    return (f"{len(images)} images {size}, pixels {lo}..{hi}, labels {first}..{last} (all {info.n_classes} classes), "
            f"{_md5_note(key, images, labels)}")


def check_location(location: SplitLocation) -> str:
    """Read one located split and check its content; returns a summary, raises FevaeError if broken."""
    return check_loaded(location.key, read_split(location))


def check_split(key: str, images_path: os.PathLike[str] | str, labels_path: os.PathLike[str] | str) -> str:
    """Read one IDX split (``key`` as ``"mnist/test"``) and check its content; summary or FevaeError."""
    name, split = key.split("/")
    images_path, labels_path = Path(images_path), Path(labels_path)
    return check_location(SplitLocation(name, split, "idx", images_path.parent, (images_path, labels_path)))


def run_doctor(data_dir: str | os.PathLike[str] | None, download: bool = False,
               download_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], bool]:
    """Report every split of every registered dataset; ``ok`` is False when a required split
    (:data:`~fevae.data.catalog.REQUIRED_KEYS`) is missing or broken. ``download`` fetches only
    missing required splits. Raises FevaeError only for an invalid ``data_dir``.
    """
    optional = [k for k in ALL_KEYS if k not in REQUIRED_KEYS]
    found = search_data(data_dir, download=download, download_dir=download_dir, datasets=REQUIRED_KEYS,
                        optional=optional)
    lines = [f"data_dir: {data_dir if data_dir not in (None, '') else '(not set)'}"]
    problems: list[str] = []
    for key in ALL_KEYS:
        required = key in REQUIRED_KEYS
        need = "required" if required else "optional"
        location = found.locations.get(key)
        if location is None:
            problems += [f"{key} missing"] if required else []
            places = ", ".join(found.searched_for.get(key, [])) or "(nowhere)"
            lines.append(f"{key}: MISSING ({need}) — looked in: {places}")
            lines.extend(f"  note: {note}" for note in found.partial.get(key, []))
            continue
        try:
            lines.append(f"{key}: ok — {check_location(location)}")
        except FevaeError as err:
            problems += [f"{key} broken"] if required else []
            lines.append(f"{key}: BROKEN ({need}) — {err}")
        if location.format == "idx":
            lines.append(f"  images: {location.paths[0]}")
            lines.append(f"  labels: {location.paths[1]}")
        else:
            lines.append(f"  files: {', '.join(map(str, location.paths))}")
    lines.extend(f"note: {note}" for note in found.notes)
    lines.append(f"result: PROBLEMS ({', '.join(problems)}) — fix: {FIX}" if problems else "result: ok")
    return lines, not problems
