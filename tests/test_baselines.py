"""Baseline OOD scores of fevae.scoring.baselines: IWAE, input complexity, likelihood regret.

Small random VAEs and a few images keep the file fast. IWAE is also checked against a
linear-Gaussian toy model whose encoder is the exact posterior: then every importance weight
p(x|z) p(z) / q(z|x) equals p(x), so the IWAE estimate is exactly log p(x) for every K.
"""

from __future__ import annotations

import copy
import io
import math

import numpy as np
import pytest
import torch
from PIL import Image
from torch.distributions import MultivariateNormal, Normal

from fevae.scoring.baselines import (
    compressed_bits,
    input_complexity_score,
    iwae_score,
    likelihood_regret_score,
    to_uint8,
)
from fevae.errors import FevaeError
from fevae.models.vae import VAE
from fevae.scoring.estimators import log_mean_exp
from fevae.scoring.noise import noise_stream, per_sample_normal

SEED, STREAM = 3, 1
RGB = (3, 32, 32)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Single-threaded torch: the small per-image convolutions of likelihood regret slow down
    ~10x from thread contention when the (2-core) machine is busy."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def make_vae(likelihood: str = "gaussian", seed: int = 0, image_shape=(1, 28, 28)) -> VAE:
    torch.manual_seed(seed)
    return VAE({"name": likelihood}, image_shape=image_shape, latent_dim=4, hidden_dim=16).eval()


def images(n: int, seed: int = 0, binary: bool = False, shape=(1, 28, 28)) -> torch.Tensor:
    x = torch.rand(n, *shape, generator=torch.Generator().manual_seed(seed))
    return (x > 0.5).float() if binary else x


def reference_log_weights(vae, x: torch.Tensor, index: torch.Tensor, k: int) -> torch.Tensor:
    """log p(x|z_k) + log p(z_k) - log q(z_k|x) ``[k, B]``, densities as MultivariateNormal."""
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        mu, std = mu.double(), (0.5 * logvar.double()).exp()
        eps = per_sample_normal(index, SEED, k, mu.shape[-1], stream=noise_stream(STREAM, "APO"), dtype=torch.float64)
        z = mu + std * eps
        q = MultivariateNormal(mu, scale_tril=torch.diag_embed(std))
        prior = MultivariateNormal(torch.zeros_like(mu), scale_tril=torch.diag_embed(torch.ones_like(std)))
        ll = vae.log_likelihood(x, vae.decode(z.to(x.dtype))).double()
        return ll + prior.log_prob(z) - q.log_prob(z)


def iwae(vae, x, index, k: int, chunk: int | None = None) -> torch.Tensor:
    return iwae_score(x, index, vae=vae, n_samples=k, chunk_size=chunk or k, seed=SEED, stream=STREAM)


# ---------------------------------------------------------------------------- IWAE
def test_iwae_k1_is_single_sample_elbo_and_k_is_log_mean_exp_of_weights():
    # float64 model: the decoder's float32 rounding would depend on the number of samples decoded
    vae, x, index = make_vae().double(), images(3).double(), torch.tensor([5, 0, 9])
    ref = reference_log_weights(vae, x, index, 64)
    one = iwae(vae, x, index, 1)
    assert one.dtype == torch.float64 and one.shape == (3,)
    torch.testing.assert_close(one, ref[0], rtol=1e-9, atol=1e-9)
    many = iwae(vae, x, index, 64, chunk=10)
    torch.testing.assert_close(many, log_mean_exp(ref, 0), rtol=1e-9, atol=1e-9)
    assert (many >= ref.mean(0)).all()  # Jensen: IWAE_K >= mean of the K single-sample ELBOs


def test_iwae_on_colour_images():
    vae, x, index = make_vae(image_shape=RGB).double(), images(2, shape=RGB).double(), torch.tensor([3, 1])
    ref = reference_log_weights(vae, x, index, 8)
    torch.testing.assert_close(iwae(vae, x, index, 8, chunk=3), log_mean_exp(ref, 0), rtol=1e-9, atol=1e-9)


def test_iwae_increases_with_k():
    vae, x, index = make_vae(), images(4, seed=1), torch.arange(4)
    assert iwae(vae, x, index, 256, chunk=64).mean() > iwae(vae, x, index, 1).mean()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_iwae_chunk_and_batch_invariance(dtype):
    """Exact (1e-10) in float64; in float32 the decoder's rounding depends on how many samples it
    decodes at once (CPU convolution kernels), so only float32 precision is expected."""
    vae, x, index = make_vae("bernoulli").to(dtype), images(3, seed=2, binary=True).to(dtype), torch.tensor([7, 2, 4])
    tol = 1e-10 if dtype == torch.float64 else 1e-7 * 600  # |score| ~ 550 nats
    scores = [iwae(vae, x, index, 20, chunk) for chunk in (1, 7, 20)]
    for s in scores[1:]:
        assert (s - scores[0]).abs().max() <= tol
    alone = iwae(vae, x[1:2], index[1:2], 20, 7)
    assert (alone - scores[0][1:2]).abs().max() <= tol
    assert not torch.equal(scores[0], iwae_score(x, index, vae=vae, n_samples=20, chunk_size=7, seed=SEED + 1,
                                                 stream=STREAM))


class ToyLinearGaussian:
    """z ~ N(0, I_2), x | z ~ N(W z + b, s^2 I_3) with orthogonal columns of W, so the exact
    posterior N(m(x), V) has diagonal V = (I + W^T W / s^2)^-1 and m(x) = V W^T (x - b) / s^2."""

    W = torch.tensor([[1.0, 1.0], [1.0, -1.0], [0.5, 0.0]], dtype=torch.float64)
    b = torch.tensor([0.5, -1.0, 0.2], dtype=torch.float64)
    s = 0.6

    def __init__(self) -> None:
        self.v = 1.0 / (1.0 + (self.W**2).sum(0) / self.s**2)  # diag(V); W^T W is diagonal

    def encode(self, x):
        return (x - self.b) @ self.W * (self.v / self.s**2), self.v.log().expand(x.shape[0], -1)

    def decode(self, z):
        return z @ self.W.T + self.b

    def log_likelihood(self, x, h):
        return Normal(h, self.s).log_prob(x).sum(-1)

    def log_px(self, x):
        cov = self.W @ self.W.T + self.s**2 * torch.eye(3, dtype=torch.float64)
        return MultivariateNormal(self.b, cov).log_prob(x)


def test_iwae_is_exact_with_the_exact_posterior():
    toy = ToyLinearGaussian()
    assert abs(float(toy.W[:, 0] @ toy.W[:, 1])) == 0.0
    x = torch.tensor([[0.0, 0.0, 0.0], [1.5, -2.0, 0.7], [-3.0, 2.5, 1.0]], dtype=torch.float64)
    index = torch.arange(3)
    for k, chunk in ((1, 1), (5, 2)):
        torch.testing.assert_close(iwae(toy, x, index, k, chunk), toy.log_px(x), rtol=0, atol=1e-10)


def test_iwae_errors():
    vae, x = make_vae(), images(2)
    with pytest.raises(FevaeError, match="eval.n_samples"):
        iwae(vae, x, torch.arange(2), 0)
    with pytest.raises(FevaeError, match="one dataset index"):
        iwae(vae, x, torch.arange(3), 2)
    toy = ToyLinearGaussian()
    toy.log_likelihood = lambda x, h: torch.full(h.shape[:-1], float("nan"), dtype=torch.float64)
    with pytest.raises(FevaeError, match="NaN/inf"):
        iwae(toy, torch.zeros(2, 3, dtype=torch.float64), torch.arange(2), 2)


# ---------------------------------------------------------------------------- input complexity
def test_to_uint8():
    x = torch.tensor([0.0, 1.0, 0.5, 0.2, 1 / 255, 1.0000001]).repeat(28 * 28 // 6 + 1)[: 28 * 28]
    out = to_uint8(x.view(1, 1, 28, 28))
    assert out.dtype == np.uint8 and out.shape == (1, 28, 28)
    np.testing.assert_array_equal(out.ravel()[:6], [0, 255, 128, 51, 1, 255])
    assert set(np.unique(to_uint8(images(2, binary=True)))) == {0, 255}
    for bad in (torch.full((1, 1, 28, 28), -0.1), torch.full((1, 1, 28, 28), float("nan")), torch.zeros(1, 28, 28),
                torch.full((1, 3, 32, 32), 1.1)):
        with pytest.raises(FevaeError):
            to_uint8(bad)


def test_to_uint8_colour_is_channels_last():
    x = images(2, shape=RGB)
    out = to_uint8(x)
    assert out.dtype == np.uint8 and out.shape == (2, 32, 32, 3)
    for c in range(3):  # each channel as its own greyscale image
        np.testing.assert_array_equal(out[..., c], to_uint8(x[:, c : c + 1]))
    np.testing.assert_array_equal(out[1, 5, 7], np.round(x[1, :, 5, 7].double().numpy() * 255).astype(np.uint8))
    for channels in (2, 4):
        with pytest.raises(FevaeError, match="C = 1 .greyscale. or 3 .RGB."):
            to_uint8(torch.zeros(1, channels, 32, 32))


def _png_bits_by_hand(channels: list[np.ndarray]) -> float:
    """PNG code length in bits of one image given as separate 2-D uint8 channels, built with PIL
    (one "L" image per channel, merged to "RGB" when there are three)."""
    bands = [Image.fromarray(np.ascontiguousarray(ch)) for ch in channels]
    image = bands[0] if len(bands) == 1 else Image.merge("RGB", bands)
    buf = io.BytesIO()
    image.save(buf, format="PNG", optimize=True)
    return 8.0 * len(buf.getvalue())


def test_input_complexity_of_colour_images_matches_pil():
    smooth = np.broadcast_to(np.arange(32, dtype=np.uint8)[None, :, None] * 8, (32, 32, 3))
    rgb = np.stack([np.zeros((32, 32, 3), np.uint8), smooth,
                    np.random.default_rng(1).integers(0, 256, (32, 32, 3), dtype=np.uint8)])
    rgb = to_uint8(torch.from_numpy(rgb).permute(0, 3, 1, 2).double() / 255)  # round trip through to_uint8
    bits = compressed_bits(rgb)
    expected = np.array([_png_bits_by_hand([im[..., c] for c in range(3)]) for im in rgb])
    np.testing.assert_array_equal(bits, expected)
    assert bits[0] < bits[1] < bits[2] and bits[2] > 8 * 32 * 32 * 3  # noise is incompressible
    log_px = torch.tensor([-10.0, -3000.0, -9000.0], dtype=torch.float64)
    torch.testing.assert_close(input_complexity_score(log_px, rgb), log_px + torch.from_numpy(expected) * math.log(2.0),
                               rtol=0, atol=0)
    grey = to_uint8(images(2))  # greyscale: unchanged, the "L" PNG
    np.testing.assert_array_equal(compressed_bits(grey), [_png_bits_by_hand([im]) for im in grey])
    for bad in (np.zeros((1, 32, 32, 4), np.uint8), np.zeros((1, 3, 32, 32), np.uint8), np.zeros((32, 32), np.uint8)):
        with pytest.raises(FevaeError):
            compressed_bits(bad)


def test_compressed_bits_and_input_complexity():
    zeros = np.zeros((1, 28, 28), np.uint8)
    noise = np.random.default_rng(0).integers(0, 256, (2, 28, 28), dtype=np.uint8)
    batch = np.concatenate([zeros, noise])
    bits = compressed_bits(batch)
    assert bits.dtype == np.float64 and bits.shape == (3,)
    assert bits[0] < bits[1] and bits[0] < bits[2] and bits[1] > 8 * 28 * 28  # noise is incompressible
    assert (bits % 8 == 0).all()
    np.testing.assert_array_equal(bits, compressed_bits(batch))  # deterministic
    np.testing.assert_array_equal(bits[1:2], compressed_bits(noise[:1]))  # per image
    log_px = torch.tensor([-10.0, -2000.0, -2100.0], dtype=torch.float32)
    score = input_complexity_score(log_px, batch)
    assert score.dtype == torch.float64
    assert torch.equal(score, log_px.double() + torch.from_numpy(bits) * math.log(2.0))
    with pytest.raises(FevaeError):
        input_complexity_score(log_px[:2], batch)
    with pytest.raises(FevaeError):
        compressed_bits(batch.astype(np.float32))


# ---------------------------------------------------------------------------- likelihood regret
def regret(vae, x, index, **kwargs) -> torch.Tensor:
    return likelihood_regret_score(x, index, vae=vae, seed=SEED, stream=STREAM, **kwargs)


def test_likelihood_regret_zero_steps_and_validation():
    vae, x, index = make_vae(), images(2), torch.arange(2)
    score = regret(vae, x, index, steps=0)
    assert score.dtype == torch.float64 and torch.equal(score, torch.zeros(2, dtype=torch.float64))
    with pytest.raises(FevaeError, match="eval.regret_steps"):
        regret(vae, x, index, steps=-1)
    with pytest.raises(FevaeError, match="eval.regret_lr"):
        regret(vae, x, index, steps=1, lr=0.0)
    with pytest.raises(FevaeError, match="eval.regret_samples"):
        regret(vae, x, index, steps=1, n_samples=0)


def test_likelihood_regret_on_colour_images():
    vae, x, index = make_vae(image_shape=RGB), images(2, seed=5, shape=RGB), torch.tensor([0, 6])
    score = regret(vae, x, index, steps=2, lr=1e-3, n_samples=2)
    assert score.shape == (2,) and score.dtype == torch.float64 and torch.isfinite(score).all()
    assert torch.equal(regret(vae, x, index, steps=0), torch.zeros(2, dtype=torch.float64))


def test_likelihood_regret_optimises_a_copy():
    vae, x, index = make_vae(seed=1), images(3, seed=4), torch.tensor([4, 1, 8])
    vae.train()  # regret must run in eval mode and restore the mode afterwards
    state = {k: v.clone() for k, v in vae.state_dict().items()}
    score = regret(vae, x, index, steps=5, lr=1e-3, n_samples=4)
    assert score.shape == (3,) and score.dtype == torch.float64 and torch.isfinite(score).all()
    assert score.mean() <= 0.05  # the optimised encoder should not lower the ELBO on average
    assert (score < 0).any()
    assert all(m.training for m in vae.modules())
    assert all(torch.equal(state[k], v) for k, v in vae.state_dict().items())
    assert all(p.grad is None for p in vae.parameters())
    vae.eval()
    assert torch.equal(score, regret(vae, x, index, steps=5, lr=1e-3, n_samples=4))
    alone = regret(vae, x[2:], index[2:], steps=5, lr=1e-3, n_samples=4)
    torch.testing.assert_close(alone, score[2:], rtol=0, atol=1e-6)


def brute_force_regret(vae: VAE, x: torch.Tensor, index: torch.Tensor, *, steps: int, lr: float, n_samples: int) -> torch.Tensor:
    """An independent reference: one image at a time, a deep copy of the VAE whose own ``encoder`` module is
    optimised by a plain for-loop ``torch.optim.Adam`` through ordinary autograd, the ELBO written out with
    ``torch.distributions`` (the reparameterised Gaussian posterior's log-likelihood mean minus the analytic KL)."""
    eps = per_sample_normal(index, SEED, n_samples + steps, 4, stream=noise_stream(STREAM, "APO"), dtype=x.dtype)

    def elbo(model: VAE, xi: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        mu, logvar = model.encode(xi[None])
        q = Normal(mu[0], (0.5 * logvar[0]).exp())
        z = mu[0] + q.scale * e  # [n, L]
        ll = model.log_likelihood(xi[None].expand(len(e), *xi.shape), model.decode(z)).mean()
        return ll - torch.distributions.kl_divergence(q, Normal(torch.zeros_like(mu[0]), torch.ones_like(mu[0]))).sum()

    out = []
    for b in range(len(x)):
        model = copy.deepcopy(vae).eval()
        for p in model.parameters():
            p.requires_grad_(False)
        for p in model.encoder.parameters():
            p.requires_grad_(True)
        with torch.no_grad():
            before = elbo(model, x[b], eps[:n_samples, b])
        optimiser = torch.optim.Adam(model.encoder.parameters(), lr=lr, foreach=False, fused=False)
        for t in range(steps):
            optimiser.zero_grad()
            (-elbo(model, x[b], eps[n_samples + t : n_samples + t + 1, b])).backward()
            optimiser.step()
        with torch.no_grad():
            out.append(before - elbo(model, x[b], eps[:n_samples, b]))
    return torch.stack(out).double()


@pytest.mark.parametrize("stacked", [True, False], ids=["stacked-copies", "vmap"])
def test_likelihood_regret_matches_a_brute_force_per_image_loop(stacked):
    """Both batched paths (the stacked encoder copies of fevae.models.stacked, and vmap for an encoder it does not
    run) against per-image deep copies trained one by one; float64, so Adam's sign-like first steps are not decided
    by float32 rounding of near-zero gradients."""
    vae, x, index = make_vae(seed=2).double(), images(3, seed=7).double(), torch.tensor([3, 0, 11])
    score = regret(vae, x, index, steps=6, lr=1e-3, n_samples=2, stacked=stacked)
    reference = brute_force_regret(vae, x, index, steps=6, lr=1e-3, n_samples=2)
    assert (reference.abs() > 0.1).all()  # the refits moved every ELBO: a comparison with a non-trivial reference
    torch.testing.assert_close(score, reference, rtol=1e-6, atol=1e-6)
