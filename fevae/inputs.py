"""Reading user images for the score CLI: ``.npy`` arrays, folders of PNGs, IDX files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from fevae.data.idx import read_idx
from fevae.data.transforms import preprocess
from fevae.errors import FevaeError

SHAPE_HELP = "give [N,28,28] uint8 pixels (0-255) or floats in [0,1], a folder of 28x28 grayscale PNGs, or an IDX file"


def read_images(path: str | Path) -> np.ndarray:
    """Images [N,28,28]: uint8 (raw pixels) or float (already in [0,1]); validated."""
    path = Path(path)
    if not path.exists():
        raise FevaeError(f"input={path} does not exist", SHAPE_HELP)
    if path.is_dir():
        images = _read_png_folder(path)
    elif path.suffix == ".npy":
        try:
            images = np.load(path, allow_pickle=False)
        except (ValueError, OSError, EOFError) as err:
            raise FevaeError(f"input={path} is not a readable .npy array ({err})", SHAPE_HELP) from err
    else:
        images = read_idx(path)
    return validate_images(images, str(path))


def validate_images(images: np.ndarray, name: str) -> np.ndarray:
    if images.ndim == 4 and images.shape[1] == 1:
        images = images[:, 0]
    if images.ndim != 3 or images.shape[1:] != (28, 28):
        raise FevaeError(f"input={name} has shape {list(images.shape)}, not [N,28,28]", SHAPE_HELP)
    if images.shape[0] == 0:
        raise FevaeError(f"input={name} holds no images", SHAPE_HELP)
    if images.dtype == np.uint8:
        return images
    if not np.issubdtype(images.dtype, np.floating):
        raise FevaeError(f"input={name} has dtype {images.dtype}", SHAPE_HELP)
    if not np.isfinite(images).all():
        raise FevaeError(f"input={name} contains {int((~np.isfinite(images)).sum())} NaN or infinite pixels", SHAPE_HELP)
    if images.min() < 0 or images.max() > 1:
        raise FevaeError(
            f"input={name} has float pixels in [{images.min():g}, {images.max():g}], outside [0,1]",
            "divide 0-255 floats by 255, or pass them as uint8",
        )
    return images.astype(np.float32)


def _read_png_folder(folder: Path) -> np.ndarray:
    from PIL import Image, UnidentifiedImageError

    files = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png")
    if not files:
        raise FevaeError(f"input={folder} holds no .png files", SHAPE_HELP)
    images = []
    for file in files:
        try:
            with Image.open(file) as img:
                if img.mode not in ("L", "1", "P", "I;16"):
                    raise FevaeError(f"{file} is a {img.mode} image, not grayscale", "convert it to 8-bit grayscale (mode L)")
                images.append(np.asarray(img.convert("L"), dtype=np.uint8))
        except (UnidentifiedImageError, OSError) as err:
            raise FevaeError(f"{file} is not a readable PNG ({err})", SHAPE_HELP) from err
        if images[-1].shape != (28, 28):
            raise FevaeError(f"{file} is {images[-1].shape[1]}x{images[-1].shape[0]} pixels, not 28x28", SHAPE_HELP)
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
