"""Monte-Carlo estimators of fevae.scoring.estimators against a linear-Gaussian model with exact marginals.

Toy model: z ~ N(0, I_L), x | z ~ N(W z + b, sigma^2 I_D) with L = 2, D = 3. The "decoder output"
h = W z + b is also the "image" phi(h) and the feature vector (identity feature extractor), and
a small BGM is fitted to samples of x, so p_FE is a real Eq. (3) evaluation.

Exact integrals (Gaussian convolution):
  PR : int N(x | Wz + b, s2 I) N(z | 0, I) dz = N(x | b,      W W^T   + s2 I)
  APO: int N(x | Wz + b, s2 I) N(z | m, V) dz = N(x | W m + b, W V W^T + s2 I)
The Monte-Carlo average of w_s = N(x | W z_s + b, s2 I) has relative variance
r = E[w^2] / E[w]^2 - 1 with (same convolution, N(x|m, s2 I)^2 = (4 pi s2)^(-D/2) N(x|m, s2/2 I))
  E[w^2] = (4 pi s2)^(-D/2) N(x | W m + b, W V W^T + s2/2 I)      (m = 0, V = I for PR)
so by the delta method log(mean w) has standard deviation sqrt(r / S) and bias ~ -r / (2 S).
The tests allow 5 standard deviations plus the bias.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy.stats import multivariate_normal

from fevae.errors import FevaeError
from fevae.features.bgm import fit_mixture
from fevae.features.density import TorchMixture
from fevae.scoring.estimators import RunningLogMeanExp, log_mean_exp, result_keys, score_all_schemes, score_batch
from fevae.scoring.noise import noise_stream, per_sample_normal

L, D, SIGMA = 2, 3, 0.6
W = np.array([[1.0, -0.5], [0.3, 0.8], [-0.7, 0.4]])
BIAS = np.array([0.5, -1.0, 0.2])
SEED = 1234


def _decode(z):
    return z @ torch.from_numpy(W).to(z).T + torch.from_numpy(BIAS).to(z)


def _log_likelihood(x, h):
    return torch.distributions.Normal(h, SIGMA).log_prob(x).sum(-1)


def _identity(t):
    return t


def _encode(x):
    mu = 0.5 * x[:, :2] - 0.1
    logvar = torch.stack([torch.full_like(x[:, 0], math.log(0.3)), -1.0 + 0.2 * torch.tanh(x[:, 2])], -1)
    return mu, logvar


@pytest.fixture(scope="module")
def toy():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(400, L))
    xs = z @ W.T + BIAS + SIGMA * rng.normal(size=(400, D))
    arrays = fit_mixture(xs, n_components=3, covariance_type="full", random_state=0)
    x = torch.from_numpy(xs[:8].copy())
    index = torch.arange(100, 108)
    return arrays, TorchMixture(arrays), x, index


def _kwargs(mixture, **over):
    kw = dict(
        decode=_decode,
        log_likelihood=_log_likelihood,
        phi=_identity,
        features=_identity,
        mixture=mixture,
        encode=_encode,
        seed=SEED,
        stream=3,
    )
    kw.update(over)
    return kw


def _exact(x: np.ndarray, m: np.ndarray, v: np.ndarray, s2: float):
    """log int N(x | Wz+b, s2 I) N(z | m, V) dz and the relative variance r of the MC weights."""
    out, r = [], []
    for xi, mi, vi in zip(x, m, v):
        mean = W @ mi + BIAS
        cov = W @ vi @ W.T
        log_p = multivariate_normal(mean, cov + s2 * np.eye(D)).logpdf(xi)
        log_m2 = -0.5 * D * math.log(4 * math.pi * s2) + multivariate_normal(mean, cov + 0.5 * s2 * np.eye(D)).logpdf(xi)
        out.append(log_p)
        r.append(math.exp(log_m2 - 2 * log_p) - 1.0)
    return np.array(out), np.array(r)


def _check_against_exact(est: np.ndarray, exact: np.ndarray, r: np.ndarray, s: int):
    tol = 5.0 * np.sqrt(r / s) + r / s
    assert np.all(r / s < 1e-2), "test setup: Monte-Carlo variance too large for a meaningful check"
    assert np.all(np.abs(est - exact) <= tol), (est - exact, tol)


def test_pr_vae_estimate_matches_exact_marginal(toy):
    _, mixture, x, index = toy
    s = 20_000
    out = score_batch(x, index, **_kwargs(mixture), scheme="PR", n_samples=s, chunk_size=1000)
    assert all(v.dtype == torch.float64 and v.shape == (8,) for v in out.values())
    exact, r = _exact(x.numpy(), np.zeros((8, L)), np.stack([np.eye(L)] * 8), SIGMA**2)
    _check_against_exact(out["vae"].numpy(), exact, r, s)


def test_apo_vae_estimate_matches_exact_convolution(toy):
    _, mixture, x, index = toy
    s = 20_000
    out = score_batch(x, index, **_kwargs(mixture), scheme="APO", n_samples=s, chunk_size=1000)
    mu, logvar = _encode(x)
    v = np.stack([np.diag(row) for row in logvar.exp().numpy()])
    exact, r = _exact(x.numpy(), mu.numpy(), v, SIGMA**2)
    _check_against_exact(out["vae"].numpy(), exact, r, s)
    # APO is the plain predictive integral, not an importance-weighted estimate of p(x)
    exact_pr, _ = _exact(x.numpy(), np.zeros((8, L)), np.stack([np.eye(L)] * 8), SIGMA**2)
    assert np.max(np.abs(exact - exact_pr)) > 0.1


@pytest.mark.parametrize("scheme", ["PR", "APO"])
def test_fe_and_fevae_match_direct_computation(toy, scheme):
    arrays, mixture, x, index = toy
    s = 64
    out = score_batch(x, index, **_kwargs(mixture), scheme=scheme, n_samples=s, chunk_size=10)
    eps = per_sample_normal(index, SEED, s, L, stream=noise_stream(3, scheme), dtype=torch.float64).numpy()
    if scheme == "PR":
        z = eps
    else:
        mu, logvar = _encode(x)
        z = mu.numpy() + np.exp(0.5 * logvar.numpy()) * eps
    h = z @ W.T + BIAS  # [s, B, D]
    ll = multivariate_normal(np.zeros(D), SIGMA**2 * np.eye(D)).logpdf(x.numpy()[None] - h)
    bgm = arrays.to_sklearn()
    comp = bgm.predict(h.reshape(-1, D)).reshape(s, -1)

    def comp_logpdf(points, c):
        return multivariate_normal(arrays.means[c], arrays.covariances[c]).logpdf(points)

    lfe = np.empty((s, len(x)))
    for i in range(s):
        for b in range(len(x)):
            c = comp[i, b]
            lfe[i, b] = comp_logpdf(x.numpy()[b], c) + comp_logpdf(h[i, b], c)

    def lme(a):
        return np.logaddexp.reduce(a, axis=0) - math.log(a.shape[0])

    np.testing.assert_allclose(out["vae"].numpy(), lme(ll), rtol=1e-10)
    np.testing.assert_allclose(out["fe"].numpy(), lme(lfe), rtol=1e-10)
    np.testing.assert_allclose(out["fevae"].numpy(), lme(ll + lfe), rtol=1e-10)


@pytest.mark.parametrize("scheme", ["PR", "APO"])
def test_chunking_invariance(toy, scheme):
    _, mixture, x, index = toy
    s = 50
    outs = [score_batch(x, index, **_kwargs(mixture), scheme=scheme, n_samples=s, chunk_size=c) for c in (1, 7, s, 10 * s)]
    for other in outs[1:]:
        for k in ("vae", "fe", "fevae"):
            torch.testing.assert_close(other[k], outs[0][k], rtol=1e-12, atol=0)


def test_batch_composition_invariance(toy):
    _, mixture, x, index = toy
    full = score_batch(x, index, **_kwargs(mixture), scheme="APO", n_samples=40, chunk_size=16)
    perm = torch.tensor([5, 2, 7, 0, 1, 6, 3, 4])
    shuffled = score_batch(x[perm], index[perm], **_kwargs(mixture), scheme="APO", n_samples=40, chunk_size=16)
    for k in full:
        torch.testing.assert_close(shuffled[k], full[k][perm], rtol=1e-12, atol=0)
    # "another DDP rank" scoring a single item of the batch
    alone = score_batch(x[3:4], index[3:4], **_kwargs(mixture), scheme="APO", n_samples=40, chunk_size=16)
    for k in full:
        torch.testing.assert_close(alone[k], full[k][3:4], rtol=1e-12, atol=0)


def test_pr_without_encoder_needs_latent_dim(toy):
    _, mixture, x, index = toy
    a = score_batch(x, index, **_kwargs(mixture, encode=None), latent_dim=L, scheme="PR", n_samples=20, chunk_size=8)
    b = score_batch(x, index, **_kwargs(mixture), scheme="PR", n_samples=20, chunk_size=8)
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=0)
    with pytest.raises(FevaeError):
        score_batch(x, index, **_kwargs(mixture, encode=None), scheme="PR", n_samples=20, chunk_size=8)
    with pytest.raises(FevaeError, match="APO"):
        score_batch(x, index, **_kwargs(mixture, encode=None), latent_dim=L, scheme="APO", n_samples=20, chunk_size=8)


def test_score_all_schemes_keys_and_values(toy):
    _, mixture, x, index = toy
    out = score_all_schemes(x, index, schemes=["PR", "apo"], **_kwargs(mixture), n_samples=16, chunk_size=5)
    assert list(out) == result_keys(["PR", "APO"]) == [
        "log_p_vae_pr", "log_p_fe_pr", "log_p_fevae_pr", "log_p_vae_apo", "log_p_fe_apo", "log_p_fevae_apo"
    ]
    apo = score_batch(x, index, **_kwargs(mixture), scheme="APO", n_samples=16, chunk_size=5)
    torch.testing.assert_close(out["log_p_fevae_apo"], apo["fevae"], rtol=0, atol=0)
    assert not torch.equal(out["log_p_vae_pr"], out["log_p_vae_apo"])


@pytest.mark.parametrize(
    "over, match",
    [
        (dict(scheme="IS"), r"eval\.schemes"),
        (dict(n_samples=0), r"eval\.n_samples"),
        (dict(chunk_size=0), r"eval\.chunk_size"),
        (dict(n_samples=2.0), r"eval\.n_samples"),
    ],
)
def test_invalid_arguments(toy, over, match):
    _, mixture, x, index = toy
    kw = dict(scheme="PR", n_samples=4, chunk_size=2)
    kw.update(over)
    with pytest.raises(FevaeError, match=match):
        score_batch(x, index, **_kwargs(mixture), **kw)
    with pytest.raises(FevaeError, match=r"eval\.schemes"):
        score_all_schemes(x, index, schemes=["PR", "XX"], **_kwargs(mixture), n_samples=4, chunk_size=2)


def test_image_shaped_pipeline_smoke():
    """Shapes as used by the real models: h and images [s, B, 1, 28, 28]."""
    torch.manual_seed(0)
    lat, d = 4, 6
    dec = torch.nn.Linear(lat, 28 * 28).double()
    feat = torch.nn.Linear(28 * 28, d).double()
    x = (torch.rand(5, 1, 28, 28, dtype=torch.float64) > 0.5).double()
    feats = feat(torch.rand(200, 28 * 28, dtype=torch.float64)).detach().numpy()
    mixture = TorchMixture(fit_mixture(feats, n_components=3, covariance_type="diag"))
    calls = []

    def decode(z):
        calls.append(z.shape)
        return dec(z).reshape(*z.shape[:2], 1, 28, 28)

    def log_likelihood(x, h):
        return torch.distributions.Bernoulli(logits=h).log_prob(x).flatten(2).sum(-1)

    def features(images):
        assert images.shape[1:] == (1, 28, 28)
        return feat(images.flatten(1))

    out = score_all_schemes(
        x, torch.arange(5), decode=decode, log_likelihood=log_likelihood, phi=torch.sigmoid,
        features=features, mixture=mixture, encode=lambda t: (torch.zeros(len(t), lat, dtype=t.dtype),) * 2,
        n_samples=9, chunk_size=4, seed=0,
    )
    assert calls[:3] == [(4, 5, lat), (4, 5, lat), (1, 5, lat)]
    assert all(torch.isfinite(v).all() and v.shape == (5,) and v.dtype == torch.float64 for v in out.values())


# ---------------------------------------------------------------------------- noise
def test_per_sample_normal_is_batch_composition_invariant():
    idx = torch.tensor([3, 17, 5, 1000])
    batch = per_sample_normal(idx, seed=7, n=30, dim=5, stream=1)
    assert batch.shape == (30, 4, 5) and batch.dtype == torch.float32
    for b, i in enumerate(idx.tolist()):
        alone = per_sample_normal(torch.tensor([i]), seed=7, n=30, dim=5, stream=1)
        torch.testing.assert_close(alone[:, 0], batch[:, b], rtol=0, atol=0)
    other = per_sample_normal(torch.tensor([5, 3, 3]), seed=7, n=30, dim=5, stream=1)
    torch.testing.assert_close(other[:, 0], batch[:, 2], rtol=0, atol=0)
    torch.testing.assert_close(other[:, 1], other[:, 2], rtol=0, atol=0)
    assert not torch.equal(batch[:, 0], batch[:, 1])


def test_per_sample_normal_offsets_seeds_streams_dtypes():
    idx = torch.tensor([0, 7919])
    ref = per_sample_normal(idx, seed=1, n=200, dim=3, dtype=torch.float64)
    for offset, n in [(0, 1), (5, 10), (60, 10), (63, 66), (128, 72)]:
        part = per_sample_normal(idx, seed=1, n=n, dim=3, offset=offset, dtype=torch.float64)
        torch.testing.assert_close(part, ref[offset : offset + n], rtol=0, atol=0)
    torch.testing.assert_close(per_sample_normal(idx, seed=1, n=200, dim=3), ref.float(), rtol=0, atol=0)
    assert not torch.allclose(per_sample_normal(idx, seed=2, n=200, dim=3, dtype=torch.float64), ref)
    s1 = per_sample_normal(idx, seed=1, n=200, dim=3, stream=1, dtype=torch.float64)
    assert not torch.allclose(s1, ref)
    # no collision of linear-hash type: (stream 1, index 0) vs (stream 0, index 7919)
    assert not torch.allclose(s1[:, 0], ref[:, 1])
    assert per_sample_normal(idx, seed=1, n=0, dim=3).shape == (0, 2, 3)


def test_per_sample_normal_is_standard_normal():
    z = per_sample_normal(torch.arange(64), seed=0, n=500, dim=4, dtype=torch.float64).reshape(-1)
    n = z.numel()
    assert abs(z.mean().item()) < 5 / math.sqrt(n)
    assert abs(z.var().item() - 1.0) < 5 * math.sqrt(2 / n)


# ---------------------------------------------------------------------------- log-mean-exp
def test_log_mean_exp_and_running_version():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(37, 4, 3, generator=g, dtype=torch.float64) * 50
    x[:, 0, 0] = -math.inf
    x[3, 1, 1] = 1000.0
    m = x.amax(0).clamp_min(-1e300)  # finite shift, also for the all -inf column
    ref = torch.log(torch.exp(x - m).mean(0)) + m
    full = log_mean_exp(x, 0)
    torch.testing.assert_close(full, ref, rtol=1e-12, atol=0)
    assert full[0, 0] == -math.inf
    for sizes in ([37], [1] * 37, [10, 20, 7], [36, 1]):
        run = RunningLogMeanExp()
        for chunk in torch.split(x, sizes):
            run.update(chunk)
        assert run.count == 37
        torch.testing.assert_close(run.compute(), full, rtol=1e-13, atol=0)
    assert log_mean_exp(torch.zeros(5, 2), 1).abs().max() == 0
    with pytest.raises(ValueError):
        RunningLogMeanExp().compute()


# ---------------------------------------------------------------------------- detectors (issue #6)
def test_iwae_from_the_apo_draws_matches_the_baseline_and_the_exact_marginal(toy):
    """IWAE reuses the APO draws: equal to fevae.scoring.baselines.iwae_score (torch.distributions
    densities), and with many samples close to the exact marginal N(x | b, W W^T + s2 I)."""
    from fevae.scoring.baselines import iwae_score

    class ToyVAE:
        encode, decode, log_likelihood = staticmethod(_encode), staticmethod(_decode), staticmethod(_log_likelihood)

    _, mixture, x, index = toy
    out = score_batch(x, index, **_kwargs(mixture), scheme="APO", n_samples=16, chunk_size=5, iwae=True)
    ref = iwae_score(x, index, vae=ToyVAE, n_samples=16, chunk_size=7, seed=SEED, stream=3)
    np.testing.assert_allclose(out["iwae"].numpy(), ref.numpy(), rtol=1e-10)
    assert set(out) == {"vae", "fe", "fevae", "iwae"}
    many = score_batch(x, index, **_kwargs(None, features=None), scheme="APO", n_samples=64000, chunk_size=8000, iwae=True)["iwae"]
    exact = multivariate_normal(BIAS, W @ W.T + SIGMA**2 * np.eye(D)).logpdf(x.numpy())
    np.testing.assert_allclose(many.numpy(), exact, atol=0.02)
    # IWAE is a tighter bound than the plain MC average of p(x|z) under q only in expectation; but
    # it must differ from it (the weights p(z)/q(z|x) are not 1)
    assert not torch.allclose(out["iwae"], out["vae"])


def test_vae_alone_and_extra_mixtures(toy):
    """mixture=None computes p_VAE only (same numbers); an extra (features, mixture) pair gives
    what that pair gives as the main mixture."""
    arrays, mixture, x, index = toy
    full = score_batch(x, index, **_kwargs(mixture), scheme="PR", n_samples=12, chunk_size=5)
    alone = score_batch(x, index, **_kwargs(None, features=None), scheme="PR", n_samples=12, chunk_size=5)
    assert set(alone) == {"vae"}
    torch.testing.assert_close(alone["vae"], full["vae"], rtol=0, atol=0)
    squash = lambda t: torch.tanh(t)  # noqa: E731 - another "layer"
    rng = np.random.default_rng(1)
    other = TorchMixture(fit_mixture(np.tanh(rng.normal(size=(300, D))), n_components=2, random_state=0))
    both = score_batch(x, index, **_kwargs(mixture), extra={"fevae_l2": (squash, other)}, scheme="PR", n_samples=12, chunk_size=5)
    main = score_batch(x, index, **_kwargs(other, features=squash), scheme="PR", n_samples=12, chunk_size=5)
    torch.testing.assert_close(both["fevae_l2"], main["fevae"], rtol=0, atol=0)
    torch.testing.assert_close(both["fevae"], full["fevae"], rtol=0, atol=0)
    assert "fe_l2" not in both


def test_channels_last_decoding_is_the_same_computation_within_float32_rounding():
    """eval.channels_last: the decoder in channels-last memory format gives the plain decoder's logits and
    log-likelihoods up to float32 rounding (the documented tolerance: 1e-6 relative on log p(x|z))."""
    from fevae.models.vae import VAE
    from fevae.scoring.estimators import channels_last_decode

    for shape in ((1, 28, 28), (3, 32, 32)):
        torch.manual_seed(0)
        vae = VAE(likelihood={"name": "gaussian", "sigma": "scalar"}, image_shape=shape).eval()
        z = torch.randn(3, 17, 20)
        x = torch.rand(17, *shape)
        with torch.no_grad():
            plain, fast = vae.decode(z), channels_last_decode(vae)(z)
            assert fast.shape == plain.shape == (3, 17, *shape) and fast.is_contiguous()
            torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
            ll_plain, ll_fast = vae.log_likelihood(x, plain).double(), vae.log_likelihood(x, fast).double()
            assert ((ll_fast - ll_plain).abs() / ll_plain.abs()).max() < 1e-6
            # its in-place ReLUs are bit-identical to the decoder's own modules run in channels-last format
            z_before = z.clone()
            h = vae.decoder_input(z.reshape(-1, z.shape[-1])).view(-1, *vae._decoder_grid)
            modules = vae.decoder(h.contiguous(memory_format=torch.channels_last)).contiguous().view(*z.shape[:-1], *shape)
            assert torch.equal(fast, modules) and torch.equal(z, z_before)
