"""Convolutional VAE of App. A (after Nalisnick et al., 2018) with a pluggable pixel likelihood.

Deviation from the paper: the last transposed convolution outputs logits ``h`` with no
ReLU/BatchNorm/Dropout and no sigmoid. The paper's final sigmoid is applied by the likelihood
(φ(z) = sigmoid(h), see :meth:`VAE.phi`), so Bernoulli/continuous-Bernoulli log-probabilities are
computed from logits, which is numerically stabler; a ReLU/BatchNorm/Dropout before the output
sigmoid would also restrict or randomise the decoded parameters.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, ListConfig, OmegaConf
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from fevae.errors import FevaeError
from fevae.models.likelihoods import (
    IMAGE_SHAPE,
    GaussianLikelihood,
    build_likelihood,
    check_image_shape,
)

#: log σ² of the posterior is clamped to this range: exp(-30) ≈ 1e-13 and exp(20) ≈ 5e8 are far
#: beyond any useful variance, and the clamp stops exp() from over/underflowing early in training.
LOGVAR_RANGE: tuple[float, float] = (-30.0, 20.0)
#: Seed of the fixed prior samples logged as images.
PRIOR_IMAGE_SEED = 0
#: Encoder convolutions (App. A): output channels and strides (kernel 5, padding 2).
ENCODER_CHANNELS: tuple[int, ...] = (8, 16, 32, 64, 64)
ENCODER_STRIDES: tuple[int, ...] = (2, 1, 2, 1, 2)
#: The decoder upsamples ×4 (two stride-2 transposed convolutions) from ``[64, H/4, W/4]``.
DECODER_UPSAMPLING = 4


def _encoded_size(size: int) -> int:
    """Height/width after the encoder's convolutions: each stride-2 conv maps n to ceil(n / 2)."""
    for stride in ENCODER_STRIDES:
        size = (size - 1) // stride + 1  # (n + 2*2 - 5) // stride + 1
    return size


def check_vae_image_shape(image_shape: Any) -> tuple[int, int, int]:
    """``image_shape`` as a plain ``(C, H, W)`` tuple of ints that the VAE can model (H and W
    multiples of 4, at least 4), else one :class:`FevaeError` naming ``data.image_shape``."""
    if isinstance(image_shape, ListConfig):
        image_shape = OmegaConf.to_container(image_shape, resolve=True)
    shape = check_image_shape(image_shape)
    _, height, width = shape
    step = DECODER_UPSAMPLING
    if height % step or width % step:
        raise FevaeError(
            f"data.image_shape={list(shape)}: the VAE's decoder upsamples ×{step}, so the image height "
            f"and width must be multiples of {step} (at least {step})",
            f"use images whose height and width are multiples of {step} (e.g. [1, 28, 28], [3, 32, 32]); "
            "pad or crop them otherwise",
        )
    return shape


def _conv_block(conv: nn.Module, channels: int, dropout: float) -> list[nn.Module]:
    """``conv`` followed by ReLU, BatchNorm2d and Dropout (App. A ordering)."""
    return [conv, nn.ReLU(), nn.BatchNorm2d(channels), nn.Dropout(dropout)]


class VAE(L.LightningModule):
    """Gaussian-latent VAE on C×H×W images, trained by maximising the ELBO with RMSprop.

    Args:
        likelihood: likelihood config, e.g. ``{"name": "gaussian", "sigma": "scalar"}``; see
            :func:`fevae.models.likelihoods.build_likelihood`.
        image_shape: ``(C, H, W)`` of the images (``data.image_shape``); H and W must be multiples
            of 4. Default 1×28×28 ((Fashion)MNIST); e.g. 3×32×32 for CIFAR-10/SVHN. Stored in the
            hyperparameters as a plain tuple of ints.
        latent_dim: number of Gaussian latent variables.
        hidden_dim: width of the encoder's linear layer.
        dropout: dropout rate after every hidden (transposed) convolution.
        lr: RMSprop learning rate.
        log_images_every_n_epochs: log input/reconstruction/prior-sample grids to TensorBoard every
            this many validation epochs (0 disables).
        n_image_samples: number of images per logged grid.
        channels_last: train (and validate) with the weights and activations in channels-last memory
            format: the same model and optimisation, which oneDNN runs faster on a CPU (the step takes
            0.83× the time on two threads, 0.73× on one, here; ``make bench``). Float rounding
            differs, so the trained weights are not the plain layout's bits. Scoring has its own
            ``eval.channels_last``.
    """

    def __init__(
        self,
        likelihood: Mapping[str, Any],
        image_shape: Sequence[int] = IMAGE_SHAPE,
        latent_dim: int = 20,
        hidden_dim: int = 50,
        dropout: float = 0.1,
        lr: float = 1e-3,
        log_images_every_n_epochs: int = 1,
        n_image_samples: int = 64,
        channels_last: bool = False,
    ):
        super().__init__()
        if isinstance(likelihood, DictConfig):
            likelihood = OmegaConf.to_container(likelihood, resolve=True)
        likelihood = dict(likelihood)  # plain dict: self-describing, weights_only-loadable ckpt
        image_shape = check_vae_image_shape(image_shape)  # plain tuple (weights_only-loadable)
        for key, value, ok in [
            ("latent_dim", latent_dim, latent_dim >= 1),
            ("hidden_dim", hidden_dim, hidden_dim >= 1),
            ("dropout", dropout, 0 <= dropout < 1),
            ("lr", lr, lr > 0),
            ("log_images_every_n_epochs", log_images_every_n_epochs,
             log_images_every_n_epochs >= 0),
            ("n_image_samples", n_image_samples, n_image_samples >= 1),
            ("channels_last", channels_last, isinstance(channels_last, bool)),
        ]:
            if not ok:
                raise FevaeError(
                    f"model.vae.{key}={value} is out of range", "see fevae.models.vae.VAE"
                )
        if "name" not in likelihood:
            raise FevaeError("model.vae.likelihood.name is missing", "set it, e.g. to gaussian")
        if "image_shape" in likelihood:
            raise FevaeError(
                "model.vae.likelihood.image_shape is not a likelihood setting",
                "remove it: the likelihood takes the VAE's image shape (data.image_shape)",
            )
        self.save_hyperparameters()

        self.image_shape = image_shape
        n_channels, height, width = image_shape
        self.likelihood = build_likelihood(image_shape=image_shape, **likelihood)
        layers: list[nn.Module] = []
        c_in = n_channels
        for c_out, stride in zip(ENCODER_CHANNELS, ENCODER_STRIDES):
            layers += _conv_block(nn.Conv2d(c_in, c_out, 5, stride, padding=2), c_out, dropout)
            c_in = c_out
        # 28 → 14 → 14 → 7 → 7 → 4 (32 → 16 → 16 → 8 → 8 → 4)
        flat = c_in * _encoded_size(height) * _encoded_size(width)
        self.encoder = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(flat, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )
        #: decoder input ``[64, H/4, W/4]`` (7×7 for 28×28 images, 8×8 for 32×32)
        self._decoder_grid = (64, height // DECODER_UPSAMPLING, width // DECODER_UPSAMPLING)
        self.decoder_input = nn.Sequential(
            nn.Linear(latent_dim, math.prod(self._decoder_grid)), nn.ReLU()
        )
        self.decoder = nn.Sequential(
            *_conv_block(  # H/4 → H/2 (7 → 14)
                nn.ConvTranspose2d(64, 32, 3, 2, padding=1, output_padding=1), 32, dropout
            ),
            *_conv_block(nn.ConvTranspose2d(32, 32, 3, 1, padding=1), 32, dropout),  # H/2
            *_conv_block(nn.ConvTranspose2d(32, 3, 4, 2, padding=1), 3, dropout),  # H (28)
            nn.ConvTranspose2d(3, n_channels, 5, 1, padding=2),  # H, C channels: logits
        )
        self._image_batch: Tensor | None = None

    # ----------------------------------------------------------------------------- model

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``[B, latent_dim]``, of images ``x``
        ``[B, C, H, W]`` (the model's ``image_shape``); logvar is clamped."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder logits ``h`` ``[..., C, H, W]`` for latents ``z`` ``[..., latent_dim]``."""
        lead = z.shape[:-1]
        h = self.decoder_input(z.reshape(-1, z.shape[-1])).view(-1, *self._decoder_grid)
        return self.decoder(h).view(*lead, *self.image_shape)

    def phi(self, h: Tensor) -> Tensor:
        """The decoded image φ(z) ∈ [0, 1] that the feature extractor sees and image grids draw: the
        likelihood's mean E[x | z] (the parameter sigmoid(h) for Bernoulli and Gaussian, not λ for
        the continuous Bernoulli; see :meth:`fevae.models.likelihoods.Likelihood.mean`); same shape
        as the logits ``h`` ``[..., C, H, W]``."""
        return self.likelihood.mean(h)

    def log_likelihood(self, x: Tensor, h: Tensor) -> Tensor:
        """log p(x | z) summed over pixels and channels; ``x [B, C, H, W]`` broadcasts against
        ``h [S, B, C, H, W]`` → ``[S, B]``."""
        return self.likelihood.log_prob(x, h)

    def sample_prior(
        self, shape_prefix: int | Sequence[int], generator: torch.Generator | None = None
    ) -> Tensor:
        """``z ~ N(0, I)`` of shape ``[*shape_prefix, latent_dim]`` on the model's device."""
        prefix = (shape_prefix,) if isinstance(shape_prefix, int) else tuple(shape_prefix)
        gen_device = generator.device if generator is not None else self.device
        z = torch.randn(*prefix, self.hparams.latent_dim, generator=generator, device=gen_device)
        return z.to(self.device)

    def posterior(self, x: Tensor) -> Normal:
        """Approximate posterior q(z | x) with batch shape ``[B, latent_dim]``."""
        mu, logvar = self.encode(x)
        return Normal(mu, torch.exp(0.5 * logvar))

    def elbo(self, x: Tensor) -> dict[str, Tensor]:
        """Single-sample ELBO with analytic KL; each entry is ``[B]``."""
        q = self.posterior(x)
        h = self.decode(q.rsample())
        log_likelihood = self.log_likelihood(x, h)
        prior = Normal(torch.zeros_like(q.loc), torch.ones_like(q.scale))
        kl = kl_divergence(q, prior).sum(-1)
        return {"elbo": log_likelihood - kl, "log_likelihood": log_likelihood, "kl": kl}

    # -------------------------------------------------------------------------- training

    def setup(self, stage: str) -> None:
        # Before the strategy wraps the model (DDP lays its gradient buckets out after the parameters' strides)
        # and before the optimiser is made: in place, the same parameters, the same arithmetic as before.
        if stage == "fit" and self.hparams.get("channels_last", False):
            self.to(memory_format=torch.channels_last)

    def on_fit_end(self) -> None:
        if self.hparams.get("channels_last", False):  # scored as a loaded checkpoint is: plain layout
            self.to(memory_format=torch.contiguous_format)

    def _shared_step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x = batch[0]
        if self.hparams.get("channels_last", False):
            x = x.contiguous(memory_format=torch.channels_last)
        out = self.elbo(x)
        loss = -out["elbo"].mean()
        on_epoch = stage == "val"  # epoch means are averaged over DDP ranks (sync_dist; nothing to do on one process)
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=on_epoch, sync_dist=on_epoch)
        for key in (("elbo",) if stage == "val" else ()) + ("log_likelihood", "kl"):
            self.log(f"{stage}/{key}", out[key].mean(), on_epoch=on_epoch, sync_dist=on_epoch)
        return loss

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        loss = self._shared_step(batch, "train")
        if isinstance(self.likelihood, GaussianLikelihood):
            self.log("train/sigma", self.likelihood.sigma().mean())
        return loss

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        if self._image_batch is None:
            self._image_batch = batch[0][: self.hparams.n_image_samples].detach().clone()
        return self._shared_step(batch, "val")

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.RMSprop(self.parameters(), lr=self.hparams.lr)

    def on_validation_epoch_end(self) -> None:
        every = self.hparams.log_images_every_n_epochs
        if (
            every == 0
            or self._image_batch is None
            or self.trainer.sanity_checking
            or self.current_epoch % every != 0
        ):
            return
        tb_loggers = [lg for lg in self.loggers if isinstance(lg, TensorBoardLogger)]
        if not tb_loggers:
            return
        from torchvision.utils import make_grid

        x = self._image_batch.to(self.device)
        generator = torch.Generator().manual_seed(PRIOR_IMAGE_SEED)
        z = self.sample_prior(self.hparams.n_image_samples, generator=generator)
        with torch.no_grad():
            grids = {
                "input": x,
                "reconstruction": self.phi(self.decode(self.encode(x)[0])),
                "prior_sample": self.phi(self.decode(z)),
            }
        nrow = max(1, int(len(x) ** 0.5))
        for logger in tb_loggers:
            for name, images in grids.items():
                grid = make_grid(images.float().cpu(), nrow=nrow, pad_value=1.0)
                logger.experiment.add_image(f"images/{name}", grid, self.global_step)
