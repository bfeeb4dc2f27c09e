"""Pixel transforms: model-input preprocessing and the salt-and-pepper corruption of the OOD set."""

from __future__ import annotations

import numbers

import numpy as np
import torch

from fevae.errors import FevaeError, require

#: Valid values of ``data.preprocess``.
PREPROCESS_MODES = ("scale", "binarise")


def _require_uint8_images(images: np.ndarray | torch.Tensor, what: str) -> None:
    """Require a uint8 ``[N, H, W]`` or ``[N, H, W, C]`` array or tensor."""
    dtype_ok = images.dtype in (np.uint8, torch.uint8)
    require(dtype_ok and images.ndim in (3, 4),
            f"{what} expects uint8 images of shape [N, H, W] or [N, H, W, C], got {images.dtype} {tuple(images.shape)}",
            "pass the raw pixels as read by fevae.data.load_split")


def channels_first(x: torch.Tensor) -> torch.Tensor:
    """Raw image layout → model layout: ``[N, H, W]`` → ``[N, 1, H, W]``, ``[N, H, W, C]`` → ``[N, C, H, W]``."""
    return x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2).contiguous()


def preprocess(images: np.ndarray | torch.Tensor, mode: str) -> torch.Tensor:
    """uint8 ``[N, H, W]`` (one channel) or ``[N, H, W, C]`` (channels last) → float32 ``[N, C, H, W]``.

    ``"scale"``: ``x / 255`` in [0, 1]. ``"binarise"``: ``1.0`` where ``x / 255 > 0.5`` (pixel ≥ 128),
    else ``0.0``.
    """
    if mode not in PREPROCESS_MODES:
        raise FevaeError(f"unknown preprocessing data.preprocess={mode!r}",
                         f"use one of {', '.join(PREPROCESS_MODES)}")
    _require_uint8_images(images, "preprocess")
    x = channels_first(torch.as_tensor(images))
    if mode == "scale":
        return x.to(torch.float32).div_(255.0)
    return (x > 127).to(torch.float32)  # x/255 > 0.5 ⟺ x > 127.5 ⟺ x ≥ 128 for integers


def salt_and_pepper(images: np.ndarray, fraction: float, seed: int) -> np.ndarray:
    """A corrupted copy of uint8 ``images``: each pixel independently, with probability ``fraction``,
    becomes 0 (pepper) or 255 (salt) by a fair coin. Deterministic given ``seed``
    (``np.random.default_rng(seed)``) and the array's shape.
    """
    images = np.asarray(images)
    require(images.dtype == np.uint8, f"salt_and_pepper expects uint8 pixels, got {images.dtype}",
            "apply it to the raw pixels, before preprocessing")
    ok = isinstance(fraction, numbers.Real) and not isinstance(fraction, bool) and 0.0 <= fraction <= 1.0
    require(ok, f"salt-and-pepper fraction data.saltpepper_fraction={fraction!r} is not in [0, 1]",
            "set data.saltpepper_fraction to a probability such as 0.2")
    rng = np.random.default_rng(seed)
    corrupt = rng.random(images.shape) < fraction
    salt = rng.random(images.shape) < 0.5
    out = images.copy()
    out[corrupt & salt] = 255
    out[corrupt & ~salt] = 0
    return out
