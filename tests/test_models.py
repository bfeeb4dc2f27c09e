"""Tests for fevae.models: likelihoods, VAE, permutations, tiling and the Jigsaw classifier."""

from __future__ import annotations

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


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


def images(b: int = 4) -> torch.Tensor:
    return torch.rand(b, 1, 28, 28)


def pixel_sum(t: torch.Tensor) -> torch.Tensor:
    return t.sum(dim=(-3, -2, -1))


def fit_one_step(model: L.LightningModule, tmp_path, name: str) -> str:
    data = TensorDataset(images(8), torch.zeros(8, dtype=torch.long))
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
