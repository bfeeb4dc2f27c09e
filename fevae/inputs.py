"""Reading user images for the score CLI and ``data.ood_sets``: ``.npy``/``.npz`` arrays, folders of
PNGs (or one PNG), IDX files.

The format is chosen by the file's content (magic bytes), so a file of another format (``.csv``,
``.jpg``, ...) gets an "unsupported format" error instead of a misleading IDX one. 16-bit PNGs
are scaled to [0,1] (value / 65535), never clipped. Arrays are read without pickles
(``allow_pickle=False``). A ``.npz`` archive gives its only array, else its array ``images``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from fevae.data.idx import read_idx
from fevae.data.transforms import channels_first, preprocess
from fevae.errors import FevaeError
from fevae.models.likelihoods import IMAGE_SHAPE as DEFAULT_IMAGE_SHAPE
from fevae.models.likelihoods import check_image_shape


def shape_help(image_shape: tuple[int, ...] = DEFAULT_IMAGE_SHAPE) -> str:
    """What to give for images of ``image_shape`` ``(C, H, W)``, in words (the fix of a shape error)."""
    c, h, w = image_shape
    if c == 1:
        return f"give [N,{h},{w}] uint8 pixels (0-255) or floats in [0,1], a folder of {w}x{h} grayscale PNGs, or an IDX file"
    return (f"give [N,{h},{w},{c}] (channels last) uint8 pixels (0-255) or floats in [0,1], or a folder of {w}x{h} "
            f"{'RGB' if c == 3 else f'{c}-channel'} PNGs")


SHAPE_HELP = shape_help()
FORMAT_HELP = ("give a .npy array (np.save), a .npz archive (np.savez) of one array or with an array 'images', "
               "a folder of PNGs, a single .png, or an IDX file "
               "(.gz or plain); convert other formats with numpy first, e.g. np.save('x.npy', images)")


def image_shape_of(data_cfg: Any) -> tuple[int, int, int]:
    """``(C, H, W)`` of a run's images: its ``data.image_shape``, else (a run made before it existed) 1×28×28."""
    shape = (data_cfg.get("image_shape") if data_cfg is not None else None) or DEFAULT_IMAGE_SHAPE
    return check_image_shape(shape)


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


def read_images(path: str | Path, key: str = "input", image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """Images of ``image_shape`` ``(C, H, W)``, as ``[N, H, W]`` (one channel) or ``[N, H, W, C]``
    (channels last): uint8 (raw pixels) or float (already in [0,1]); validated.

    ``key`` names the setting in error messages (``input``, ``data.ood_sets.<set>.path``).
    """
    path = Path(path)
    if not path.exists():
        raise FevaeError(f"{key}={path} does not exist", shape_help(image_shape))
    kind = input_format(path, key)
    if kind == "png-folder":
        images = _read_png_folder(path, key, image_shape)
    elif kind == "png":
        images = _read_pngs([path], image_shape)
    elif kind == "npy":
        try:
            images = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise FevaeError(f"{key}={path} is not a readable .npy array ({str(err).splitlines()[0]})", shape_help(image_shape)) from err
        if not isinstance(images, np.ndarray):
            raise FevaeError(f"{key}={path} is not a single .npy array", shape_help(image_shape))
    elif kind == "npz":
        images = _read_npz(path, key)
    else:
        images = read_idx(path)
    return validate_images(images, str(path), key, image_shape)


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


def validate_images(images: np.ndarray, name: str, key: str = "input",
                    image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """``images`` checked against a run's ``(C, H, W)``: ``[N, H, W]`` (also ``[N, 1, H, W]`` or
    ``[N, H, W, 1]``) for one channel, ``[N, H, W, C]`` (channels last) for more; uint8 pixels or
    finite floats in [0, 1]. Returns ``[N, H, W]`` or ``[N, H, W, C]`` (uint8 or float32)."""
    c, h, w = image_shape
    help_ = shape_help(image_shape)
    if c == 1 and images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    elif c == 1 and images.ndim == 4 and images.shape[3] == 1:
        images = images[..., 0]
    want = (h, w) if c == 1 else (h, w, c)
    if images.ndim != len(want) + 1 or images.shape[1:] != want:
        got = list(images.shape)
        hint = ""
        if c > 1 and images.ndim == 4 and images.shape[1:] == (c, h, w):
            hint = f" (channels first: pass np.transpose(x, (0, 2, 3, 1)))"
        raise FevaeError(f"{key}={name} has shape {got}, not [N,{','.join(map(str, want))}] (the run's images are {c}×{h}×{w}){hint}", help_)
    if images.shape[0] == 0:
        raise FevaeError(f"{key}={name} holds no images", help_)
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise FevaeError(f"{key}={name} has dtype {images.dtype}", help_)
    if not np.isfinite(images).all():
        raise FevaeError(f"{key}={name} contains {int((~np.isfinite(images)).sum())} NaN or infinite pixels", help_)
    if images.min() < 0 or images.max() > 1:
        raise FevaeError(
            f"{key}={name} has float pixels in [{images.min():g}, {images.max():g}], outside [0,1]",
            "divide 0-255 floats by 255, or pass them as uint8",
        )
    return images.astype(np.float32)


def _read_png_folder(folder: Path, key: str = "input", image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise FevaeError(f"{key}={folder} holds no .png files", shape_help(image_shape))
    return _read_pngs(files, image_shape)


def _read_pngs(files: list[Path], image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """PNGs of ``image_shape``: one channel — 8-bit grayscale as uint8, and if any is 16-bit, all as
    float32 in [0,1] (16-bit ones / 65535); three channels — RGB (or RGBA, alpha dropped) as uint8 ``[N, H, W, 3]``."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = image_shape
    help_ = shape_help(image_shape)
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                if c == 3:
                    if img.mode not in ("RGB", "RGBA", "P"):
                        raise FevaeError(f"{file} is a {img.mode} image, not RGB, but the run's images have 3 channels", help_)
                    images.append(np.asarray(img.convert("RGB"), dtype=np.uint8))
                elif c != 1:
                    raise FevaeError(f"{file}: PNG input needs a 1- or 3-channel run, this one has {c} channels", help_)
                elif img.mode in WIDE_MODES:
                    wide = np.asarray(img, dtype=np.float64)
                    if wide.min() < 0 or wide.max() > 65535:
                        raise FevaeError(f"{file} has pixel values outside 0..65535", "save it as 8- or 16-bit grayscale")
                    images.append((wide / 65535.0).astype(np.float32))  # scaled, not clipped to 0..255
                elif img.mode in ("L", "1", "P"):
                    images.append(np.asarray(img.convert("L"), dtype=np.uint8))
                else:
                    raise FevaeError(f"{file} is a {img.mode} image, not grayscale", "convert it to 8-bit grayscale (mode L)")
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise FevaeError(f"{file} is not a readable PNG ({type(err).__name__})", help_) from err
        if images[-1].shape[:2] != (h, w):
            raise FevaeError(f"{file} is {images[-1].shape[1]}x{images[-1].shape[0]} pixels, not {w}x{h}", help_)
    if any(im.dtype != np.uint8 for im in images):
        images = [im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im for im in images]
    return np.stack(images)


def to_model_input(images: np.ndarray, mode: str) -> torch.Tensor:
    """Apply a run's preprocessing (``binarise`` | ``scale``) to uint8 or [0,1]-float images."""
    if images.dtype == np.uint8:
        return preprocess(images, mode)
    x = channels_first(torch.from_numpy(images).float())
    if mode == "scale":
        return x
    if mode == "binarise":  # the same threshold as for uint8 pixels: x > 0.5
        return (x > 0.5).float()
    raise FevaeError(f"unknown preprocessing {mode!r}", "use data.preprocess=binarise or scale")
