"""Proxy outliers: in-distribution *training* images transformed into images that are no longer in-distribution.

The recommendation rule (:mod:`fevae.detectors.recommend`) asks which detector separates in-distribution
images from outliers it has never seen, without looking at any evaluation set. Its outliers are made
here, from a seeded sample of the run's own training images, by transformation families chosen to be
**disjoint from every evaluation set and corruption the framework ships** (:data:`fevae.data.corruptions.CORRUPTIONS`:
flips, rotations, Gaussian noise, salt-and-pepper, contrast, inversion, constant images, uniform noise;
and MNIST): none of those is, or is a special case of, one below.

=================  ================================================================================
name               what (images as floats in [0, 1], 28 × 28)
=================  ================================================================================
pixel_shuffle      the pixels of each 4 × 4 block are permuted at random (local texture kept, edges broken)
tile_shuffle       the 4 × 4 grid of 7 × 7 tiles is permuted at random (a puzzle the Jigsaw's 3 × 3 grid never poses)
elastic            elastic warp (Simard et al. 2003): a random displacement field smoothed by a Gaussian
                   (σ = 3 px) scaled to 4 px rms, bilinear resampling
blur               Gaussian blur, σ = 1.5 px
sharpen            unsharp mask: ``x + 2 · (x − blur_σ=1(x))``, clipped
mixup              the pixel mean of the image and another random training image
lowpass_noise      additive noise smoothed by a Gaussian (σ = 2 px), scaled to 0.15 rms, clipped
=================  ================================================================================

:func:`make_proxies` returns every family's images (uint8, the images' shape) from ``n`` sampled
training images per family; the randomness of family k is ``default_rng([seed, 1000 + k])``.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from fevae.data.corruptions import _back, _unit
from fevae.errors import FevaeError

__all__ = ["PROXIES", "make_proxies"]


def _blur(x: np.ndarray, sigma: float) -> np.ndarray:
    from scipy import ndimage

    return ndimage.gaussian_filter(x, sigma=(0, sigma, sigma), mode="nearest")


def pixel_shuffle(x: np.ndarray, rng: np.random.Generator, block: int = 4) -> np.ndarray:
    n, h, w = x.shape
    hb, wb = h // block, w // block
    core = x[:, : hb * block, : wb * block].reshape(n, hb, block, wb, block).transpose(0, 1, 3, 2, 4).reshape(n, hb, wb, block * block)
    order = np.argsort(rng.random(core.shape), axis=-1)
    core = np.take_along_axis(core, order, axis=-1).reshape(n, hb, wb, block, block).transpose(0, 1, 3, 2, 4)
    out = x.copy()
    out[:, : hb * block, : wb * block] = core.reshape(n, hb * block, wb * block)
    return out


def tile_shuffle(x: np.ndarray, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    n, h, w = x.shape
    th, tw = h // grid, w // grid
    tiles = x[:, : grid * th, : grid * tw].reshape(n, grid, th, grid, tw).transpose(0, 1, 3, 2, 4).reshape(n, grid * grid, th, tw)
    order = np.argsort(rng.random((n, grid * grid)), axis=-1)
    tiles = np.take_along_axis(tiles, order[:, :, None, None], axis=1).reshape(n, grid, grid, th, tw).transpose(0, 1, 3, 2, 4)
    out = x.copy()
    out[:, : grid * th, : grid * tw] = tiles.reshape(n, grid * th, grid * tw)
    return out


def elastic(x: np.ndarray, rng: np.random.Generator, sigma: float = 3.0, rms: float = 4.0) -> np.ndarray:
    from scipy import ndimage

    n, h, w = x.shape
    field = _blur(rng.standard_normal((2, n, h, w)).reshape(2 * n, h, w), sigma).reshape(2, n, h, w)
    field *= rms / np.sqrt((field**2).mean(axis=(0, 2, 3), keepdims=True) * 2)
    rows, cols = np.meshgrid(np.arange(h), np.arange(w), indexing="ij")
    return np.stack([ndimage.map_coordinates(x[i], [rows + field[0, i], cols + field[1, i]], order=1, mode="constant", cval=0.0)
                     for i in range(n)])


def blur(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _blur(x, 1.5)


def sharpen(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return x + 2.0 * (x - _blur(x, 1.0))


def mixup(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    partner = (np.arange(len(x)) + rng.integers(1, max(len(x), 2), size=len(x))) % len(x)
    return 0.5 * (x + x[partner])


def lowpass_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    noise = _blur(rng.standard_normal(x.shape), 2.0)
    return x + 0.15 * noise / np.sqrt((noise**2).mean(axis=(1, 2), keepdims=True))


#: name -> transformation of float images [N, H, W] in [0, 1] (unclipped results are clipped afterwards)
PROXIES: dict[str, Callable[[np.ndarray, np.random.Generator], np.ndarray]] = {
    "pixel_shuffle": pixel_shuffle, "tile_shuffle": tile_shuffle, "elastic": elastic, "blur": blur,
    "sharpen": sharpen, "mixup": mixup, "lowpass_noise": lowpass_noise,
}


def make_proxies(train_images: np.ndarray, n: int, seed: int) -> dict[str, np.ndarray]:
    """``{family: uint8 [n, H, W]}``: each family transforms its own seeded sample of ``n`` of ``train_images``
    (uint8 ``[N, H, W]`` or floats in [0, 1]; one channel)."""
    images = np.asarray(train_images)
    if images.ndim != 3 or len(images) < 2:
        raise FevaeError(f"proxy outliers need at least 2 one-channel training images [N, H, W], got shape {list(images.shape)}",
                         "the recommendation rule supports grayscale runs only")
    out = {}
    for k, (name, fn) in enumerate(PROXIES.items()):
        rng = np.random.default_rng([int(seed), 1000 + k])
        picked = np.sort(rng.choice(len(images), size=min(n, len(images)), replace=False))
        out[name] = _back(fn(_unit(images[picked]), rng), np.zeros(0, np.uint8))
    return out
