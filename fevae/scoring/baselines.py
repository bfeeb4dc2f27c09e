"""Baseline OOD scores: IWAE log-likelihood, input complexity and likelihood regret.

Convention (shared with :mod:`fevae.scoring.estimators`): every score is a float64 tensor ``[B]`` in log
space (nats) where **higher means more in-distribution**. A score that would be NaN/±inf raises
:class:`~fevae.errors.FevaeError` instead of being returned.

* :func:`iwae_score` — importance-weighted estimate of log p(x) (Burda et al., 2016).
* :func:`input_complexity_score` — log p(x) corrected by the PNG code length of the image
  (Serrà et al., 2020), see :func:`compressed_bits` and :func:`to_uint8` (greyscale or RGB).
* :func:`likelihood_regret_score` — minus the ELBO gain from refitting the encoder to the image
  (Xiao et al., 2020).

Noise is drawn with :func:`fevae.scoring.noise.per_sample_normal` on the APO noise stream
(:func:`noise_stream(stream, "APO") <fevae.scoring.noise.noise_stream>`): posterior samples depend only on
``(seed, stream, index[b])``, so scores do not depend on batch composition or chunking, and
``z_k`` is the same posterior sample that the APO estimator of :func:`fevae.scoring.estimators.score_batch`
uses (common random numbers: IWAE differs from ``log_p_vae_apo`` only by the weights
p(z)/q(z|x)).
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence
from torch.func import functional_call, grad, vmap

from fevae.errors import FevaeError
from fevae.models.stacked import stackable, stacked_forward
from fevae.models.vae import LOGVAR_RANGE, VAE
from fevae.scoring.estimators import RunningLogMeanExp, _check_positive_int
from fevae.scoring.noise import noise_stream, per_sample_normal

LN2 = math.log(2.0)


# ---------------------------------------------------------------------------- helpers
def _check_index(x: Tensor, index: Tensor) -> Tensor:
    index = torch.as_tensor(index)
    if index.ndim != 1 or index.shape[0] != x.shape[0]:
        raise FevaeError(
            f"index has shape {tuple(index.shape)} but the batch has {x.shape[0]} items",
            "pass one dataset index per item",
        )
    return index


def _check_finite(score: Tensor, name: str) -> Tensor:
    if not torch.isfinite(score).all():
        bad = (~torch.isfinite(score)).nonzero().flatten().tolist()
        raise FevaeError(
            f"the {name} score is NaN/inf for batch items {bad[:10]}",
            "check the model (e.g. a diverged or collapsed likelihood) and the inputs",
        )
    return score


def _posterior_noise(index: Tensor, *, seed: int, stream: int, n: int, dim: int, offset: int = 0) -> Tensor:
    """float64 noise ``[n, B, dim]`` of the APO stream (see the module docstring)."""
    return per_sample_normal(index, seed, n, dim, stream=noise_stream(stream, "APO"), offset=offset,
                             dtype=torch.float64)


# ---------------------------------------------------------------------------- IWAE
def iwae_score(
    x: Tensor,
    index: Tensor,
    *,
    vae: Any,
    n_samples: int,
    chunk_size: int,
    seed: int,
    stream: int = 0,
    decode: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """Importance-weighted log-likelihood ``[B]`` (float64, nats; higher = more in-distribution)::

        log (1/K) sum_k p(x | z_k) p(z_k) / q(z_k | x),   z_k = mu(x) + exp(logvar(x) / 2) eps_k

    with ``K = n_samples`` and ``eps_k`` from :func:`~fevae.scoring.noise.per_sample_normal` (APO
    stream). ``K = 1`` is a single-sample ELBO; the expectation increases with ``K`` towards
    log p(x). Samples are processed ``chunk_size`` at a time with
    :class:`~fevae.scoring.estimators.RunningLogMeanExp`, so memory does not grow with ``K``.

    ``vae`` is duck-typed: ``encode(x) -> (mu, logvar)`` each ``[B, L]``, ``decode(z [s, B, L]) -> h``
    and ``log_likelihood(x, h) -> [s, B]``; the latent size is read from ``mu``. Put a VAE in
    eval mode first; ``decode`` replaces ``vae.decode`` (e.g. :func:`fevae.scoring.estimators.channels_last_decode`).
    z, log p(z) and log q(z|x) are computed in float64 (z is cast to ``mu``'s
    dtype for decoding); log p(x|z) is cast to float64 before the sum.
    """
    n_samples = _check_positive_int(n_samples, "eval.n_samples")
    chunk_size = _check_positive_int(chunk_size, "eval.chunk_size")
    index = _check_index(x, index)
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        mu64, std64 = mu.double(), torch.exp(0.5 * logvar.double())
        q = Normal(mu64, std64)
        prior = Normal(torch.zeros_like(mu64), torch.ones_like(mu64))
        acc = RunningLogMeanExp()
        for start in range(0, n_samples, chunk_size):
            s = min(chunk_size, n_samples - start)
            eps = _posterior_noise(index, seed=seed, stream=stream, n=s, dim=mu.shape[-1], offset=start)
            z = mu64 + std64 * eps.to(mu.device)  # [s, B, L]
            ll = vae.log_likelihood(x, (decode or vae.decode)(z.to(mu.dtype))).to(torch.float64)
            if ll.shape != (s, x.shape[0]):
                raise FevaeError(
                    f"log_likelihood returned shape {tuple(ll.shape)}, expected {(s, x.shape[0])}",
                    "sum the per-pixel log-likelihoods over all but the sample and batch dims",
                )
            acc.update(ll + prior.log_prob(z).sum(-1) - q.log_prob(z).sum(-1))
        return _check_finite(acc.compute(), "IWAE")


# ---------------------------------------------------------------------------- input complexity
#: PNG colour mode of images with this many channels (the input-complexity code length)
PNG_MODES: dict[int, str] = {1: "L", 3: "RGB"}


def to_uint8(x: Tensor) -> np.ndarray:
    """Images ``[B, C, H, W]`` in [0, 1] -> uint8 array = round(255 x): ``[B, H, W]`` for
    greyscale (C = 1), ``[B, H, W, 3]`` (channels last, as PIL reads RGB) for colour (C = 3).

    Binarised (0/1) inputs become 0/255. Values outside [0, 1] (beyond 1e-6) or NaN raise, as does
    any other number of channels.
    """
    if x.ndim != 4 or x.shape[1] not in PNG_MODES:
        raise FevaeError(f"expected images [B, C, H, W] with C = 1 (greyscale) or 3 (RGB), got shape {tuple(x.shape)}",
                         "the input-complexity score (PNG code length) needs greyscale or RGB image batches")
    x = x.detach().to(device="cpu", dtype=torch.float64)
    if x.numel() and not (torch.isfinite(x).all() and x.min() >= -1e-6 and x.max() <= 1 + 1e-6):
        raise FevaeError("images must be finite and in [0, 1] for the input-complexity score",
                         "pass the model's input images (pixel values scaled to [0, 1])")
    x = x[:, 0] if x.shape[1] == 1 else x.permute(0, 2, 3, 1)
    return (x * 255).round().clamp(0, 255).to(torch.uint8).contiguous().numpy()


def compressed_bits(images_uint8: np.ndarray) -> np.ndarray:
    """Lossless PNG code length L(x) in bits of each image -> ``[B]`` float64; the images are uint8
    ``[B, H, W]`` (greyscale) or ``[B, H, W, 3]`` (RGB), as :func:`to_uint8` returns them.

    ``8 * len(PNG bytes)`` of a greyscale ("L") or colour ("RGB") PNG written by PIL with
    ``optimize=True`` (deterministic). The whole file is counted: the container overhead
    (signature, IHDR/IDAT/IEND chunk framing, zlib header/checksum: 57 + 6 bytes for 28x28
    greyscale images) is the same constant for every image of a given size and mode, so it shifts
    all scores equally and does not change any ranking or AUROC.
    """
    images = np.asarray(images_uint8)
    rgb = images.ndim == 4 and images.shape[-1] == 3
    if not (images.ndim == 3 or rgb) or images.dtype != np.uint8:
        raise FevaeError(f"expected uint8 images [B, H, W] (greyscale) or [B, H, W, 3] (RGB), "
                         f"got {images.dtype} {images.shape}", "convert with fevae.scoring.baselines.to_uint8")
    mode = PNG_MODES[3 if rgb else 1]
    out = np.empty(images.shape[0], dtype=np.float64)
    for b, image in enumerate(images):
        buf = io.BytesIO()
        Image.fromarray(np.ascontiguousarray(image), mode=mode).save(buf, format="PNG", optimize=True)
        out[b] = 8.0 * buf.getbuffer().nbytes
    return out


def input_complexity_score(log_px: Tensor, images_uint8: np.ndarray) -> Tensor:
    """Input-complexity-corrected likelihood ``[B]`` (float64, nats; higher = more in-distribution).

    Serrà et al. (2020) score OOD-ness as S(x) = -log2 p(x) - L(x) in bits, with L(x) a lossless
    code length (:func:`compressed_bits`). In our convention this is -S(x) converted to nats::

        log p(x) + L(x) ln 2

    ``log_px`` ``[B]`` is any log-likelihood estimate in nats (e.g. :func:`iwae_score`).
    """
    return input_complexity_from_bits(log_px, torch.from_numpy(compressed_bits(images_uint8)))


def input_complexity_from_bits(log_px: Tensor, bits: Tensor) -> Tensor:
    """:func:`input_complexity_score` from precomputed code lengths ``bits [B]`` (float64)."""
    bits = torch.as_tensor(bits, dtype=torch.float64)
    if log_px.ndim != 1 or bits.ndim != 1 or log_px.shape[0] != bits.shape[0]:
        raise FevaeError(f"log_px has shape {tuple(log_px.shape)} but there are {bits.shape[0]} images",
                         "pass one log-likelihood per image")
    return _check_finite(log_px.to(torch.float64) + bits.to(log_px.device) * LN2, "input-complexity")


# ---------------------------------------------------------------------------- likelihood regret
class _Encode(nn.Module):
    """``forward = vae.encode`` so :func:`torch.func.functional_call` can swap encoder parameters
    (named ``vae.encoder.*``) while reusing the VAE's own encode (incl. its logvar clamp)."""

    def __init__(self, vae: nn.Module):
        super().__init__()
        self.vae = vae

    def forward(self, x: Tensor) -> tuple[Tensor, Tensor]:
        return self.vae.encode(x)


def _fixed_noise_elbo(vae: nn.Module, mu: Tensor, logvar: Tensor, x: Tensor, eps: Tensor) -> Tensor:
    """ELBOs ``[B]`` of images ``x [B, C, H, W]`` with posterior parameters ``mu, logvar [B, L]``: the mean over
    ``eps [B, n, L]`` of log p(x | mu + std eps), minus the analytic KL(q(z|x) || N(0, I))."""
    std = torch.exp(0.5 * logvar)
    h = vae.decode(mu.unsqueeze(1) + std.unsqueeze(1) * eps)  # [B, n, ...]
    ll = vae.log_likelihood(x.unsqueeze(1), h).mean(1)  # [B]
    # validate_args=False: under vmap a value check is data-dependent control flow, which torch < 2.3 refuses
    # (std = exp(.) > 0 always; the numbers are the same); make check-floors runs this on the torch floor
    q = Normal(mu, std, validate_args=False)
    kl = kl_divergence(q, Normal(torch.zeros_like(mu), torch.ones_like(std), validate_args=False)).sum(-1)
    return ll - kl


def _regret_objective(vae: nn.Module, x: Tensor, stacked: bool = True) -> tuple[Callable, Callable, list[str]]:
    """``(elbos, neg_grads, names)`` for the B encoder copies of :func:`likelihood_regret_score`: ``elbos(params,
    eps) -> [B]`` and ``neg_grads(params, eps) -> {name: [B, ...]}`` (the gradients of minus each copy's ELBO), with
    ``params`` ``{name: [B, ...]}`` over ``names``. The stacked path (:func:`fevae.models.stacked.stacked_forward`:
    grouped convolutions, plain autograd) where the VAE is a :class:`~fevae.models.vae.VAE` with a stackable
    encoder, else ``vmap`` over :func:`torch.func.functional_call` of the VAE's own ``encode`` (any encoder)."""
    encoder = vae.encoder
    if stacked and isinstance(vae, VAE) and type(vae).encode is VAE.encode and stackable(encoder):
        def elbos(p: dict[str, Tensor], eps: Tensor) -> Tensor:
            mu, logvar = stacked_forward(encoder, p, x).chunk(2, dim=-1)  # what VAE.encode does with the encoder's output
            return _fixed_noise_elbo(vae, mu, logvar.clamp(*LOGVAR_RANGE), x, eps)

        def neg_grads(p: dict[str, Tensor], eps: Tensor) -> dict[str, Tensor]:
            leaves = {n: v.requires_grad_() for n, v in p.items()}
            with torch.enable_grad():
                grads = torch.autograd.grad(-elbos(leaves, eps).sum(), list(leaves.values()))
            return dict(zip(leaves, grads))

        return elbos, neg_grads, [name for name, _ in encoder.named_parameters()]

    wrapper = _Encode(vae)

    def elbo(p: dict[str, Tensor], xi: Tensor, ei: Tensor) -> Tensor:
        # tie_weights=False: the VAE ties no weights, so the same numbers without a walk over all its tensors per call
        mu, logvar = functional_call(wrapper, p, (xi.unsqueeze(0),), tie_weights=False)
        return _fixed_noise_elbo(vae, mu, logvar, xi.unsqueeze(0), ei.unsqueeze(0))[0]

    step_grad = vmap(grad(lambda p, xi, ei: -elbo(p, xi, ei)))
    return (lambda p, eps: vmap(elbo)(p, x, eps)), (lambda p, eps: step_grad(p, x, eps)), \
        [f"vae.encoder.{name}" for name, _ in encoder.named_parameters()]


def _adam(params: list[Tensor], lr: float) -> torch.optim.Optimizer:
    """Adam, fused (one kernel for all the stacked tensors: a 4-image API call's 50 steps ~0.06 s faster on 2 CPU
    cores) where this torch has it for these tensors' device (CPU: torch >= 2.4), else the plain loop. The same
    algorithm; the float rounding of the update differs (per-image scores within 1e-3 nats, 3e-5 relative, of the
    plain loop's on 64 images)."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, ValueError, TypeError):
        return torch.optim.Adam(params, lr=lr)


def likelihood_regret_score(
    x: Tensor,
    index: Tensor,
    *,
    vae: nn.Module,
    steps: int = 50,
    lr: float = 1e-4,
    n_samples: int = 1,
    seed: int = 0,
    stream: int = 0,
    stacked: bool = True,
) -> Tensor:
    """Minus the likelihood regret ``[B]`` (float64, nats; higher = more in-distribution).

    Xiao et al. (2020): for each image, a copy of the encoder's parameters is optimised with
    ``steps`` Adam steps (learning rate ``lr``) to maximise that image's ELBO, the decoder frozen;
    ``regret = ELBO_after - ELBO_before`` (>= 0 up to noise: OOD images gain more) and the score
    is ``-regret``.

    * ELBO (:func:`_fixed_noise_elbo`): reparameterised log-likelihood averaged over fixed noise,
      analytic KL. Noise rows of each item's APO stream (:func:`~fevae.scoring.noise.per_sample_normal`):
      rows ``0 .. n_samples - 1`` evaluate ELBO_before and ELBO_after (the same noise for both),
      row ``n_samples + t`` is the one sample of optimisation step ``t``. Neither depends on
      ``steps`` or on batch composition; ``steps = 0`` gives exactly 0.
    * Batched: the B parameter copies are stacked along a new dim 0 and run as one network
      (:func:`fevae.models.stacked.stacked_forward`: grouped convolutions; the gradient of the summed ELBOs is
      each copy's own), or, for an encoder that is not :func:`~fevae.models.stacked.stackable`, the per-image
      gradient is ``vmap(grad(ELBO))`` over (parameters, image, noise) with :func:`torch.func.functional_call`
      (the same numbers up to float rounding, slower; ``stacked=False`` takes it for any encoder). Adam is
      elementwise, so one ``torch.optim.Adam`` over the stacked tensors is exactly B independent Adams.
      Memory: ~4 (params, grad, 2 moments) x 4 bytes x 224k encoder parameters (1×28×28 or 3×32×32 images;
      the encoder's size barely depends on the image shape) ≈ 3.6 MB per image, plus activations.
    * The VAE runs in eval mode (BatchNorm running statistics, no dropout) and its mode is restored
      afterwards; its parameters and buffers are never modified.
    """
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 0:
        raise FevaeError(f"eval.regret_steps must be an integer >= 0, got {steps!r}", "set eval.regret_steps")
    if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not (math.isfinite(lr) and lr > 0):
        raise FevaeError(f"eval.regret_lr must be a finite number > 0, got {lr!r}", "set eval.regret_lr")
    n_samples = _check_positive_int(n_samples, "eval.regret_samples")
    index = _check_index(x, index)
    encoder = getattr(vae, "encoder", None)
    if not isinstance(vae, nn.Module) or not isinstance(encoder, nn.Module):
        raise FevaeError("likelihood regret needs an nn.Module VAE with an `encoder` submodule",
                         "pass a fevae.models.vae.VAE")

    modes = {m: m.training for m in vae.modules()}
    vae.eval()
    try:
        with torch.no_grad():  # the gradients are taken inside (torch.func.grad, or autograd under enable_grad)
            elbos, neg_grads, names = _regret_objective(vae, x, stacked)
            batch = x.shape[0]
            params = {n: p.detach().unsqueeze(0).repeat(batch, *([1] * p.ndim))
                      for n, (_, p) in zip(names, encoder.named_parameters())}
            dim = vae.encode(x[:1])[0].shape[-1]
            eps = _posterior_noise(index, seed=seed, stream=stream, n=n_samples + steps, dim=dim)
            eps = eps.to(device=x.device, dtype=x.dtype if x.is_floating_point() else torch.float32)
            eps = eps.transpose(0, 1)  # [B, rows, L]

            before = elbos(params, eps[:, :n_samples])
            if steps > 0:
                optimiser = _adam(list(params.values()), lr)
                for t in range(steps):
                    grads = neg_grads(params, eps[:, n_samples + t : n_samples + t + 1])
                    for n, leaf in params.items():
                        # contiguous: torch 2.14's fused CPU Adam reads a gradient in its parameter's memory order, so a
                        # transposed one (a batched matmul's weight gradient) would update the wrong elements
                        leaf.grad = grads[n].contiguous()
                    optimiser.step()
                after = elbos(params, eps[:, :n_samples])
            else:
                after = before
            score = before.to(torch.float64) - after.to(torch.float64)  # -regret; exactly 0 if steps == 0
    finally:
        for module, training in modes.items():
            module.training = training
    return _check_finite(score, "likelihood-regret")
