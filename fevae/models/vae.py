"""Convolutional VAE of App. A (after Nalisnick et al., 2018) with a pluggable pixel likelihood.

Deviation from the paper: the last transposed convolution outputs logits ``h`` with no
ReLU/BatchNorm/Dropout and no sigmoid. The paper's final sigmoid is applied by the likelihood
(φ(z) = sigmoid(h), see :meth:`VAE.phi`), so Bernoulli/continuous-Bernoulli log-probabilities are
computed from logits, which is numerically stabler; a ReLU/BatchNorm/Dropout before the output
sigmoid would also restrict or randomise the decoded parameters.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.loggers import TensorBoardLogger
from omegaconf import DictConfig, OmegaConf
from torch import Tensor, nn
from torch.distributions import Normal, kl_divergence

from fevae.errors import FevaeError
from fevae.models.likelihoods import IMAGE_SHAPE, GaussianLikelihood, build_likelihood

#: log σ² of the posterior is clamped to this range: exp(-30) ≈ 1e-13 and exp(20) ≈ 5e8 are far
#: beyond any useful variance, and the clamp stops exp() from over/underflowing early in training.
LOGVAR_RANGE: tuple[float, float] = (-30.0, 20.0)
#: Seed of the fixed prior samples logged as images.
PRIOR_IMAGE_SEED = 0


def _conv_block(conv: nn.Module, channels: int, dropout: float) -> list[nn.Module]:
    """``conv`` followed by ReLU, BatchNorm2d and Dropout (App. A ordering)."""
    return [conv, nn.ReLU(), nn.BatchNorm2d(channels), nn.Dropout(dropout)]


class VAE(L.LightningModule):
    """Gaussian-latent VAE on 1×28×28 images, trained by maximising the ELBO with RMSprop.

    Args:
        likelihood: likelihood config, e.g. ``{"name": "gaussian", "sigma": "scalar"}``; see
            :func:`fevae.models.likelihoods.build_likelihood`.
        latent_dim: number of Gaussian latent variables.
        hidden_dim: width of the encoder's linear layer.
        dropout: dropout rate after every hidden (transposed) convolution.
        lr: RMSprop learning rate.
        log_images_every_n_epochs: log input/reconstruction/prior-sample grids to TensorBoard every
            this many validation epochs (0 disables).
        n_image_samples: number of images per logged grid.
    """

    def __init__(
        self,
        likelihood: Mapping[str, Any],
        latent_dim: int = 20,
        hidden_dim: int = 50,
        dropout: float = 0.1,
        lr: float = 1e-3,
        log_images_every_n_epochs: int = 1,
        n_image_samples: int = 64,
    ):
        super().__init__()
        if isinstance(likelihood, DictConfig):
            likelihood = OmegaConf.to_container(likelihood, resolve=True)
        likelihood = dict(likelihood)  # plain dict: self-describing, weights_only-loadable ckpt
        for key, value, ok in [
            ("latent_dim", latent_dim, latent_dim >= 1),
            ("hidden_dim", hidden_dim, hidden_dim >= 1),
            ("dropout", dropout, 0 <= dropout < 1),
            ("lr", lr, lr > 0),
            ("log_images_every_n_epochs", log_images_every_n_epochs,
             log_images_every_n_epochs >= 0),
            ("n_image_samples", n_image_samples, n_image_samples >= 1),
        ]:
            if not ok:
                raise FevaeError(
                    f"model.vae.{key}={value} is out of range", "see fevae.models.vae.VAE"
                )
        if "name" not in likelihood:
            raise FevaeError("model.vae.likelihood.name is missing", "set it, e.g. to gaussian")
        self.save_hyperparameters()

        self.likelihood = build_likelihood(**likelihood)
        channels, strides = (8, 16, 32, 64, 64), (2, 1, 2, 1, 2)
        layers: list[nn.Module] = []
        c_in = IMAGE_SHAPE[0]
        for c_out, stride in zip(channels, strides):
            layers += _conv_block(nn.Conv2d(c_in, c_out, 5, stride, padding=2), c_out, dropout)
            c_in = c_out
        # 28 → 14 → 14 → 7 → 7 → 4
        self.encoder = nn.Sequential(
            *layers,
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, hidden_dim),
            nn.ReLU(),
            nn.Linear(hidden_dim, 2 * latent_dim),
        )
        self.decoder_input = nn.Sequential(nn.Linear(latent_dim, 64 * 7 * 7), nn.ReLU())
        self.decoder = nn.Sequential(
            *_conv_block(  # 7 → 14
                nn.ConvTranspose2d(64, 32, 3, 2, padding=1, output_padding=1), 32, dropout
            ),
            *_conv_block(nn.ConvTranspose2d(32, 32, 3, 1, padding=1), 32, dropout),  # 14
            *_conv_block(nn.ConvTranspose2d(32, 3, 4, 2, padding=1), 3, dropout),  # 28
            nn.ConvTranspose2d(3, IMAGE_SHAPE[0], 5, 1, padding=2),  # 28, logits
        )
        self._image_batch: Tensor | None = None

    # ----------------------------------------------------------------------------- model

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Posterior parameters ``(mu, logvar)``, each ``[B, latent_dim]``; logvar is clamped."""
        mu, logvar = self.encoder(x).chunk(2, dim=-1)
        return mu, logvar.clamp(*LOGVAR_RANGE)

    def decode(self, z: Tensor) -> Tensor:
        """Decoder logits ``h`` ``[..., 1, 28, 28]`` for latents ``z`` ``[..., latent_dim]``."""
        lead = z.shape[:-1]
        h = self.decoder_input(z.reshape(-1, z.shape[-1])).view(-1, 64, 7, 7)
        return self.decoder(h).view(*lead, *IMAGE_SHAPE)

    def phi(self, h: Tensor) -> Tensor:
        """The decoded image φ(z) ∈ [0, 1] that the feature extractor sees and image grids draw: the
        likelihood's mean E[x | z] (the parameter sigmoid(h) for Bernoulli and Gaussian, not λ for
        the continuous Bernoulli; see :meth:`fevae.models.likelihoods.Likelihood.mean`)."""
        return self.likelihood.mean(h)

    def log_likelihood(self, x: Tensor, h: Tensor) -> Tensor:
        """log p(x | z) summed over pixels; ``x [B, ...]`` broadcasts against ``h [S, B, ...]``."""
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

    def _shared_step(self, batch: Sequence[Tensor], stage: str) -> Tensor:
        x = batch[0]
        out = self.elbo(x)
        loss = -out["elbo"].mean()
        on_epoch = stage == "val"
        self.log(f"{stage}/loss", loss, prog_bar=True, on_epoch=on_epoch)
        for key in (("elbo",) if stage == "val" else ()) + ("log_likelihood", "kl"):
            self.log(f"{stage}/{key}", out[key].mean(), on_epoch=on_epoch)
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
