"""Reading user images for the score CLI and ``data.ood_sets``: ``.npy``/``.npz`` arrays, folders of
PNGs (or one PNG), IDX files.

The format is chosen by the file's content (magic bytes), so a file of another format (``.csv``,
``.jpg``, ...) gets an "unsupported format" error instead of a misleading IDX one. 16-bit PNGs
are scaled to [0,1] (value / 65535), never clipped. Arrays are read without pickles
(``allow_pickle=False``). A ``.npz`` archive gives its only array, else its array ``images``.
"""

from __future__ import annotations

import stat
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fevae.data.idx import read_idx
from fevae.data.transforms import channels_first, preprocess
from fevae.errors import FevaeError
from fevae.limits import check_shape, check_size, regular_file
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
    info = regular_file(path, key, allow_dir=True, fix=FORMAT_HELP)  # before any open: a pipe or device would hang it
    if stat.S_ISDIR(info.st_mode):
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


def npy_header(handle: Any) -> tuple[tuple[int, ...], np.dtype, int]:
    """``(shape, dtype, data offset)`` of the ``.npy`` stream at ``handle``'s start, from its header only
    (numpy's :func:`numpy.lib.format.read_magic` / ``read_array_header_*``); ``ValueError`` when it is none."""
    fmt = np.lib.format
    version = fmt.read_magic(handle)
    if version == (1, 0):
        shape, _, dtype = fmt.read_array_header_1_0(handle)
    elif version == (2, 0):
        shape, _, dtype = fmt.read_array_header_2_0(handle)
    else:
        raise ValueError(f".npy format version {version[0]}.{version[1]} is not supported")
    return tuple(int(d) for d in shape), np.dtype(dtype), handle.tell()


def check_npy(what: str, shape: tuple[int, ...], dtype: np.dtype, available: int | None = None) -> None:
    """Refuse, before it is read, an array whose header declares more than the limits (:mod:`fevae.limits`),
    pickled objects, or (``available``: the bytes after the header) more data than the file holds."""
    if dtype.hasobject:
        raise FevaeError(f"{what} holds Python objects, which are never unpickled", "save plain numbers: np.save(path, images.astype(np.uint8))")
    check_shape(what, shape, dtype.itemsize)
    need = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if available is not None and available < need:
        raise FevaeError(f"{what} is truncated: its header declares {list(shape)} {dtype} ({need} bytes) but it holds {available}",
                         "save the array again (np.save)")


def check_npz_member(archive: Any, member: str, what: str) -> None:
    """:func:`check_npy` of the array ``member`` of an open ``np.load`` archive, from its header only."""
    with archive.zip.open(f"{member}.npy") as handle:
        shape, dtype, _ = npy_header(handle)
    check_npy(what, shape, dtype)


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
            with path.open("rb") as handle:  # the header first: the shape it declares, checked against the limits
                shape, dtype, offset = npy_header(handle)
            check_npy(f"{key}={path}", shape, dtype, available=path.stat().st_size - offset)
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
            member = names[0] if len(names) == 1 else NPZ_KEY
            check_npz_member(archive, member, f"{key}={path} (array {member!r})")
            return np.asarray(archive[member])
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
    check_size(f"{key}={folder}", len(files), 1)  # the number of images; each one's size is checked from its header
    return _read_pngs(files, image_shape)


def _read_pngs(files: list[Path], image_shape: tuple[int, int, int] = DEFAULT_IMAGE_SHAPE) -> np.ndarray:
    """PNGs of ``image_shape``: one channel — 8-bit grayscale (mode L or 1, or a palette whose colours
    in use are all grey) as uint8, and if any is 16-bit, all as float32 in [0,1] (16-bit ones / 65535);
    three channels — RGB (or RGBA, alpha dropped, or any palette) as uint8 ``[N, H, W, 3]``. RGB and
    coloured palettes are refused for one channel alike.

    Each file's header is read first: a file that is not regular, or whose declared width × height ×
    bands exceeds ``limits.max_pixels_per_image`` or is not the run's size, is refused before its pixels
    are decoded."""
    from PIL import Image, UnidentifiedImageError

    c, h, w = image_shape
    help_ = shape_help(image_shape)
    images = []
    for file in files:
        regular_file(file, "input", fix=help_)
        try:
            with Image.open(file) as img:  # lazy: the header only
                width, height = img.size
                check_size(str(file), 1, width * height * len(img.getbands()))
                if (height, width) != (h, w):
                    raise FevaeError(f"{file} is {width}x{height} pixels, not {w}x{h}", help_)
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
                elif img.mode in ("L", "1"):
                    images.append(np.asarray(img.convert("L"), dtype=np.uint8))
                elif img.mode == "P" and _grey_palette(img):
                    images.append(np.asarray(img.convert("RGB"), dtype=np.uint8)[..., 0])  # grey: R = G = B
                elif img.mode == "P":
                    raise FevaeError(f"{file} is a palette image with coloured entries, not grayscale, and the run's images "
                                     "have 1 channel", "convert it to 8-bit grayscale (mode L), as for an RGB image")
                else:
                    raise FevaeError(f"{file} is a {img.mode} image, not grayscale", "convert it to 8-bit grayscale (mode L)")
        except Image.DecompressionBombError as err:
            raise FevaeError(f"{file} declares more pixels than Pillow decodes ({str(err).split('.')[0]})", help_) from None
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as err:
            raise FevaeError(f"{file} is not a readable PNG ({type(err).__name__})", help_) from err
    if any(im.dtype != np.uint8 for im in images):
        images = [im.astype(np.float32) / 255.0 if im.dtype == np.uint8 else im for im in images]
    return np.stack(images)


def _grey_palette(img: Any) -> bool:
    """Whether every palette entry a palette (mode P) image uses is grey (R = G = B)."""
    palette = np.asarray(img.getpalette("RGB") or [], dtype=np.int64).reshape(-1, 3)
    used = np.unique(np.asarray(img))
    used = used[used < len(palette)]
    entries = palette[used]
    return bool((entries[:, 0] == entries[:, 1]).all() and (entries[:, 1] == entries[:, 2]).all())


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
