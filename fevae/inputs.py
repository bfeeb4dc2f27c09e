"""Reading user images for the score CLI and ``data.ood_sets``: ``.npy``/``.npz`` arrays, folders of
PNGs (or one PNG), IDX files.

The format is chosen by the file's content (magic bytes), so a file of another format (``.csv``,
``.jpg``, ...) gets an "unsupported format" error instead of a misleading IDX one. 16-bit PNGs
are scaled to [0,1] (value / 65535), never clipped. Arrays are read without pickles
(``allow_pickle=False``). A ``.npz`` archive gives its only array, else its array ``images``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fevae.data.idx import read_idx
from fevae.data.transforms import preprocess
from fevae.errors import FevaeError

SHAPE_HELP = "give [N,28,28] uint8 pixels (0-255) or floats in [0,1], a folder of 28x28 grayscale PNGs, or an IDX file"
FORMAT_HELP = ("give a .npy array (np.save), a .npz archive (np.savez) of one array or with an array 'images', "
               "a folder of 28x28 grayscale PNGs, a single .png, or an IDX file "
               "(.gz or plain); convert other formats with numpy first, e.g. np.save('x.npy', images)")
#: first bytes of each supported file format
NPY_MAGIC = b"\x93NUMPY"
ZIP_MAGIC = b"PK\x03\x04"
#: the array of a .npz archive with several arrays that is read
NPZ_KEY = "images"
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
GZIP_MAGIC = b"\x1f\x8b"
#: 16-bit PNG modes (Pillow), scaled by 65535 to [0,1]
WIDE_MODES = ("I;16", "I;16B", "I;16L", "I")


def input_format(path: Path, key: str = "input") -> str:
    """``png-folder``, ``npy``, ``npz``, ``png`` or ``idx``, from the content (the extension only names the problem).

    ``key`` names the setting in error messages (``input``, ``data.ood_sets.<set>.path``).
    """
    if path.is_dir():
        return "png-folder"
    try:
        with path.open("rb") as handle:
            head = handle.read(8)
    except OSError as err:
        raise FevaeError(f"{key}={path} cannot be read ({err.strerror or err})", "check the path and its permissions") from err
    if head.startswith(NPY_MAGIC):
        return "npy"
    if head.startswith(ZIP_MAGIC) and _is_npz(path):
        return "npz"
    if head.startswith(PNG_MAGIC):
        return "png"
    if head.startswith(GZIP_MAGIC) or (len(head) >= 4 and head[:2] == b"\0\0" and head[3] in (1, 3)):
        return "idx"
    kind = f"a {path.suffix} file" if path.suffix else "a file"
    if path.suffix.lower() == ".npy":
        raise FevaeError(f"{key}={path} is not a readable .npy array (no .npy header)", FORMAT_HELP)
    if path.suffix.lower() == ".npz":
        raise FevaeError(f"{key}={path} is not a readable .npz archive (not a zip of .npy arrays)", FORMAT_HELP)
    raise FevaeError(f"{key}={path} is {kind} of an unsupported format (not .npy, .npz, PNG or IDX)", FORMAT_HELP)


def _is_npz(path: Path) -> bool:
    """A readable zip archive of ``.npy`` members only (what ``np.savez`` writes); any other zip is another format."""
    import zipfile

    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError):
        return False
    return bool(names) and all(n.endswith(".npy") for n in names)


def read_images(path: str | Path, key: str = "input") -> np.ndarray:
    """Images [N,28,28]: uint8 (raw pixels) or float (already in [0,1]); validated.

    ``key`` names the setting in error messages (``input``, ``data.ood_sets.<set>.path``).
    """
    path = Path(path)
    if not path.exists():
        raise FevaeError(f"{key}={path} does not exist", SHAPE_HELP)
    kind = input_format(path, key)
    if kind == "png-folder":
        images = _read_png_folder(path, key)
    elif kind == "png":
        images = _read_pngs([path])
    elif kind == "npy":
        try:
            images = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise FevaeError(f"{key}={path} is not a readable .npy array ({str(err).splitlines()[0]})", SHAPE_HELP) from err
        if not isinstance(images, np.ndarray):
            raise FevaeError(f"{key}={path} is not a single .npy array", SHAPE_HELP)
    elif kind == "npz":
        images = _read_npz(path, key)
    else:
        images = read_idx(path)
    return validate_images(images, str(path), key)


def _read_npz(path: Path, key: str) -> np.ndarray:
    """The only array of a ``.npz`` archive, else its array :data:`NPZ_KEY`; no pickles."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as archive:
            names = list(archive.files)
            if len(names) != 1 and NPZ_KEY not in names:
                raise FevaeError(f"{key}={path} holds the arrays {names or '(none)'}, so which one to read is unclear",
                                 f"save one array (np.savez(path, images)) or name it '{NPZ_KEY}' (np.savez(path, {NPZ_KEY}=x))")
            return np.asarray(archive[names[0] if len(names) == 1 else NPZ_KEY])
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise FevaeError(f"{key}={path} is not a readable .npz archive ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                         FORMAT_HELP) from err


def validate_images(images: np.ndarray, name: str, key: str = "input") -> np.ndarray:
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise FevaeError(f"{key}={name} has shape {list(images.shape)}, not [N,28,28]", SHAPE_HELP)
    if images.shape[0] == 0:
        raise FevaeError(f"{key}={name} holds no images", SHAPE_HELP)
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise FevaeError(f"{key}={name} has dtype {images.dtype}", SHAPE_HELP)
    if not np.isfinite(images).all():
        raise FevaeError(f"{key}={name} contains {int((~np.isfinite(images)).sum())} NaN or infinite pixels", SHAPE_HELP)
    if images.min() < 0 or images.max() > 1:
        raise FevaeError(
            f"{key}={name} has float pixels in [{images.min():g}, {images.max():g}], outside [0,1]",
            "divide 0-255 floats by 255, or pass them as uint8",
        )
    return images.astype(np.float32)


def _read_png_folder(folder: Path, key: str = "input") -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise FevaeError(f"{key}={folder} holds no .png files", SHAPE_HELP)
    return _read_pngs(files)


def _read_pngs(files: list[Path]) -> np.ndarray:
    """8-bit grayscale PNGs as uint8; if any is 16-bit, all as float32 in [0,1] (16-bit ones / 65535)."""
    from PIL import Image, UnidentifiedImageError

    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                if img.mode in WIDE_MODES:
                    wide = np.asarray(img, dtype=np.float64)
                    if wide.min() < 0 or wide.max() > 65535:
                        raise FevaeError(f"{file} has pixel values outside 0..65535", "save it as 8- or 16-bit grayscale")
                    images.append((wide / 65535.0).astype(np.float32))  # scaled, not clipped to 0..255
                elif img.mode in ("L", "1", "P"):
                    images.append(np.asarray(img.convert("L"), dtype=np.uint8))
                else:
                    raise FevaeError(f"{file} is a {img.mode} image, not grayscale", "convert it to 8-bit grayscale (mode L)")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise FevaeError(f"{file} is not a readable PNG ({type(err).__name__})", SHAPE_HELP) from err
        if images[-1].shape != (28, 28):
            raise FevaeError(f"{file} is {images[-1].shape[1]}x{images[-1].shape[0]} pixels, not 28x28", SHAPE_HELP)
    if any(im.dtype != np.uint8 for im in images):
        images = [im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im for im in images]
    return np.stack(images)


def to_model_input(images: np.ndarray, mode: str) -> torch.Tensor:
    """Apply a run's preprocessing (``binarise`` | ``scale``) to uint8 or [0,1]-float images."""
    if images.dtype == np.uint8:
        return preprocess(images, mode)
    x = torch.from_numpy(images).float().unsqueeze(1)
    if mode == "scale":
        return x
    if mode == "binarise":  # the same threshold as for uint8 pixels: x > 0.5
        return (x > 0.5).float()
    raise FevaeError(f"unknown preprocessing {mode!r}", "use data.preprocess=binarise or scale")
