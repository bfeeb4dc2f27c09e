"""Your own in-distribution images: ``data=folder`` (PNG files) and ``data=npz`` (a ``.npz`` archive).

``data.path`` names the images; which of them train, validate and test comes from the files when
they say so, else from seeded splits (:class:`fevae.data.datamodule.FevaeDataModule`):

* ``data=folder``: a folder with ``train/`` (and optionally ``val/`` and ``test/``) subfolders of
  PNGs, or a folder of PNGs (file-name order) that is split. PNGs have no labels (``-1``).
* ``data=npz``: an archive with arrays ``train`` (and optionally ``val``, ``test``), each with an
  optional ``<part>_labels``; or one array ``images`` (or the archive's only array) with optional
  ``labels``, which is split. Read with ``allow_pickle=False``.

Images are checked like the score CLI's input (:func:`fevae.inputs.validate_images`) against the
run's ``data.image_shape``: ``[N, H, W]`` for one channel, ``[N, H, W, C]`` (channels last) for
more; uint8 pixels or floats in [0, 1]. Labels are integers (any values; they are only reported).
"""

from __future__ import annotations

import zipfile
from pathlib import Path

import numpy as np

from fevae.errors import FevaeError
from fevae.inputs import check_npz_member, read_images, validate_images
from fevae.limits import regular_file

__all__ = ["OWN_KINDS", "PARTS", "load_own"]

#: ``data.dataset`` values that read ``data.path`` instead of a registered dataset
OWN_KINDS = ("folder", "npz")
#: the parts a user's files may name
PARTS = ("train", "val", "test")

Part = tuple[np.ndarray, np.ndarray]


def _unlabelled(images: np.ndarray) -> Part:
    return images, np.full(len(images), -1, dtype=np.int64)


def _labels(archive: np.lib.npyio.NpzFile, key: str, n: int, where: str) -> np.ndarray:
    if key not in archive.files:
        return np.full(n, -1, dtype=np.int64)
    labels = np.asarray(archive[key])
    if labels.shape != (n,) or not np.issubdtype(labels.dtype, np.integer):
        raise FevaeError(f"{where}: array {key!r} has {labels.dtype} shape {list(labels.shape)}, not {n} integer labels",
                         f"save one integer label per image as {key!r}, or leave it out")
    return labels.astype(np.int64)


def _folder(path: Path, image_shape: tuple[int, int, int]) -> dict[str, Part]:
    subfolders = {part: path / part for part in PARTS if (path / part).is_dir()}
    if not subfolders:
        return {"pool": _unlabelled(read_images(path, "data.path", image_shape))}
    if "train" not in subfolders:
        raise FevaeError(f"data.path={path} has {', '.join(p + '/' for p in subfolders)} but no train/ subfolder",
                         "put the training PNGs in train/ (val/ and test/ are optional), or all PNGs directly in the folder")
    return {part: _unlabelled(read_images(folder, f"data.path ({part}/)", image_shape)) for part, folder in subfolders.items()}


def _npz(path: Path, image_shape: tuple[int, int, int]) -> dict[str, Part]:
    where = f"data.path={path}"
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if "train" in names:
                keys = {part: part for part in PARTS if part in names}
                label_keys = {part: f"{part}_labels" for part in keys}
            elif "images" in names or len(names) == 1:
                keys = {"pool": "images" if "images" in names else names[0]}
                label_keys = {"pool": "labels"}
            else:
                raise FevaeError(f"{where} holds the arrays {names or '(none)'}: no 'train' and no 'images'",
                                 "save train (and optionally val, test) arrays, or one array 'images' to be split: "
                                 "np.savez(path, train=x_train, test=x_test) or np.savez(path, images=x)")
            out = {}
            for part, key in keys.items():
                check_npz_member(archive, key, f"data.path={path} (array {key!r})")  # its header against the limits, before reading
                images = validate_images(np.asarray(archive[key]), f"{path}[{key}]", "data.path", image_shape)
                out[part] = (images, _labels(archive, label_keys[part], len(images), where))
            return out
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise FevaeError(f"{where} is not a readable .npz archive ({type(err).__name__})",
                         "write it with np.savez(path, train=..., test=...) or np.savez(path, images=...)") from err


def load_own(kind: str, path: str | None, image_shape: tuple[int, int, int]) -> dict[str, Part]:
    """The user's images by part: ``train`` (+ optional ``val``, ``test``) when the files name them,
    else one ``pool`` for the caller to split. One :class:`FevaeError` for anything wrong."""
    if kind not in OWN_KINDS:
        raise FevaeError(f"data.dataset={kind!r} is not one of your-own-data kinds", f"use one of {', '.join(OWN_KINDS)}")
    p = Path(str(path)).expanduser()  # the data module has checked that data.path is set
    if not p.exists():
        raise FevaeError(f"data.path={path} does not exist", "point data.path at your images (relative to the folder you run from)")
    if kind == "folder":
        if not p.is_dir():
            raise FevaeError(f"data.path={path} is not a folder", "data=folder reads a folder of PNGs; use data=npz for a .npz file")
        return _folder(p, image_shape)
    if p.is_dir():
        raise FevaeError(f"data.path={path} is a folder", "data=npz reads a .npz file; use data=folder for a folder of PNGs")
    regular_file(p, "data.path", fix="point data.path at a .npz file (a pipe or device is never read)")
    return _npz(p, image_shape)
