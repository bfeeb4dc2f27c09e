"""Pixel likelihoods p(x | z) for the VAE decoder.

The decoder outputs pre-sigmoid logits ``h`` of shape ``[..., C, H, W]`` (the image shape
``(C, H, W)``, by default :data:`IMAGE_SHAPE` = ``(1, 28, 28)``). A :class:`Likelihood` turns them
into

* ``phi(h)``: the decoded image-space parameter φ(z) = sigmoid(h) ∈ [0, 1] (Bernoulli probability,
  Gaussian mean or continuous-Bernoulli λ).
* ``mean(h)``: the distribution's mean E[x | h] ∈ [0, 1], the decoded *image*: what the Jigsaw
  feature extractor sees and what image grids draw. It is φ itself for Bernoulli (p) and Gaussian
  (μ); for the continuous Bernoulli it is not λ (λ = 0.9 has mean 0.67), see
  :func:`continuous_bernoulli_mean`.
* ``distribution(h)``: a ``torch.distributions`` object with the 3 pixel dims as event dims.
* ``log_prob(x, h)``: log p(x | h) summed over the pixel dims (channels included), broadcasting
  ``x`` ``[B, C, H, W]`` against ``h`` ``[S, B, C, H, W]`` to ``[S, B]``.

Only the Gaussian's learned per-channel/per-pixel σ depends on the image shape; it is passed by
:func:`build_likelihood` (``image_shape``), which the VAE calls with its own shape.

Argument validation of the distributions is off (``validate_args=False``): it costs time on every
batch, and the Bernoulli log-probability of non-binary ``x`` is then the (unnormalised) binary
cross-entropy, which is what a Bernoulli VAE trained on greyscale images optimises.
"""

from __future__ import annotations

import inspect
import math
import numbers
from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torch.distributions import (
    Bernoulli,
    ContinuousBernoulli,
    Distribution,
    Independent,
    Normal,
)

from fevae.errors import FevaeError

#: Default shape of one image ``(channels, height, width)``: the 1×28×28 (Fashion)MNIST images.
#: Models take an ``image_shape`` argument (``data.image_shape`` in the configs) for other shapes.
IMAGE_SHAPE: tuple[int, int, int] = (1, 28, 28)
#: The 3 trailing dims ``[C, H, W]`` of decoder logits and images are the event dims.
_EVENT_DIMS = len(IMAGE_SHAPE)


def check_image_shape(image_shape: Sequence[int]) -> tuple[int, int, int]:
    """``image_shape`` as a plain ``(C, H, W)`` tuple of positive ints (from a list, tuple or
    OmegaConf ``ListConfig``; integral floats are accepted), else one :class:`FevaeError`."""
    try:
        values = list(image_shape)
    except TypeError:
        values = None
    ok = values is not None and len(values) == 3 and all(
        isinstance(v, numbers.Real) and not isinstance(v, bool) and float(v).is_integer() and v >= 1
        for v in values
    )
    if not ok:
        raise FevaeError(
            f"data.image_shape={image_shape!r} is not an image shape (channels, height, width)",
            "set it to three positive integers, e.g. [1, 28, 28] or [3, 32, 32]",
        )
    return tuple(int(v) for v in values)  # type: ignore[return-value]


class Likelihood(nn.Module):
    """Base class: a distribution over images parameterised by decoder logits ``h``."""

    def phi(self, h: Tensor) -> Tensor:
        """Decoded image-space parameter φ = sigmoid(h) ∈ [0, 1], same shape as ``h``."""
        return torch.sigmoid(h)

    def mean(self, h: Tensor) -> Tensor:
        """Mean E[x | h] of each pixel ∈ [0, 1], same shape as ``h``: the decoded image."""
        return self.phi(h)

    def _pixel_distribution(self, h: Tensor) -> Distribution:
        """Per-pixel distribution with batch shape ``h.shape``."""
        raise NotImplementedError

    def distribution(self, h: Tensor) -> Distribution:
        """Distribution over images: the 3 trailing (pixel) dims of ``h`` are event dims."""
        return Independent(self._pixel_distribution(h), _EVENT_DIMS, validate_args=False)

    def log_prob(self, x: Tensor, h: Tensor) -> Tensor:
        """log p(x | h) summed over pixel dims; ``x`` broadcasts against ``h``; → ``h.shape[:-3]``."""
        return self.distribution(h).log_prob(x)


class BernoulliLikelihood(Likelihood):
    """Independent Bernoulli pixels, parameterised by logits (numerically stable)."""

    def _pixel_distribution(self, h: Tensor) -> Distribution:
        return Bernoulli(logits=h, validate_args=False)


class GaussianLikelihood(Likelihood):
    """Independent Gaussian pixels with mean sigmoid(h) and standard deviation σ.

    ``sigma`` selects how σ is modelled:

    * ``"scalar"`` (default): one learned σ shared by all pixels. A single scale keeps the
      likelihood comparable across images, since every pixel's squared error is weighted equally.
    * ``"channel"``: one learned σ per channel (shape ``[C, 1, 1]``): the per-channel Gaussian of
      colour images, whose channels can have different noise scales. Same as ``"scalar"`` for C = 1
      except for the parameter's shape.
    * ``"pixel"``: a learned σ per pixel (shape ``[C, H, W]``). σ can collapse towards
      ``sigma_min`` at pixels that are black in every training image (e.g. borders), which hugely
      inflates the likelihood of any image with a black background (e.g. MNIST digits).
    * ``"fixed"``: σ = ``sigma_init``, not learned. Requires guessing the noise scale of the data.

    Learned σ is parameterised as log σ (initialised at log ``sigma_init``) and clamped below at
    ``sigma_min`` so the density cannot diverge. ``image_shape`` ``(C, H, W)`` sets the shape of a
    per-channel/per-pixel σ (ignored by the other modes).
    """

    SIGMA_MODES = ("scalar", "channel", "pixel", "fixed")

    def __init__(
        self,
        sigma: str = "scalar",
        sigma_init: float = 0.1,
        sigma_min: float = 0.01,
        image_shape: Sequence[int] = IMAGE_SHAPE,
    ):
        super().__init__()
        self.image_shape = check_image_shape(image_shape)
        if sigma not in self.SIGMA_MODES:
            raise FevaeError(
                f"model.vae.likelihood.sigma={sigma!r} is not a valid σ mode",
                f"use one of {', '.join(self.SIGMA_MODES)}",
            )
        if not sigma_min > 0:
            raise FevaeError(
                f"model.vae.likelihood.sigma_min={sigma_min} must be > 0",
                "set it to a small positive value such as 0.01",
            )
        if not sigma_init > 0 or (sigma != "fixed" and sigma_init < sigma_min):
            raise FevaeError(
                f"model.vae.likelihood.sigma_init={sigma_init} must be > 0 and, for a learned σ, "
                f">= model.vae.likelihood.sigma_min={sigma_min}",
                "set it to the expected pixel noise scale, e.g. 0.1",
            )
        self.mode = sigma
        self.sigma_min = float(sigma_min)
        log_init = math.log(sigma_init)
        if sigma == "fixed":
            self.register_buffer("log_sigma", torch.tensor(log_init))
        else:
            shape = {
                "scalar": (),
                "channel": (self.image_shape[0], 1, 1),
                "pixel": self.image_shape,
            }[sigma]
            self.log_sigma = nn.Parameter(torch.full(shape, log_init))

    def sigma(self) -> Tensor:
        """Current σ: shape ``[]`` (scalar/fixed), ``[C, 1, 1]`` (channel) or ``[C, H, W]`` (pixel)."""
        if self.mode == "fixed":
            return self.log_sigma.exp()
        return self.log_sigma.clamp(min=math.log(self.sigma_min)).exp()

    def _pixel_distribution(self, h: Tensor) -> Distribution:
        return Normal(self.phi(h), self.sigma(), validate_args=False)


#: Series of (E[x | h] − 1/2) / h = Σ_k B_2k h^(2k−2) / (2k)! (Bernoulli numbers B_2k), in powers of h²,
#: highest first (Horner): −691/12!·2730, 1/47900160, −1/1209600, 1/30240, −1/720, 1/12
_CB_MEAN_TAYLOR = (-691 / 1307674368000, 1 / 47900160, -1 / 1209600, 1 / 30240, -1 / 720, 1 / 12)


def continuous_bernoulli_mean(h: Tensor) -> Tensor:
    """Mean E[x | λ] of the continuous Bernoulli with λ = sigmoid(h), computed from the logits ``h``.

    E[x | λ] = λ / (2λ − 1) + 1 / (2 artanh(1 − 2λ)), which is 0/0 at λ = 1/2. With λ = sigmoid(h)
    (so 2λ − 1 = tanh(h/2) and artanh(1 − 2λ) = −h/2) it is 1 / (1 − e^−h) − 1/h: exact for any h
    away from 0 (→ 1 − 1/h as h → +∞ and −1/h as h → −∞, never NaN, limits 0 and 1 at ∓∞). Near 0
    both terms are ≈ 1/h and cancel, so for |h| below a band (1 in float32, 1/4 in float64, where
    the cancellation error eps/|h| is ~1 ulp of the result) the series
    1/2 + h/12 − h³/720 + h⁵/30240 − h⁷/1209600 + h⁹/47900160 − 691 h¹¹/1307674368000 is used, whose
    truncation error is below 1e-11 (|h| < 1) and 1e-19 (|h| < 1/4).
    """
    band = 0.25 if h.dtype == torch.float64 else 1.0
    small = h.abs() < band
    h_safe = torch.where(small, torch.full_like(h, band), h)
    exact = 1.0 / -torch.expm1(-h_safe) - 1.0 / h_safe
    h2 = h * h
    series = torch.full_like(h, _CB_MEAN_TAYLOR[0])
    for c in _CB_MEAN_TAYLOR[1:]:
        series = series * h2 + c
    return torch.where(small, 0.5 + h * series, exact)


class _LogitContinuousBernoulli(ContinuousBernoulli):
    """torch's continuous Bernoulli with the log-normaliser computed from the logits.

    torch computes log C(λ) from ``probs`` clamped to ``[eps, 1 - eps]``, so for |logit| ≳ 16.6
    (float32) the normaliser saturates (and its gradient vanishes). With λ = sigmoid(h),
    C = 2 artanh(1 - 2λ) / (1 - 2λ) = h / tanh(h / 2) exactly, which is stable for any h;
    for |h| < 1e-2 the Taylor series log 2 + h²/12 − 7h⁴/1440 is used (C → 2 at h = 0).
    """

    _TAYLOR_BELOW = 1e-2

    def _cont_bern_log_norm(self) -> Tensor:
        h = self.logits
        small = h.abs() < self._TAYLOR_BELOW
        h_safe = torch.where(small, torch.full_like(h, self._TAYLOR_BELOW), h)
        exact = torch.log(h_safe / torch.tanh(h_safe / 2))
        h2 = h * h
        taylor = math.log(2.0) + h2 / 12 - 7 * h2 * h2 / 1440
        return torch.where(small, taylor, exact)


class ContinuousBernoulliLikelihood(Likelihood):
    """Continuous Bernoulli pixels (Loaiza-Ganem & Cunningham, 2019), a proper density on [0, 1].

    Parameterised by logits. torch's ``ContinuousBernoulli`` evaluates the normaliser with a Taylor
    expansion inside ``lims=(0.499, 0.501)`` (where the closed form is 0/0), and clamps ``probs``
    to ``[eps, 1 - eps]`` elsewhere, which saturates it for large |logits|; we compute the
    normaliser directly from the logits instead (see :class:`_LogitContinuousBernoulli`), which
    agrees with torch wherever torch does not clamp.
    """

    def mean(self, h: Tensor) -> Tensor:
        """E[x | λ] (:func:`continuous_bernoulli_mean`), not λ: the decoded image fed to the Jigsaw."""
        return continuous_bernoulli_mean(h)

    def _pixel_distribution(self, h: Tensor) -> Distribution:
        return _LogitContinuousBernoulli(logits=h, validate_args=False)


LIKELIHOODS: dict[str, type[Likelihood]] = {
    "bernoulli": BernoulliLikelihood,
    "gaussian": GaussianLikelihood,
    "continuous_bernoulli": ContinuousBernoulliLikelihood,
}


def build_likelihood(name: str, image_shape: Sequence[int] = IMAGE_SHAPE, **kwargs) -> Likelihood:
    """Build likelihood ``name`` (``bernoulli``, ``gaussian`` or ``continuous_bernoulli``).

    ``image_shape`` ``(C, H, W)`` is passed to the likelihoods whose parameters depend on it (the
    Gaussian's per-channel/per-pixel σ); ``kwargs`` are the ``model.vae.likelihood.*`` settings.
    """
    image_shape = check_image_shape(image_shape)
    if name not in LIKELIHOODS:
        raise FevaeError(
            f"model.vae.likelihood.name={name!r} is not a known likelihood",
            f"use one of {', '.join(LIKELIHOODS)}",
        )
    cls = LIKELIHOODS[name]
    params = set(inspect.signature(cls.__init__).parameters)
    allowed = params - {"self", "image_shape"}
    unknown = sorted(set(kwargs) - allowed)
    if unknown:
        keys = ", ".join(f"model.vae.likelihood.{k}" for k in unknown)
        raise FevaeError(
            f"{keys} not accepted by the {name} likelihood",
            f"remove them (accepted: {', '.join(sorted(allowed)) or 'none'})",
        )
    if "image_shape" in params:
        kwargs["image_shape"] = image_shape
    return cls(**kwargs)
