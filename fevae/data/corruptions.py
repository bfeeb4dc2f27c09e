"""Named image corruptions for evaluation sets (``data.ood_sets.<set>.corruptions``).

Each corruption is a vectorised function of a whole set of images, uint8 pixels ``[N, 28, 28]``
(0-255) or floats in [0, 1], that returns a corrupted copy of the same shape and dtype (uint8
results are rounded to the nearest pixel value, floats stay in [0, 1]):

=================  ==========  ==============================================================
name               parameter   what
=================  ==========  ==============================================================
salt_and_pepper    p           each pixel independently, with probability p, becomes 0 or 255 (a
                               fair coin); random
gaussian_noise     sigma       adds N(0, sigma²) noise per pixel (sigma in [0, 1] pixel units,
                               i.e. 0.1 = 25.5 grey levels), clipped to [0, 1]; random
hflip              —           mirror left-right
vflip              —           mirror top-bottom
rotate             degrees     rotate counter-clockwise about the centre (bilinear, black fill, no
                               resizing; multiples of 90 are exact)
contrast           factor      ``mean + factor · (x − mean)`` per image, clipped (0 = flat grey,
                               1 = unchanged, > 1 = more contrast)
invert             —           ``1 − x`` (a negative)
constant           —           each image becomes one flat grey level drawn U[0, 1] (the image only
                               gives the shape); random
uniform_noise      —           each pixel becomes an independent U[0, 1] draw (the image only gives
                               the shape); random
=================  ==========  ==============================================================

A set's chain is applied in order to the *whole* set before it is split into its validation and
test parts. The k-th corruption of a chain (k = 0, 1, …) draws its randomness from
``numpy.random.default_rng([seed, k])`` with ``seed`` the run's seed: an image's noise depends on
(seed, k, its position in the whole set, the set's size) only, never on a batch size, the split or
the number of processes. NumPy's seed sequence pads with zeros, so the first corruption's
generator *is* ``default_rng(seed)``: the built-in ``mnist_saltpepper`` set gets exactly the noise
it always had. Two sets that corrupt the same images with the same chain get the same noise;
strengths of one corruption share their random numbers (salt-and-pepper at p = 0.2 corrupts a
subset of the pixels p = 0.5 corrupts), so a severity sweep compares strengths, not noise draws.

:func:`check_corruptions` validates a chain from the config (unknown names, missing, unknown or
out-of-range parameters) without reading any data; :func:`apply_corruptions` applies it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from fevae.errors import FevaeError

__all__ = ["CORRUPTIONS", "Corruption", "apply_corruptions", "check_corruptions", "corruption_rng", "describe_chain"]


def _unit(images: np.ndarray) -> np.ndarray:
    """float64 copy in [0, 1]."""
    return images.astype(np.float64) / 255.0 if images.dtype == np.uint8 else images.astype(np.float64)


def _back(x: np.ndarray, like: np.ndarray) -> np.ndarray:
    """``x`` in [0, 1] back to the dtype of ``like`` (uint8: rounded pixel values)."""
    x = np.clip(x, 0.0, 1.0)
    if like.dtype == np.uint8:
        return np.rint(x * 255.0).astype(np.uint8)
    return x.astype(like.dtype)


def salt_and_pepper(images: np.ndarray, rng: np.random.Generator, p: float) -> np.ndarray:
    """Each pixel, with probability ``p``, becomes black or white (a fair coin): two uniform draws
    of the array's shape, the corruption mask then the coin, as :func:`fevae.data.transforms.salt_and_pepper`."""
    corrupt = rng.random(images.shape) < p
    salt = rng.random(images.shape) < 0.5
    out = images.copy()
    white = 255 if images.dtype == np.uint8 else 1.0
    out[corrupt & salt] = white
    out[corrupt & ~salt] = 0
    return out


def gaussian_noise(images: np.ndarray, rng: np.random.Generator, sigma: float) -> np.ndarray:
    """Additive N(0, sigma²) noise on the [0, 1] pixel scale, clipped to [0, 1]."""
    return _back(_unit(images) + sigma * rng.standard_normal(images.shape), images)


def hflip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(images[:, :, ::-1])


def vflip(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return np.ascontiguousarray(images[:, ::-1, :])


def rotate(images: np.ndarray, rng: np.random.Generator, degrees: float) -> np.ndarray:
    """Counter-clockwise (as displayed, row 0 on top) about the image centre; black fill."""
    quarter = degrees / 90.0
    if quarter == int(quarter):
        return np.ascontiguousarray(np.rot90(images, k=int(quarter) % 4, axes=(1, 2)))
    from scipy import ndimage

    turned = ndimage.rotate(_unit(images), degrees, axes=(1, 2), reshape=False, order=1, mode="constant", cval=0.0)
    return _back(turned, images)


def contrast(images: np.ndarray, rng: np.random.Generator, factor: float) -> np.ndarray:
    """``mean + factor · (x − mean)`` with each image's own mean pixel value, clipped to [0, 1]."""
    x = _unit(images)
    mean = x.mean(axis=(1, 2), keepdims=True)
    return _back(mean + factor * (x - mean), images)


def invert(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    return _back(1.0 - _unit(images), images)


def constant(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One grey level U[0, 1] per image, everywhere (the near-OOD "constant images" of the literature)."""
    levels = rng.random(len(images)).reshape((-1,) + (1,) * (images.ndim - 1))
    return _back(np.broadcast_to(levels, images.shape), images)


def uniform_noise(images: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Every pixel an independent U[0, 1] draw."""
    return _back(rng.random(images.shape), images)


def _real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))


@dataclass(frozen=True)
class Corruption:
    """A registered corruption: its function and, per parameter, a check and the valid range in words."""

    fn: Callable[..., np.ndarray]
    params: Mapping[str, tuple[Callable[[Any], bool], str]]
    example: str


#: name -> corruption (the config's ``name``)
CORRUPTIONS: dict[str, Corruption] = {
    "salt_and_pepper": Corruption(salt_and_pepper, {"p": (lambda v: _real(v) and 0 <= v <= 1, "a probability in [0, 1]")},
                                  "{name: salt_and_pepper, p: 0.2}"),
    "gaussian_noise": Corruption(gaussian_noise, {"sigma": (lambda v: _real(v) and v >= 0, "a number ≥ 0 (pixel scale [0, 1])")},
                                 "{name: gaussian_noise, sigma: 0.1}"),
    "hflip": Corruption(hflip, {}, "{name: hflip}"),
    "vflip": Corruption(vflip, {}, "{name: vflip}"),
    "rotate": Corruption(rotate, {"degrees": (_real, "a finite number of degrees")}, "{name: rotate, degrees: 90}"),
    "contrast": Corruption(contrast, {"factor": (lambda v: _real(v) and v >= 0, "a number ≥ 0 (1 = unchanged)")},
                           "{name: contrast, factor: 0.5}"),
    "invert": Corruption(invert, {}, "{name: invert}"),
    "constant": Corruption(constant, {}, "{name: constant}"),
    "uniform_noise": Corruption(uniform_noise, {}, "{name: uniform_noise}"),
}


def check_corruptions(chain: Any, key: str = "corruptions") -> list[tuple[str, dict[str, float]]]:
    """A config's chain as ``[(name, {param: value})]``, or one :class:`FevaeError` naming ``key[i]``.

    An entry is ``{name: <corruption>, <param>: <value>}`` or just the name of a corruption without
    parameters (``hflip``); ``None``/``[]`` is no corruption. Nothing is read or computed.
    """
    if chain is None:
        return []
    if isinstance(chain, (str, Mapping)) or not isinstance(chain, Sequence):
        raise FevaeError(f"{key}={chain!r} is not a list of corruptions",
                         f"give a list, e.g. {key}=[{{name: hflip}}] (choose from {', '.join(CORRUPTIONS)})")
    out = []
    for i, entry in enumerate(chain):
        where = f"{key}[{i}]"
        params = dict(entry) if isinstance(entry, Mapping) else {"name": entry}
        name = params.pop("name", None)
        if name not in CORRUPTIONS:
            raise FevaeError(f"{where} names {'no corruption' if name is None else f'an unknown corruption {name!r}'}",
                             f"use one of {', '.join(CORRUPTIONS)}, e.g. {{name: salt_and_pepper, p: 0.2}}")
        spec = CORRUPTIONS[name]
        unknown = sorted(str(k) for k in params if k not in spec.params)
        missing = [k for k in spec.params if k not in params]
        if unknown or missing:
            what = f"unknown parameters {unknown}" if unknown else f"no {missing[0]}"
            takes = f"takes {', '.join(spec.params)}" if spec.params else "takes no parameters"
            raise FevaeError(f"{where}: {name} has {what}", f"{name} {takes}: {spec.example}")
        for param, (ok, valid) in spec.params.items():
            if not ok(params[param]):
                raise FevaeError(f"{where}: {name} {param}={params[param]!r} is invalid", f"set {param} to {valid}: {spec.example}")
            params[param] = float(params[param])
        out.append((name, params))
    return out


def corruption_rng(seed: int, k: int) -> np.random.Generator:
    """The generator of the k-th corruption of a chain (``default_rng([seed, k])``; k = 0 gives ``default_rng(seed)``)."""
    return np.random.default_rng([int(seed), int(k)])


def apply_corruptions(images: np.ndarray, chain: Sequence[tuple[str, Mapping[str, float]]], seed: int) -> np.ndarray:
    """``images`` (uint8 ``[N, 28, 28]`` or floats in [0, 1]) through a checked chain (:func:`check_corruptions`)."""
    out = np.asarray(images)
    if out.dtype != np.uint8 and not np.issubdtype(out.dtype, np.floating):
        raise FevaeError(f"corruptions expect uint8 pixels or floats in [0, 1], got {out.dtype}", "convert the images first")
    for k, (name, params) in enumerate(chain):
        out = CORRUPTIONS[name].fn(out, corruption_rng(seed, k), **params)
    return out


def describe_chain(chain: Sequence[tuple[str, Mapping[str, float]]]) -> str:
    """``"salt_and_pepper(p=0.2), hflip"``: a chain in words (logs, eval_split.json)."""
    return ", ".join(f"{name}({', '.join(f'{k}={v:g}' for k, v in params.items())})" if params else name
                     for name, params in chain)
