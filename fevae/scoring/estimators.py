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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ContextManager

import torch
from torch import nn

from fevae.errors import FevaeError
from fevae.scoring.noise import SCHEMES, _check_scheme, noise_stream, per_sample_normal
from fevae.utils.timing import no_timing

SCORES = ("vae", "fe", "fevae")


# ---------------------------------------------------------------------------- log-mean-exp
def log_mean_exp(x: torch.Tensor, dim: int) -> torch.Tensor:
    """``log(mean(exp(x), dim))`` computed stably."""
    return torch.logsumexp(x, dim) - math.log(x.shape[dim])


#: an image whose S sample weights have an effective sample size below this is flagged: its
#: log-mean-exp is set by a handful of draws and its delta-method standard error cannot be trusted
ESS_FLAG = 5.0


def log_mean_exp_se(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Delta-method Monte-Carlo standard error (in nats) of :func:`log_mean_exp` over ``dim``.

    With weights ``w_s = exp(x_s)``, ``L = log mean_s w_s`` and ``SE(L) ≈ sd(w) / (sqrt(S) mean(w))``
    = ``sqrt((S r - 1) / (S - 1))`` with ``r = sum w² / (sum w)²`` (computed in log space); 0 when
    all weights are equal; NaN for ``S = 1``. Since ``r ≤ 1`` it can **never exceed 1 nat**, and it is
    exactly 1 when one weight dominates: heavy-tailed weights (the usual case for p_VAE under PR) are
    where it understates the error most (log-normal weights with σ = 10 nats and S = 20: SE ≤ 1 against
    a true spread of ~5 nats over repeated draws, and a downward bias of tens of nats it cannot see).
    Read it together with the effective sample size (:func:`log_mean_exp_ess`): an image with
    ESS < :data:`ESS_FLAG` has an error the delta method cannot size.
    """
    s = x.shape[dim]
    log_r = torch.logsumexp(2 * x, dim) - 2 * torch.logsumexp(x, dim)
    return _se_from_log_r(log_r, s)


def log_mean_exp_ess(x: torch.Tensor, dim: int) -> torch.Tensor:
    """Effective sample size ``(Σ w)² / Σ w²`` (Kish) of the weights ``w_s = exp(x_s)`` over ``dim``: S when
    all weights are equal, 1 when one dominates (computed in log space)."""
    return torch.exp(2 * torch.logsumexp(x, dim) - torch.logsumexp(2 * x, dim))


def _se_from_log_r(log_r: torch.Tensor, s: int) -> torch.Tensor:
    if s < 2:
        return torch.full_like(log_r, float("nan"))
    return torch.sqrt(torch.clamp((s * torch.exp(log_r) - 1.0) / (s - 1), min=0.0))


class RunningLogMeanExp:
    """Streaming :func:`log_mean_exp` over dim 0: ``update(chunk [s, ...])`` repeatedly, then
    ``compute() -> [...]`` equals ``log_mean_exp(torch.cat(chunks), 0)`` (up to rounding) and
    ``compute_se()`` equals :func:`log_mean_exp_se` of the same samples."""

    def __init__(self) -> None:
        self._lse: torch.Tensor | None = None
        self._lse2: torch.Tensor | None = None
        self.count = 0

    def update(self, chunk: torch.Tensor) -> None:
        if chunk.ndim < 1 or chunk.shape[0] == 0:
            raise ValueError("RunningLogMeanExp.update needs a non-empty chunk [s, ...]")
        lse, lse2 = torch.logsumexp(chunk, 0), torch.logsumexp(2 * chunk, 0)
        self._lse = lse if self._lse is None else torch.logaddexp(self._lse, lse)
        self._lse2 = lse2 if self._lse2 is None else torch.logaddexp(self._lse2, lse2)
        self.count += int(chunk.shape[0])

    def compute(self) -> torch.Tensor:
        if self._lse is None:
            raise ValueError("RunningLogMeanExp.compute called before any update")
        return self._lse - math.log(self.count)

    def compute_se(self) -> torch.Tensor:
        """Monte-Carlo standard error of :meth:`compute` (see :func:`log_mean_exp_se`)."""
        if self._lse is None:
            raise ValueError("RunningLogMeanExp.compute_se called before any update")
        return _se_from_log_r(self._lse2 - 2 * self._lse, self.count)

    def compute_ess(self) -> torch.Tensor:
        """Effective sample size of the weights seen so far (see :func:`log_mean_exp_ess`)."""
        if self._lse is None:
            raise ValueError("RunningLogMeanExp.compute_ess called before any update")
        return torch.exp(2 * self._lse - self._lse2)




def _check_positive_int(value, key: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise FevaeError(f"{key} must be an integer >= 1, got {value!r}", f"set {key}")
    return value


def _draw_latents(x, index, *, encode, scheme, seed, stream, latent_dim):
    """``(mu, std, dim, noise dtype)`` for a batch (mu/std are None for PR with a given latent_dim)."""
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
        dtype = mu.dtype
    else:
        dtype = x.dtype if x.is_floating_point() else torch.get_default_dtype()
    return mu, std, dim, dtype


def channels_last_decode(vae: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """``vae.decode`` (:class:`fevae.models.vae.VAE`) with the decoder's activations in channels-last
    memory format: the same computation, which oneDNN runs about twice as fast on this CPU; float32
    rounding differs from ``vae.decode``'s (per-image scores within 1e-4 relative; README). The
    decoder's ReLUs run in place on their convolution's fresh output (bit-identical, no allocation:
    about 17% less decoding time here). Scoring only (``eval.channels_last``): training keeps
    ``vae.decode``, so trained weights are unchanged."""
    layers = [torch.relu_ if isinstance(m, nn.ReLU) else m for m in vae.decoder]

    def decode(z: torch.Tensor) -> torch.Tensor:
        lead = z.shape[:-1]
        h = vae.decoder_input(z.reshape(-1, z.shape[-1])).view(-1, *vae._decoder_grid)
        h = h.contiguous(memory_format=torch.channels_last)
        for layer in layers:
            h = layer(h)
        return h.contiguous().view(*lead, *vae.image_shape)

    return decode


def sample_chunks(
    x: torch.Tensor,
    index: torch.Tensor,
    *,
    decode: Callable[[torch.Tensor], torch.Tensor],
    log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    phi: Callable[[torch.Tensor], torch.Tensor] | None = None,
    features: Mapping[str, Callable[[torch.Tensor], torch.Tensor]] | None = None,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    scheme: str,
    n_samples: int,
    chunk_size: int,
    seed: int,
    stream: int = 0,
    latent_dim: int | None = None,
    log_weights: bool = False,
    stopwatch: Callable[[str], ContextManager] = no_timing,
) -> Iterator[dict[str, torch.Tensor]]:
    """The model pass of the estimators, ``chunk_size`` samples at a time (the expensive part).

    Yields per chunk of ``s`` samples a dict with

    * ``"ll"``: ``log p(x | phi_x(z_s))`` ``[s, B]`` float64,
    * ``"f_phi/<name>"``: ``features[name](phi(decode(z_s)))`` ``[s, B, d_name]`` for each feature
      extractor (e.g. one per Jigsaw layer),
    * ``"log_w"`` (APO with ``log_weights=True``): importance weights
      ``log p(z_s) - log q(z_s | x)`` ``[s, B]`` float64 (for the IWAE estimate).

    Everything the mixtures need comes from here, so the chunks can be stored and scored later
    by :class:`ScoreAccumulator` against any mixture (what a sweep over ``fe.n``/``fe.C`` does).
    ``stopwatch`` (:class:`fevae.utils.timing.Stopwatch`) is charged ``<scheme>/decode`` (encoder,
    decoder, likelihood), ``<scheme>/features/<name>`` and ``<scheme>/log_w``. Runs under
    ``torch.no_grad()``.
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
    features = dict(features or {})
    if features and phi is None:
        raise FevaeError("feature extractors need phi (decoder output -> images)", "pass phi=vae.phi")
    batch = x.shape[0]
    with torch.no_grad():
        with stopwatch(f"{scheme}/decode"):
            mu, std, dim, noise_dtype = _draw_latents(x, index, encode=encode, scheme=scheme, seed=seed, stream=stream, latent_dim=latent_dim)
        nstream = noise_stream(stream, scheme)
        if log_weights and scheme == "APO":
            mu64, std64 = mu.double(), std.double()
        for start in range(0, n_samples, chunk_size):
            s = min(chunk_size, n_samples - start)
            with stopwatch(f"{scheme}/decode"):
                eps = per_sample_normal(index, seed, s, dim, stream=nstream, offset=start, device=x.device, dtype=noise_dtype)
                z = eps if scheme == "PR" else mu + std * eps
                h = decode(z)
                ll = log_likelihood(x, h).to(torch.float64)  # [s, B]
            if ll.shape != (s, batch):
                raise FevaeError(
                    f"log_likelihood returned shape {tuple(ll.shape)}, expected {(s, batch)}",
                    "sum the per-pixel log-likelihoods over all but the sample and batch dims",
                )
            chunk = {"ll": ll}
            if features:
                images = phi(h).reshape(s * batch, *x.shape[1:])
                for name, fn in features.items():
                    with stopwatch(f"{scheme}/features/{name}"):
                        chunk[f"f_phi/{name}"] = fn(images).reshape(s, batch, -1)
            if log_weights and scheme == "APO":
                with stopwatch(f"{scheme}/log_w"):
                    # the same z as above, in float64: log p(z) - log q(z|x) (Normal log-densities)
                    e64 = eps.to(torch.float64)
                    z64 = mu64 + std64 * e64
                    chunk["log_w"] = (-0.5 * z64.square() + 0.5 * e64.square() + torch.log(std64)).sum(-1)
            yield chunk


class ScoreAccumulator:
    """Turns :func:`sample_chunks` output into the log-mean-exp estimators (paper Eqs. 1-4).

    ``lp_x[name] = mixtures[name].component_log_prob(f_x)`` ``[B, C]`` per feature mixture.
    ``fe_names[name]`` / ``fevae_names[name]`` give the output key of ``log p_FE`` / ``log p_FEVAE``
    under mixture ``name`` (``None``: not reported). :meth:`compute` returns float64 ``[B]`` per
    key: ``"vae"``, the named fe/fevae scores, and ``"iwae"`` when the chunks carry ``log_w``.
    ``stopwatch`` is charged ``<prefix>mixture/<name>`` for each mixture's densities.
    Feeding the same chunks in the same order gives bit-identical results however they were
    produced (streamed or read back from a cache).
    """

    def __init__(
        self,
        mixtures: Mapping[str, object] | None = None,
        lp_x: Mapping[str, torch.Tensor] | None = None,
        fe_names: Mapping[str, str | None] | None = None,
        fevae_names: Mapping[str, str | None] | None = None,
        stopwatch: Callable[[str], ContextManager] = no_timing,
        prefix: str = "",
    ):
        self.stopwatch, self.prefix = stopwatch, prefix
        self.mixtures = dict(mixtures or {})
        self.lp_x = dict(lp_x or {})
        self.fe_names = dict(fe_names or {})
        self.fevae_names = dict(fevae_names or {})
        self.acc: dict[str, RunningLogMeanExp] = {}

    def _add(self, key: str | None, value: torch.Tensor) -> None:
        if key is not None:
            self.acc.setdefault(key, RunningLogMeanExp()).update(value)

    def update(self, chunk: Mapping[str, torch.Tensor]) -> None:
        ll = chunk["ll"].to(torch.float64)
        self._add("vae", ll)
        for name, mixture in self.mixtures.items():
            with self.stopwatch(f"{self.prefix}mixture/{name}"):
                lfe = mixture.log_p_fe_from_log_prob(self.lp_x[name], chunk[f"f_phi/{name}"]).to(ll.device)  # [s, B]
            self._add(self.fe_names.get(name), lfe)
            self._add(self.fevae_names.get(name, name), ll + lfe)
        if "log_w" in chunk:
            self._add("iwae", ll + chunk["log_w"].to(ll.device))

    def compute(self) -> dict[str, torch.Tensor]:
        return {k: v.compute() for k, v in self.acc.items()}

    def compute_se(self) -> dict[str, torch.Tensor]:
        """Per-item Monte-Carlo standard error of each key of :meth:`compute`."""
        return {k: v.compute_se() for k, v in self.acc.items()}

    def compute_ess(self) -> dict[str, torch.Tensor]:
        """Per-item effective sample size of the weights of each key of :meth:`compute`."""
        return {k: v.compute_ess() for k, v in self.acc.items()}


def score_batch(
    x: torch.Tensor,
    index: torch.Tensor,
    *,
    decode: Callable[[torch.Tensor], torch.Tensor],
    log_likelihood: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    phi: Callable[[torch.Tensor], torch.Tensor] | None = None,
    features: Callable[[torch.Tensor], torch.Tensor] | None = None,
    mixture=None,
    encode: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]] | None = None,
    scheme: str,
    n_samples: int,
    chunk_size: int,
    seed: int,
    stream: int = 0,
    latent_dim: int | None = None,
    extra: Mapping[str, tuple[Callable[[torch.Tensor], torch.Tensor], object]] | None = None,
    iwae: bool = False,
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

    ``mixture`` is a :class:`fevae.features.density.TorchMixture`; without it (and ``features``) only
    ``"vae"`` is computed (p_VAE alone). ``extra`` maps more output names to ``(features,
    mixture)`` pairs (e.g. ``{"fevae_l2": (layer-2 features, layer-2 mixture)}``): each adds
    ``log p_FEVAE`` under that mixture. ``iwae=True`` under APO adds ``"iwae"``: the importance
    weighted estimate ``log (1/S) sum_s p(x|z_s) p(z_s) / q(z_s|x)`` from the *same* draws.

    Noise: :func:`per_sample_normal` with stream :func:`noise_stream(stream, scheme) <noise_stream>`;
    sample ``s`` of item ``b`` is the same for every ``chunk_size``. Runs under ``torch.no_grad()``.
    """
    fns: dict[str, Callable] = {}
    mixtures: dict[str, object] = {}
    if mixture is not None:
        if features is None:
            raise FevaeError("a feature mixture needs its feature extractor", "pass features=... with mixture=...")
        fns[""], mixtures[""] = features, mixture
    for name, (fn, mix) in dict(extra or {}).items():
        fns[name], mixtures[name] = fn, mix
    with torch.no_grad():
        lp_x = {name: mixtures[name].component_log_prob(fn(x)) for name, fn in fns.items()}  # [B, C] once per batch
        acc = ScoreAccumulator(mixtures, lp_x, fe_names={"": "fe"}, fevae_names={"": "fevae"})
        for chunk in sample_chunks(
            x, index, decode=decode, log_likelihood=log_likelihood, phi=phi, features=fns, encode=encode,
            scheme=scheme, n_samples=n_samples, chunk_size=chunk_size, seed=seed, stream=stream,
            latent_dim=latent_dim, log_weights=iwae,
        ):
            acc.update(chunk)
        return acc.compute()


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
