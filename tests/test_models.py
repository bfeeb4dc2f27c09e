"""Tests for fevae.models: likelihoods, VAE, permutations, tiling and the Jigsaw classifier."""

from __future__ import annotations

import hashlib
import math

import lightning as L
import numpy as np
import pytest
import torch
from torch.distributions import Bernoulli, ContinuousBernoulli, Normal
from torch.utils.data import DataLoader, TensorDataset

from fevae.errors import FevaeError
from fevae.models import VAE, Jigsaw, build_likelihood, make_permutations
from fevae.models.jigsaw import JigsawTiler, shuffle_tiles, unshuffle_tiles
from fevae.models.likelihoods import GaussianLikelihood

#: Measured minimum pairwise Hamming distance of make_permutations(100, seed) for seeds 0..4.
MIN_HAMMING_100 = 6
SMALL_JIGSAW = dict(n_permutations=10)
#: Colour images (CIFAR-10 / SVHN) and the Jigsaw geometry their experiment config uses.
RGB = (3, 32, 32)
RGB_TILES = dict(grid=3, cell=10, tile=8, offset=1)

#: sha256 (:func:`state_checksum`) of the state dicts of ``torch.manual_seed(0); VAE(...)`` /
#: ``Jigsaw()`` at the default 1×28×28 image shape, computed with the code from before models took
#: an ``image_shape`` (when 1×28×28 was hard-wired). They pin that the default models still create
#: exactly the same parameters and buffers, in the same order, with the same shapes, dtypes and
#: seeded initial values, so seeded runs (and their checkpoints) are unchanged. Torch's CPU
#: generator and init functions produce these values; a torch upgrade that changed them would need
#: the pins recomputed (and would change every seeded run anyway).
DEFAULT_SHAPE_STATE_SHA256 = {
    "vae_gaussian": "9e4bfe4fd704f2deb38d81981b0d140c95eab47bcb4317aeedcca1483181488c",
    "vae_gaussian_pixel": "9d4fb7a458cce70fcd42ed70e6782bea27c06b3e5bbdca500ed7b3f02899ba6a",
    "vae_bernoulli": "acbc688ef1fd50e46a11a63a1a4223cec58629e65221d1a8acc57f6ce4822984",
    "jigsaw": "a15c1ce64b4d329ce70d291e5df39079298ac46ceca6b79d6face1d289f9ab47",
}


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(b: int = 4, shape: tuple[int, int, int] = (1, 28, 28)) -> torch.Tensor:
    return torch.rand(b, *shape)


def state_checksum(module: torch.nn.Module) -> str:
    """sha256 over the state dict in order: each entry's name, shape, dtype and raw bytes."""
    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode())
        digest.update(str(tuple(value.shape)).encode())
        digest.update(str(value.dtype).encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def pixel_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=(-3, -2, -1))


def fit_one_step(model: L.LightningModule, tmp_path, name: str, shape: tuple[int, int, int] = (1, 28, 28)) -> str:
    data = TensorDataset(images(8, shape), torch.zeros(8, dtype=torch.long))
    trainer = L.Trainer(
        max_steps=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(model, DataLoader(data, batch_size=4))
    path = str(tmp_path / f"{name}.ckpt")
    trainer.save_checkpoint(path)
    return path


def assert_same_state(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for k in sa:
        torch.testing.assert_close(sa[k], sb[k], rtol=0, atol=0, msg=k)


# ------------------------------------------------------------------------------ likelihoods


@pytest.mark.parametrize(
    "name, kwargs, reference",
    [
        ("bernoulli", {}, lambda h, lik: Bernoulli(probs=torch.sigmoid(h))),
        ("gaussian", {"sigma": "scalar", "sigma_init": 0.2}, lambda h, lik: Normal(torch.sigmoid(h), 0.2)),
        ("gaussian", {"sigma": "pixel"}, lambda h, lik: Normal(torch.sigmoid(h), lik.sigma())),
        ("gaussian", {"sigma": "fixed", "sigma_init": 0.3}, lambda h, lik: Normal(torch.sigmoid(h), 0.3)),
        ("continuous_bernoulli", {}, lambda h, lik: ContinuousBernoulli(probs=torch.sigmoid(h))),
    ],
)
def test_log_prob_matches_torch_distributions(name, kwargs, reference):
    lik = build_likelihood(name, **kwargs)
    h = 3 * torch.randn(5, 4, 1, 28, 28)  # [S, B, ...]
    x = images(4)
    if name == "bernoulli":
        x = (x > 0.5).float()
    expected = pixel_sum(reference(h, lik).log_prob(x))
    got = lik.log_prob(x, h)
    assert got.shape == (5, 4)
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(lik.phi(h), torch.sigmoid(h))
    torch.testing.assert_close(lik.distribution(h[0]).log_prob(x), expected[0], rtol=1e-5, atol=1e-3)


def test_continuous_bernoulli_normaliser_stable_for_large_logits():
    lik = build_likelihood("continuous_bernoulli")
    h = torch.tensor([-60.0, -20.0, -1e-3, 0.0, 1e-3, 20.0, 60.0]).view(-1, 1, 1, 1)
    x = torch.full((1, 1, 1), 0.3)
    got = lik.log_prob(x, h)
    hd, xd = h.double().view(-1), 0.3
    exact_norm = torch.where(hd == 0, torch.tensor(math.log(2.0), dtype=torch.float64),
                             torch.log(hd / torch.tanh(hd / 2)))
    bce = torch.nn.functional.binary_cross_entropy_with_logits(hd, torch.full_like(hd, xd), reduction="none")
    torch.testing.assert_close(got.double(), exact_norm - bce, rtol=1e-5, atol=1e-5)
    assert torch.isfinite(got).all()


def test_continuous_bernoulli_mean_is_the_distributions_mean():
    """V3's decoded image is E[x | λ], torch's ContinuousBernoulli(probs=λ).mean, stably near λ = 1/2 and 0/1."""
    lik = build_likelihood("continuous_bernoulli")
    half = 0.5 + torch.tensor([-1e-4, -3e-5, -1e-6, -1e-9, 0.0, 1e-9, 1e-6, 3e-5, 1e-4], dtype=torch.float64)
    edges = torch.tensor([1e-12, 1e-9, 1e-6, 1e-3, 1 - 1e-3, 1 - 1e-6, 1 - 1e-9], dtype=torch.float64)
    lam = torch.cat([torch.linspace(1e-4, 1 - 1e-4, 10001, dtype=torch.float64), half, edges])
    got = lik.mean(torch.logit(lam))
    assert got.dtype == torch.float64 and torch.isfinite(got).all()
    expected = ContinuousBernoulli(probs=lam, validate_args=False).mean
    # torch's own closed form loses ~5e-12 to cancellation just outside its Taylor band (0.499, 0.501)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-10)
    near = (lam - 0.5).abs() <= 1e-4  # torch's Taylor series is exact to float64 there
    torch.testing.assert_close(got[near], expected[near], rtol=0, atol=1e-15)
    torch.testing.assert_close(lik.mean(torch.tensor(math.log(9.0), dtype=torch.float64)),  # λ = 0.9: mean 0.67, not 0.9
                               torch.tensor(0.9 / 0.8 + 1 / (2 * math.atanh(-0.8)), dtype=torch.float64), rtol=0, atol=1e-15)
    # float32 (what scoring runs in): within a few ulp of the float64 value, limits 0 and 1, never NaN
    h32 = torch.cat([torch.linspace(-30, 30, 6001), torch.tensor([-1e30, -1e4, -100.0, -1e-30, 0.0, 1e-30, 100.0, 1e4, 1e30])])
    got32 = lik.mean(h32)
    assert got32.dtype == torch.float32 and not torch.isnan(got32).any()
    torch.testing.assert_close(got32.double(), lik.mean(h32.double()), rtol=0, atol=3e-7)
    assert ((got32 >= 0) & (got32 <= 1)).all()
    torch.testing.assert_close(lik.mean(torch.tensor([-math.inf, math.inf])), torch.tensor([0.0, 1.0]))


@pytest.mark.parametrize("name", ["bernoulli", "gaussian"])
def test_mean_of_v1_v2_is_their_parameter_bit_for_bit(name):
    lik = build_likelihood(name)
    h = 5 * torch.randn(3, 2, 1, 28, 28)
    assert torch.equal(lik.mean(h), lik.phi(h)) and torch.equal(lik.mean(h), torch.sigmoid(h))
    vae = VAE({"name": name}, latent_dim=4)
    assert torch.equal(vae.phi(h), torch.sigmoid(h))  # what the Jigsaw sees and image grids draw: unchanged


def test_vae_feeds_the_jigsaw_the_continuous_bernoulli_mean():
    vae = VAE({"name": "continuous_bernoulli"}, latent_dim=4)
    h = 5 * torch.randn(3, 1, 28, 28)
    assert torch.equal(vae.phi(h), vae.likelihood.mean(h))
    # float64 reference: torch's float32 mean is off by up to 1e-2 near λ = 1/2 (cancellation) and at large |h| (clamping)
    torch.testing.assert_close(vae.phi(h).double(), ContinuousBernoulli(logits=h.double()).mean, rtol=0, atol=1e-6)


def test_gaussian_sigma_modes():
    n_params = {m: sum(p.numel() for p in GaussianLikelihood(m).parameters()) for m in ("scalar", "pixel", "fixed")}
    assert n_params == {"scalar": 1, "pixel": 28 * 28, "fixed": 0}
    assert GaussianLikelihood("pixel").sigma().shape == (1, 28, 28)
    lik = GaussianLikelihood("scalar", sigma_init=0.1, sigma_min=0.05)
    with torch.no_grad():
        lik.log_sigma.fill_(math.log(1e-4))
    torch.testing.assert_close(lik.sigma(), torch.tensor(0.05))
    fixed = GaussianLikelihood("fixed", sigma_init=0.3)
    torch.testing.assert_close(fixed.sigma(), torch.tensor(0.3))


def _channel_normal_log_prob(x: torch.Tensor, h: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Per-channel Gaussian by hand: one Normal per channel with that channel's σ, summed over all
    pixels and channels -> ``h.shape[:-3]``."""
    total = 0.0
    for c in range(h.shape[-3]):
        normal = Normal(torch.sigmoid(h[..., c, :, :]), sigma.reshape(-1)[c].item())
        total = total + normal.log_prob(x[..., c, :, :]).sum(dim=(-2, -1))
    return total


@pytest.mark.parametrize(
    "name, kwargs, reference",
    [
        ("bernoulli", {}, lambda x, h, lik: pixel_sum(Bernoulli(probs=torch.sigmoid(h)).log_prob(x))),
        ("gaussian", {"sigma": "scalar", "sigma_init": 0.2},
         lambda x, h, lik: pixel_sum(Normal(torch.sigmoid(h), 0.2).log_prob(x))),
        ("gaussian", {"sigma": "channel"}, lambda x, h, lik: _channel_normal_log_prob(x, h, lik.sigma())),
        ("gaussian", {"sigma": "pixel"}, lambda x, h, lik: pixel_sum(Normal(torch.sigmoid(h), lik.sigma()).log_prob(x))),
        ("gaussian", {"sigma": "fixed", "sigma_init": 0.3},
         lambda x, h, lik: pixel_sum(Normal(torch.sigmoid(h), 0.3).log_prob(x))),
        ("continuous_bernoulli", {},
         lambda x, h, lik: pixel_sum(ContinuousBernoulli(probs=torch.sigmoid(h)).log_prob(x))),
    ],
)
def test_log_prob_of_colour_images_matches_torch_distributions(name, kwargs, reference):
    lik = build_likelihood(name, image_shape=RGB, **kwargs)
    if name == "gaussian" and kwargs["sigma"] in ("channel", "pixel"):
        with torch.no_grad():  # distinct σ per channel/pixel, so a mixed-up σ layout would show
            lik.log_sigma.copy_(torch.empty_like(lik.log_sigma).uniform_(math.log(0.05), math.log(0.5)))
    h = 3 * torch.randn(5, 4, *RGB)  # [S, B, 3, 32, 32]
    x = images(4, RGB)
    if name == "bernoulli":
        x = (x > 0.5).float()
    got = lik.log_prob(x, h)
    assert got.shape == (5, 4)
    # float64 reference: torch's float32 continuous Bernoulli clamps probs near 0/1 (large |h|), which
    # over 3072 pixels can shift the sum by more than float32 rounding
    expected = reference(x.double(), h.double(), lik.double())
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-2)
    assert lik.distribution(h).event_shape == RGB


def test_gaussian_channel_and_pixel_sigma_follow_the_image_shape():
    channel = build_likelihood("gaussian", image_shape=RGB, sigma="channel", sigma_init=0.2)
    assert channel.sigma().shape == (3, 1, 1) and channel.log_sigma.shape == (3, 1, 1)
    torch.testing.assert_close(channel.sigma(), torch.full((3, 1, 1), 0.2))
    assert build_likelihood("gaussian", image_shape=RGB, sigma="pixel").sigma().shape == RGB
    assert build_likelihood("gaussian", sigma="channel").sigma().shape == (1, 1, 1)  # default 1×28×28
    assert build_likelihood("gaussian", image_shape=RGB).sigma().shape == ()  # scalar: shape-free
    with pytest.raises(FevaeError, match=r"data\.image_shape"):
        build_likelihood("gaussian", image_shape=(32, 32))
    with pytest.raises(FevaeError, match=r"model\.vae\.likelihood\.image_shape"):  # the VAE's, not a likelihood setting
        VAE({"name": "gaussian", "image_shape": [3, 32, 32]})
    # channel σ: each channel's pixels get their own scale (log_prob vs Normal, summed by hand)
    with torch.no_grad():
        channel.log_sigma.copy_(torch.tensor([0.05, 0.1, 0.4]).log().view(3, 1, 1))
    h, x = torch.randn(2, *RGB), images(2, RGB)
    torch.testing.assert_close(channel.log_prob(x, h), _channel_normal_log_prob(x, h, channel.sigma()),
                               rtol=1e-5, atol=1e-2)


@pytest.mark.parametrize(
    "kwargs, key",
    [
        ({"name": "poisson"}, "model.vae.likelihood.name"),
        ({"name": "gaussian", "sigma": "diag"}, "model.vae.likelihood.sigma"),
        ({"name": "gaussian", "sigma_init": 0.001}, "model.vae.likelihood.sigma_init"),
        ({"name": "bernoulli", "sigma": "scalar"}, "model.vae.likelihood.sigma"),
    ],
)
def test_invalid_likelihood_config(kwargs, key):
    with pytest.raises(FevaeError, match=key.replace(".", r"\.")) as err:
        build_likelihood(**kwargs)
    if kwargs["name"] == "poisson":
        assert "bernoulli, gaussian, continuous_bernoulli" in str(err.value)


# -------------------------------------------------------------------------------------- VAE


def test_vae_shapes():
    vae = VAE({"name": "bernoulli"}, latent_dim=7)
    x = images(3)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (3, 7)
    assert vae.decode(torch.randn(3, 7)).shape == (3, 1, 28, 28)
    h = vae.decode(vae.sample_prior((2, 3)))
    assert h.shape == (2, 3, 1, 28, 28)
    assert vae.log_likelihood(x, h).shape == (2, 3)
    assert vae.sample_prior(5).shape == (5, 7)
    z1 = vae.sample_prior(4, generator=torch.Generator().manual_seed(1))
    z2 = vae.sample_prior(4, generator=torch.Generator().manual_seed(1))
    torch.testing.assert_close(z1, z2)
    assert vae.posterior(x).batch_shape == (3, 7)


def test_vae_on_colour_images():
    vae = VAE({"name": "gaussian", "sigma": "channel"}, image_shape=RGB, latent_dim=5)
    x = images(3, RGB)
    mu, logvar = vae.encode(x)
    assert mu.shape == logvar.shape == (3, 5)
    assert vae.encoder[-3].in_features == 64 * 4 * 4  # 32 → 16 → 16 → 8 → 8 → 4
    assert vae.decoder_input[0].out_features == 64 * 8 * 8
    assert vae.decode(torch.randn(3, 5)).shape == (3, *RGB)
    h = vae.decode(vae.sample_prior((2, 3)))
    assert h.shape == (2, 3, *RGB) and vae.phi(h).shape == h.shape
    assert vae.log_likelihood(x, h).shape == (2, 3)
    out = vae.elbo(x)
    assert all(v.shape == (3,) for v in out.values())
    torch.testing.assert_close(out["elbo"], out["log_likelihood"] - out["kl"])
    assert vae.likelihood.sigma().shape == (3, 1, 1)
    assert vae.hparams.image_shape == RGB and type(vae.hparams.image_shape) is tuple


def test_vae_image_shape_must_be_a_multiple_of_4():
    vae = VAE({"name": "bernoulli"}, image_shape=(1, 20, 20), latent_dim=3)
    assert vae.decode(torch.randn(2, 3)).shape == (2, 1, 20, 20)
    assert vae.elbo((images(2, (1, 20, 20)) > 0.5).float())["elbo"].shape == (2,)
    assert VAE({"name": "bernoulli"}, image_shape=(2, 8, 12)).decode(torch.randn(1, 20)).shape == (1, 2, 8, 12)
    for bad in [(1, 30, 30), (1, 28, 30), (3, 2, 2), (1, 0, 28), (0, 28, 28), (28, 28), (1, 28.5, 28), (True, 28, 28), "1x28x28"]:
        with pytest.raises(FevaeError, match=r"data\.image_shape"):
            VAE({"name": "gaussian"}, image_shape=bad)


def test_vae_accepts_listconfig_image_shape():
    from omegaconf import OmegaConf

    cfg = OmegaConf.create({"data": {"image_shape": [3, 32, 32]}, "shape": "${data.image_shape}"})
    vae = VAE({"name": "gaussian"}, image_shape=cfg.shape)
    assert vae.hparams.image_shape == RGB and type(vae.hparams.image_shape) is tuple
    assert all(type(v) is int for v in vae.hparams.image_shape)
    assert type(Jigsaw(**SMALL_JIGSAW, **RGB_TILES, image_shape=cfg.shape).hparams.image_shape) is tuple


def test_default_image_shape_models_are_bit_identical_to_the_fixed_28x28_models():
    """See DEFAULT_SHAPE_STATE_SHA256: default-shape models are the ones of before image_shape."""
    builders = {
        "vae_gaussian": lambda: VAE({"name": "gaussian"}),
        "vae_gaussian_pixel": lambda: VAE({"name": "gaussian", "sigma": "pixel"}),
        "vae_bernoulli": lambda: VAE({"name": "bernoulli"}),
        "jigsaw": lambda: Jigsaw(),
    }
    for name, build in builders.items():
        torch.manual_seed(0)
        assert state_checksum(build()) == DEFAULT_SHAPE_STATE_SHA256[name], name
    torch.manual_seed(0)
    explicit = VAE({"name": "gaussian"}, image_shape=[1, 28, 28])
    assert state_checksum(explicit) == DEFAULT_SHAPE_STATE_SHA256["vae_gaussian"]
    torch.manual_seed(0)
    assert state_checksum(Jigsaw(image_shape=(1, 28, 28))) == DEFAULT_SHAPE_STATE_SHA256["jigsaw"]


def test_colour_models_checkpoint_round_trip(tmp_path):
    from fevae.training import load_checkpoint

    L.seed_everything(3)
    vae = VAE({"name": "gaussian", "sigma": "channel"}, image_shape=RGB, latent_dim=4, hidden_dim=8)
    path = fit_one_step(vae, tmp_path, "vae_rgb", RGB)
    loaded = VAE.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.image_shape == RGB
    assert_same_state(vae, loaded)
    checkpoint = load_checkpoint(path)  # torch.load(weights_only=True)
    hparams = checkpoint["hyper_parameters"]
    assert tuple(hparams["image_shape"]) == RGB
    rebuilt = VAE(**hparams)
    rebuilt.load_state_dict(checkpoint["state_dict"])
    assert_same_state(vae, rebuilt)

    jigsaw = Jigsaw(**SMALL_JIGSAW, **RGB_TILES, image_shape=RGB, hidden=[16, 8])
    path = fit_one_step(jigsaw, tmp_path, "jigsaw_rgb", RGB)
    loaded = Jigsaw.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.image_shape == RGB and loaded.tiler.image_shape == RGB
    assert_same_state(jigsaw, loaded)
    x = images(2, RGB)
    torch.testing.assert_close(loaded.features(x), jigsaw.features(x), rtol=0, atol=0)


def test_validation_build_passes_image_shape():
    from fevae.validation import build

    vae = build("model.vae", {"_target_": "fevae.models.vae.VAE", "likelihood": {"name": "gaussian", "sigma": "channel"},
                              "image_shape": [3, 32, 32], "latent_dim": 4})
    assert vae.hparams.image_shape == RGB and vae.decode(torch.randn(1, 4)).shape == (1, *RGB)
    jigsaw = build("model.jigsaw", {"_target_": "fevae.models.jigsaw.Jigsaw", "image_shape": [3, 32, 32], **RGB_TILES})
    assert jigsaw.hparams.image_shape == RGB and jigsaw.hidden_layers[0].in_features == 9 * 3 * 8 * 8
    with pytest.raises(FevaeError, match=r"data\.image_shape"):
        build("model.vae", {"_target_": "fevae.models.vae.VAE", "likelihood": {"name": "gaussian"}, "image_shape": [1, 30, 30]})
    with pytest.raises(FevaeError, match=r"model\.jigsaw\.tiles"):
        build("model.jigsaw", {"_target_": "fevae.models.jigsaw.Jigsaw", "image_shape": [1, 20, 20]})  # 27 > 20
    node = {"_target_": "fevae.models.jigsaw.Jigsaw", "image_shape": [3, 32, 32], **RGB_TILES}
    before = dict(node)
    build("model.jigsaw", node, n_permutations=10)
    assert node == before and build("model.jigsaw", node).hparams.image_shape == RGB  # the caller's dict is not consumed


def test_vae_accepts_dictconfig_and_rejects_bad_values():
    from omegaconf import OmegaConf

    vae = VAE(OmegaConf.create({"name": "gaussian", "sigma": "pixel"}))
    assert type(vae.hparams.likelihood) is dict
    with pytest.raises(FevaeError, match=r"model\.vae\.latent_dim"):
        VAE({"name": "gaussian"}, latent_dim=0)


@pytest.mark.parametrize("name", ["bernoulli", "gaussian", "continuous_bernoulli"])
def test_elbo_terms(name):
    vae = VAE({"name": name})
    x = (images(4) > 0.5).float()
    out = vae.elbo(x)
    assert all(v.shape == (4,) for v in out.values())
    assert (out["kl"] >= 0).all()
    assert (out["elbo"] <= out["log_likelihood"] + 1e-6).all()
    torch.testing.assert_close(out["elbo"], out["log_likelihood"] - out["kl"])


def test_few_steps_decrease_loss():
    vae = VAE({"name": "gaussian"}, dropout=0.0)
    x = images(8)
    opt = vae.configure_optimizers()
    vae.train()
    losses = []
    for _ in range(15):
        torch.manual_seed(0)  # same reparameterisation noise each step
        loss = -vae.elbo(x)["elbo"].mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]


def test_vae_checkpoint_round_trip(tmp_path):
    L.seed_everything(3)
    vae = VAE({"name": "gaussian", "sigma": "pixel"}, latent_dim=4)
    path = fit_one_step(vae, tmp_path, "vae")
    loaded = VAE.load_from_checkpoint(path, weights_only=True)
    assert loaded.hparams.likelihood == {"name": "gaussian", "sigma": "pixel"}
    assert loaded.hparams.latent_dim == 4
    assert_same_state(vae, loaded)


def test_vae_seed_reproducible():
    L.seed_everything(5)
    a = VAE({"name": "bernoulli"})
    L.seed_everything(5)
    b = VAE({"name": "bernoulli"})
    assert_same_state(a, b)


def test_vae_logs_images_to_tensorboard(tmp_path):
    from lightning.pytorch.loggers import TensorBoardLogger

    data = DataLoader(TensorDataset(images(8), torch.zeros(8)), batch_size=4)
    vae = VAE({"name": "gaussian"}, n_image_samples=4)
    logger = TensorBoardLogger(str(tmp_path), name="tb")
    trainer = L.Trainer(
        max_epochs=1, limit_train_batches=1, limit_val_batches=1, num_sanity_val_steps=0, log_every_n_steps=1,
        logger=logger, enable_checkpointing=False, enable_progress_bar=False,
        enable_model_summary=False, accelerator="cpu",
    )
    trainer.fit(vae, data, data)
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(logger.log_dir)
    acc.Reload()
    tags = set(acc.Tags()["images"])
    assert {"images/input", "images/reconstruction", "images/prior_sample"} <= tags
    assert {"val/loss", "train/sigma"} <= set(acc.Tags()["scalars"])


# ----------------------------------------------------------------------------- permutations


def test_make_permutations():
    perms = make_permutations(100, seed=0)
    assert perms.shape == (100, 9) and perms.dtype == np.int64
    assert (np.sort(perms, axis=1) == np.arange(9)).all()
    assert len({tuple(p) for p in perms}) == 100
    dist = (perms[:, None, :] != perms[None, :, :]).sum(-1)
    np.fill_diagonal(dist, 9)
    assert dist.min() >= MIN_HAMMING_100
    np.testing.assert_array_equal(perms, make_permutations(100, seed=0))
    assert not np.array_equal(perms, make_permutations(100, seed=1))
    with pytest.raises(FevaeError, match=r"model\.jigsaw\.n_permutations"):
        make_permutations(0)


# -------------------------------------------------------------------------------------- tiles


def test_shuffle_round_trip():
    tiles = torch.randn(6, 9, 49)
    perms = torch.from_numpy(make_permutations(10))[torch.arange(6) % 10]
    shuffled = shuffle_tiles(tiles, perms)
    torch.testing.assert_close(shuffled[1, 4], tiles[1, perms[1, 4]])
    torch.testing.assert_close(unshuffle_tiles(shuffled, perms), tiles)


def test_tiles_without_jitter_are_centred_slices():
    tiler = JigsawTiler(grid=3, cell=9, tile=7, offset=0)
    x = images(2)
    tiles = tiler.tiles(x, jitter=False)
    assert tiles.shape == (2, 9, 49)
    for k in range(9):
        r, c = (k // 3) * 9 + 1, (k % 3) * 9 + 1
        torch.testing.assert_close(tiles[:, k], x[:, 0, r : r + 7, c : c + 7].reshape(2, 49))


def test_tiles_jitter_stays_in_cell():
    tiler = JigsawTiler(grid=3, cell=9, tile=7, offset=1)
    # pixel value encodes its position, so each tile reveals where it was cut from
    pos = torch.arange(28 * 28, dtype=torch.float32).view(1, 1, 28, 28).expand(64, 1, 28, 28)
    tiles = tiler.tiles(pos, jitter=True, generator=torch.Generator().manual_seed(0))
    rows, cols = tiles // 28, tiles % 28
    cell_r = 1 + 9 * (torch.arange(9) // 3)
    cell_c = 1 + 9 * (torch.arange(9) % 3)
    assert (rows.amin(-1) >= cell_r).all() and (rows.amax(-1) < cell_r + 9).all()
    assert (cols.amin(-1) >= cell_c).all() and (cols.amax(-1) < cell_c + 9).all()
    # offsets vary across images and cells, and a tile is a contiguous 7x7 crop
    shift = rows.amin(-1) - cell_r  # [B, 9]
    assert all(len(torch.unique(shift[:, k])) == 3 for k in range(9))
    assert (shift != shift[:, :1]).any(dim=1).any()
    assert ((rows.amax(-1) - rows.amin(-1)) == 6).all()


def test_tiler_validation():
    with pytest.raises(FevaeError, match=r"model\.jigsaw\.tiles"):
        JigsawTiler(grid=3, cell=9, tile=7, offset=2)
    with pytest.raises(FevaeError, match=r"model\.jigsaw\.tiles\.tile"):
        JigsawTiler(tile=10)


def test_tiler_geometry_must_fit_the_image():
    assert JigsawTiler(**RGB_TILES, image_shape=RGB).tile_dim() == 3 * 8 * 8
    JigsawTiler(grid=3, cell=10, tile=8, offset=2, image_shape=RGB)  # 2 + 30 = 32: just fits
    for geometry, shape, size in [
        (dict(RGB_TILES, offset=3), RGB, "32×32"),  # 3 + 30 > 32
        (dict(RGB_TILES, cell=11), RGB, "32×32"),  # 1 + 33 > 32
        (RGB_TILES, (3, 32, 24), "32×24"),  # fits the height, not the width
        (RGB_TILES, (3, 24, 32), "24×32"),
        ({}, (1, 20, 20), "20×20"),  # the default 27-pixel puzzle on smaller images
    ]:
        with pytest.raises(FevaeError, match=r"model\.jigsaw\.tiles") as err:
            JigsawTiler(**geometry, image_shape=shape)
        assert size in str(err.value)
    with pytest.raises(FevaeError, match=r"model\.jigsaw\.tiles"):
        Jigsaw(**RGB_TILES)  # 1×28×28 default: 31 > 28


def test_colour_tiles_are_the_expected_crops():
    tiler = JigsawTiler(**RGB_TILES, image_shape=RGB)
    # synthetic colour image: each value encodes (image, channel, row, col)
    b, c, h, w = torch.meshgrid(*(torch.arange(n) for n in (2, *RGB)), indexing="ij")
    x = (b * 10000 + c * 1000 + h * 32 + w).float()
    tiles = tiler.tiles(x, jitter=False)
    assert tiles.shape == (2, 9, 3 * 8 * 8)
    for k in range(9):
        top, left = 1 + (k // 3) * 10 + 1, 1 + (k % 3) * 10 + 1  # offset 1, cell 10, centred (slack 2)
        for i in range(2):
            expected = x[i, :, top : top + 8, left : left + 8].reshape(-1)  # channel-major C×8×8
            assert torch.equal(tiles[i, k], expected), (i, k)
    jittered = tiler.tiles(x, jitter=True, generator=torch.Generator().manual_seed(0)).view(2, 9, 3, 8, 8)
    # a jittered tile is still one 8×8 crop of all 3 channels at the same place, inside its cell
    torch.testing.assert_close(jittered[:, :, 1:] - jittered[:, :, :1], torch.tensor([1000.0, 2000.0]).view(1, 1, 2, 1, 1)
                               .expand(2, 9, 2, 8, 8))
    rows, cols = (jittered[:, :, 0] % 1000) // 32, (jittered[:, :, 0] % 1000) % 32
    cell_r, cell_c = 1 + 10 * (torch.arange(9) // 3), 1 + 10 * (torch.arange(9) % 3)
    assert (rows.amin((-2, -1)) >= cell_r).all() and (rows.amax((-2, -1)) < cell_r + 10).all()
    assert (cols.amin((-2, -1)) >= cell_c).all() and (cols.amax((-2, -1)) < cell_c + 10).all()


# ------------------------------------------------------------------------------------ Jigsaw


def test_jigsaw_features():
    model = Jigsaw(**SMALL_JIGSAW)
    x = images(3)
    assert [model.features(x, layer).shape[1] for layer in range(1, 5)] == [100, 80, 60, 40]
    assert [model.feature_dim(layer) for layer in range(1, 5)] == [100, 80, 60, 40]
    for layer in range(1, 5):
        pre = model.features(x, layer, pre_activation=True)
        post = model.features(x, layer)
        assert not torch.equal(pre, post)
        torch.testing.assert_close(torch.relu(pre), post)
    model.train()
    train_feats = model.features(x, 2)
    model.eval()
    torch.testing.assert_close(train_feats, model.features(x, 2), rtol=0, atol=0)
    assert model(shuffle_tiles(model.tiler.tiles(x, jitter=False), model.permutations[:3])).shape == (3, 10)
    for bad in (0, 5):
        with pytest.raises(FevaeError, match=r"fe\.layer"):
            model.features(x, bad)


def test_jigsaw_on_colour_images():
    model = Jigsaw(**SMALL_JIGSAW, **RGB_TILES, image_shape=RGB)
    assert model.hidden_layers[0].in_features == 9 * 3 * 8 * 8
    x = images(3, RGB)
    assert model.features(x).shape == (3, 100)
    assert [model.features(x, layer).shape[1] for layer in range(1, 5)] == [100, 80, 60, 40]
    tiles = model.tiler.tiles(x, jitter=True)
    assert model(shuffle_tiles(tiles, model.permutations[:3])).shape == (3, 10)
    assert model.hparams.image_shape == RGB and type(model.hparams.image_shape) is tuple


def test_jigsaw_checkpoint_round_trip_and_seed(tmp_path):
    L.seed_everything(7)
    model = Jigsaw(**SMALL_JIGSAW, hidden=[16, 8, 8, 4])
    path = fit_one_step(model, tmp_path, "jigsaw")
    loaded = Jigsaw.load_from_checkpoint(path, weights_only=True)
    assert tuple(loaded.hparams.hidden) == (16, 8, 8, 4)
    assert_same_state(model, loaded)
    torch.testing.assert_close(loaded.permutations, torch.from_numpy(make_permutations(10)))

    L.seed_everything(7)
    again = Jigsaw(**SMALL_JIGSAW, hidden=[16, 8, 8, 4])
    fit_one_step(again, tmp_path, "jigsaw2")
    assert_same_state(model, again)


def test_jigsaw_learns_on_tiny_batch():
    model = Jigsaw(n_permutations=4, dropout=0.0, lr=0.05)
    x = images(16)
    labels = torch.arange(16) % 4
    opt = model.configure_optimizers()
    losses = []
    for _ in range(20):
        tiles = shuffle_tiles(model.tiler.tiles(x, jitter=False), model.permutations[labels])
        loss = torch.nn.functional.cross_entropy(model(tiles), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
