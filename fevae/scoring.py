"""Monte-Carlo likelihood estimators p_VAE, p_FE and p_FEVAE (paper Eqs. 1-4), pure torch.

For a test batch ``x`` with dataset indices ``index`` and latent samples ``z_s`` drawn from

* ``PR``  (Eq. 1, prior predictive):               ``z_s ~ p(z) = N(0, I)``
* ``APO`` (Eq. 2, approximate posterior predictive): ``z_s ~ q(z|x) = N(mu(x), exp(logvar(x)))``

(plain Monte-Carlo averages of the integrands, *not* importance weighted), :func:`score_batch`
returns per item, in float64::

    vae   = log (1/S) sum_s p(x | phi_x(z_s))
    fe    = log (1/S) sum_s p_FE(f_x | f_phi(z_s))                       (Eq. 3)
    fevae = log (1/S) sum_s p(x | phi_x(z_s)) p_FE(f_x | f_phi(z_s))     (Eq. 4)

computed over chunks of ``chunk_size`` samples with :class:`RunningLogMeanExp`, so memory does
not grow with ``S``. The noise of item ``b`` depends only on ``(seed, stream, scheme,
index[b])`` (:func:`per_sample_normal`), so the numbers do not depend on batch composition,
batch size, chunk size or the number of DDP processes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence

import torch

from fevae.errors import FevaeError

SCHEMES = ("PR", "APO")
SCORES = ("vae", "fe", "fevae")
NOISE_BLOCK_ROWS = 64
_MASK64 = (1 << 64) - 1


# ---------------------------------------------------------------------------- log-mean-exp
def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(mean(exp(x), dim))`` computed stably."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


class RunningLogMeanExp:
    """Streaming :func:`log_mean_exp` over dim 0: ``update(chunk [s, ...])`` repeatedly, then
    ``compute() -> [...]`` equals ``log_mean_exp(torch.cat(chunks), 0)`` (up to rounding)."""

    def __init__(self) -> None:
        self._lse: torch.Tensor | None = None
        self.count = 0

    def update(self, chunk: torch.Tensor) -> None:
        if chunk.ndim < 1 or chunk.shape[0] == 0:
            raise ValueError("RunningLogMeanExp.update needs a non-empty chunk [s, ...]")
        lse = torch.logsumexp(chunk, 0)
        self._lse = lse if self._lse is None else torch.logaddexp(self._lse, lse)
        self.count += int(chunk.shape[0])

    def compute(self) -> torch.Tensor:
        if self._lse is None:
            raise ValueError("RunningLogMeanExp.compute called before any update")
        return self._lse - math.log(self.count)


# ---------------------------------------------------------------------------- noise
def _splitmix64(x: int) -> int:
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


def item_seed(seed: int, stream: int, index: int, block: int = 0) -> int:
    """64-bit generator seed for ``(seed, stream, index, block)``.

    The four integers are chained through the SplitMix64 finaliser
    (``h = mix(h ^ v)`` for each value, masked to 64 bits), so - unlike a linear combination such
    as ``seed * 1_000_003 + stream * 7_919 + index`` - distinct tuples do not collide
    systematically (e.g. ``(stream=1, index=0)`` vs ``(stream=0, index=7919)``).
    """
    h = 0x5EED_F00D_CAFE_BEEF
    for v in (seed, stream, index, block):
        h = _splitmix64(h ^ (int(v) & _MASK64))
    return h & ((1 << 63) - 1)


def per_sample_normal(
    indices: torch.Tensor,
    seed: int,
    n: int,
    dim: int,
    stream: int = 0,
    offset: int = 0,
    device: torch.device | str | None = None,
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Standard normal noise ``[n, B, dim]``: rows ``offset .. offset + n - 1`` of item ``b``'s
    own infinite noise stream, which depends only on ``(seed, stream, indices[b])``.

    Each item's stream is cut into blocks of :data:`NOISE_BLOCK_ROWS` rows; block ``k`` is
    ``torch.randn(NOISE_BLOCK_ROWS, dim, dtype=float64)`` from a CPU ``torch.Generator`` seeded with
    :func:`item_seed(seed, stream, index, k) <item_seed>`. Row ``r`` of an item is therefore the
    same whatever ``offset``/``n`` (chunking), batch composition or process requests it. Noise is
    drawn in float64 and cast to ``dtype`` (so float32 and float64 runs see the same draws), then
    moved to ``device``. Note the draws also depend on ``dim``.
    """
    idx = torch.as_tensor(indices)
    if idx.ndim != 1 or idx.is_floating_point() or idx.is_complex():
        raise FevaeError(
            f"indices must be a 1-D integer tensor, got shape {tuple(idx.shape)} dtype {idx.dtype}",
            "pass the dataset index of every item in the batch",
        )
    if n < 0 or dim < 1 or offset < 0:
        raise FevaeError(f"invalid noise request n={n}, dim={dim}, offset={offset}", "use n >= 0, dim >= 1, offset >= 0")
    out = torch.empty((n, idx.shape[0], dim), dtype=torch.float64)
    if n > 0:
        first, last = offset // NOISE_BLOCK_ROWS, (offset + n - 1) // NOISE_BLOCK_ROWS
        lo = offset - first * NOISE_BLOCK_ROWS
        gen = torch.Generator(device="cpu")
        for b, index in enumerate(idx.tolist()):
            blocks = []
            for k in range(first, last + 1):
                gen.manual_seed(item_seed(seed, stream, index, k))
                blocks.append(torch.randn(NOISE_BLOCK_ROWS, dim, generator=gen, dtype=torch.float64))
            out[:, b] = torch.cat(blocks)[lo : lo + n]
    return out.to(device=device, dtype=dtype)


def noise_stream(stream: int, scheme: str) -> int:
    """Noise stream used by :func:`score_batch`: ``2 * stream + (0 for PR, 1 for APO)`` so the two
    schemes never share draws; ``stream`` itself should distinguish data sets/splits."""
    return 2 * int(stream) + SCHEMES.index(_check_scheme(scheme))


# ---------------------------------------------------------------------------- scoring
def _check_scheme(scheme: str) -> str:
    s = str(scheme).upper()
    if s not in SCHEMES:
        raise FevaeError(f"unknown evaluation scheme {scheme!r}", "set eval.schemes to a subset of [PR, APO]")
    return s


def _check_positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FevaeError(f"{key} must be an integer >= 1, got {value!r}", f"set {key}")
    return value


def score_batch(
    x: torch.Tensor,
    index: torch.Tensor,
    *,
    decode: Callable[[torch.Tensor], torch.Tensor],
    log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    phi: Callable[[torch.Tensor], torch.Tensor],
    features: Callable[[torch.Tensor], torch.Tensor],
    mixture,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    scheme: str,
    n_samples: int,
    chunk_size: int,
    seed: int,
    stream: int = 0,
    latent_dim: int | None = None,
) -> dict[str, torch.Tensor]:
    """Per-item log-likelihood estimates ``{"vae", "fe", "fevae"}`` (each ``[B]`` float64).

    Callables (so this module needs no model classes):

    * ``decode(z [s, B, L]) -> h [s, B, ...]`` decoder output (likelihood parameters),
    * ``log_likelihood(x [B, ...], h [s, B, ...]) -> [s, B]`` = ``log p(x | phi_x(z))``,
    * ``phi(h) -> images [s, B, *image_shape]`` the images fed to the feature extractor
      (e.g. the Bernoulli/Gaussian mean),
    * ``features(images [N, *image_shape]) -> [N, d]`` the Jigsaw features ``l^1``,
    * ``encode(x) -> (mu, logvar)`` each ``[B, L]``: required for APO; for PR it is used only to
      infer ``L`` when ``latent_dim`` is not given.

    ``mixture`` is a :class:`fevae.mixture.TorchMixture`. Noise: :func:`per_sample_normal` with
    stream :func:`noise_stream(stream, scheme) <noise_stream>`; sample ``s`` of item ``b`` is the
    same for every ``chunk_size``. Runs under ``torch.no_grad()``.
    """
    scheme = _check_scheme(scheme)
    n_samples = _check_positive_int(n_samples, "eval.n_samples")
    chunk_size = _check_positive_int(chunk_size, "eval.chunk_size")
    index = torch.as_tensor(index)
    if index.ndim != 1 or index.shape[0] != x.shape[0]:
        raise FevaeError(
            f"index has shape {tuple(index.shape)} but the batch has {x.shape[0]} items",
            "pass one dataset index per item",
        )
    batch = x.shape[0]
    with torch.no_grad():
        mu = std = None
        if scheme == "APO" or latent_dim is None:
            if encode is None:
                raise FevaeError(
                    "the APO scheme (or a PR run without latent_dim) needs an encoder",
                    "pass encode=... or drop APO from eval.schemes",
                )
            mu, logvar = encode(x)
            std = torch.exp(0.5 * logvar)
        dim = int(mu.shape[-1]) if latent_dim is None else int(latent_dim)
        if mu is not None:
            noise_dtype = mu.dtype
        else:
            noise_dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
        lp_x = mixture.component_log_prob(features(x))  # [B, C] float64, once per batch
        acc = {k: RunningLogMeanExp() for k in SCORES}
        nstream = noise_stream(stream, scheme)
        for start in range(0, n_samples, chunk_size):
            s = min(chunk_size, n_samples - start)
            eps = per_sample_normal(index, seed, s, dim, stream=nstream, offset=start, device=x.device, dtype=noise_dtype)
            z = eps if scheme == "PR" else mu + std * eps
            h = decode(z)
            ll = log_likelihood(x, h).to(torch.float64)  # [s, B]
            images = phi(h)
            f_phi = features(images.reshape(s * batch, *images.shape[2:])).reshape(s, batch, -1)
            lfe = mixture.log_p_fe_from_log_prob(lp_x, f_phi).to(ll.device)  # [s, B]
            if ll.shape != (s, batch):
                raise FevaeError(
                    f"log_likelihood returned shape {tuple(ll.shape)}, expected {(s, batch)}",
                    "sum the per-pixel log-likelihoods over all but the sample and batch dims",
                )
            acc["vae"].update(ll)
            acc["fe"].update(lfe)
            acc["fevae"].update(ll + lfe)
        return {k: v.compute() for k, v in acc.items()}


def score_all_schemes(
    x: torch.Tensor,
    index: torch.Tensor,
    *,
    schemes: Iterable[str] | str = SCHEMES,
    **kwargs,
) -> dict[str, torch.Tensor]:
    """:func:`score_batch` for each scheme; keys ``log_p_{vae,fe,fevae}_{pr,apo}``."""
    if isinstance(schemes, str):
        schemes = [schemes]
    schemes = [_check_scheme(s) for s in schemes]
    if not schemes:
        raise FevaeError("no evaluation scheme selected", "set eval.schemes to a subset of [PR, APO]")
    out: dict[str, torch.Tensor] = {}
    for scheme in dict.fromkeys(schemes):
        for score, value in score_batch(x, index, scheme=scheme, **kwargs).items():
            out[f"log_p_{score}_{scheme.lower()}"] = value
    return out


def result_keys(schemes: Sequence[str] = SCHEMES) -> list[str]:
    """Keys produced by :func:`score_all_schemes` for ``schemes``, in order."""
    return [f"log_p_{score}_{_check_scheme(s).lower()}" for s in dict.fromkeys(s.upper() for s in schemes) for score in SCORES]
