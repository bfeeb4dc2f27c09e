"""The data doctor: where each split is read from and whether its content looks right."""

from __future__ import annotations

import hashlib
import os

import numpy as np

from fevae.data.discovery import DATASETS, FIX, search_data
from fevae.data.idx import FIX_CONTENT, check_labels, idx_bytes, read_images_and_labels
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
              "labels": hashlib.md5(idx_bytes(labels)).hexdigest()}
    differs = [f"{part} {actual[part]} != {known[part]}" for part in known if actual[part] != known[part]]
    return "md5 ok" if not differs else f"md5 differs ({'; '.join(differs)})"


def check_split(key: str, images_path: os.PathLike[str] | str, labels_path: os.PathLike[str] | str) -> str:
    """Read one split and check its content; returns a summary, raises FevaeError if broken."""
    images, labels = read_images_and_labels(images_path, labels_path)
    fix = FIX_CONTENT
    require(len(images) > 0, f"{images_path} holds no images", fix)
    lo, hi = int(images.min()), int(images.max())
    require(hi > 0, f"{images_path}: every pixel is 0", fix)
    check_labels(labels, labels_path)  # also checked whenever the data is read for training
    classes = np.unique(labels)
    require(len(classes) == 10, f"{labels_path}: only classes {classes.tolist()} of 0..9 are present", fix)
    return (f"{len(images)} images {images.shape[1]}x{images.shape[2]}, pixels {lo}..{hi}, "
            f"labels 0..9 (all 10 classes), {_md5_note(key, images, labels)}")


def run_doctor(data_dir: str | os.PathLike[str] | None, download: bool = False,
               download_dir: str | os.PathLike[str] | None = None) -> tuple[list[str], bool]:
    """Report every split of :data:`~fevae.data.discovery.DATASETS`; ``ok`` is False when a
    required split is missing or broken. Raises FevaeError only for an invalid ``data_dir``.
    """
    found = search_data(data_dir, download=download, download_dir=download_dir)
    lines = [f"data_dir: {data_dir if data_dir not in (None, '') else '(not set)'}"]
    problems: list[str] = []
    for key, spec in DATASETS.items():
        need = "required" if spec.required else "optional"
        if key not in found:
            problems += [f"{key} missing"] if spec.required else []
            places = ", ".join(found.searched_for.get(key, [])) or "(nowhere)"
            lines.append(f"{key}: MISSING ({need}) — looked in: {places}")
            continue
        images_path, labels_path = found[key]
        try:
            lines.append(f"{key}: ok — {check_split(key, images_path, labels_path)}")
        except FevaeError as err:
            problems += [f"{key} broken"] if spec.required else []
            lines.append(f"{key}: BROKEN ({need}) — {err}")
        lines.append(f"  images: {images_path}")
        lines.append(f"  labels: {labels_path}")
    lines.extend(f"note: {note}" for note in found.notes)
    lines.append(f"result: PROBLEMS ({', '.join(problems)}) — fix: {FIX}" if problems else "result: ok")
    return lines, not problems
