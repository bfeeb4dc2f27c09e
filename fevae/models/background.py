"""The background VAE of the likelihood ratio (Ren et al., 2019; :mod:`fevae.detectors.likelihood_ratio`).

The run's VAE, trained on inputs perturbed at rate μ: each pixel value is, with probability μ,
replaced by a uniformly random one (one of the 256 grey levels for [0, 1] images; 0 or 1 for a
Bernoulli VAE on binarised images). The perturbation destroys the images' semantic content and keeps
their background statistics. Training batches draw it from the global RNG (seeded per model, like
dropout); validation batches from a generator seeded by the batch index, so the validation loss
that picks the best checkpoint compares epochs on the same perturbed images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from fevae.errors import FevaeError
from fevae.models.vae import VAE, check_vae_image_shape


def mutate(x: Tensor, rate: float, binary: bool, generator: torch.Generator | None = None) -> Tensor:
    """``x`` with each value replaced, with probability ``rate``, by a uniform random pixel value."""
    flip = torch.rand(x.shape, generator=generator) < rate
    if binary:
        noise = torch.randint(0, 2, x.shape, generator=generator).to(x.dtype)
    else:
        noise = torch.randint(0, 256, x.shape, generator=generator).to(x.dtype) / 255.0
    return torch.where(flip.to(x.device), noise.to(x.device), x)


class BackgroundVAE(VAE):
    """:class:`~fevae.models.vae.VAE` trained and validated on inputs perturbed at ``mutation_rate``."""

    def __init__(self, *args: Any, mutation_rate: float = 0.2, **kwargs: Any):
        if isinstance(mutation_rate, bool) or not isinstance(mutation_rate, (int, float)) or not 0 < mutation_rate < 1:
            raise FevaeError(f"mutation_rate={mutation_rate!r} is invalid", "set detector.likelihood_ratio.mutation_rate in (0, 1)")
        if "image_shape" in kwargs:  # as VAE stores it (a plain tuple): Lightning's hparams come from this frame too
            kwargs["image_shape"] = check_vae_image_shape(kwargs["image_shape"])
        super().__init__(*args, **kwargs)
        self.mutation_rate = float(mutation_rate)
        self.binary = self.hparams.likelihood.get("name") == "bernoulli"

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        return super().training_step([mutate(batch[0], self.mutation_rate, self.binary), *batch[1:]], batch_idx)

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        generator = torch.Generator().manual_seed(batch_idx)
        return super().validation_step([mutate(batch[0], self.mutation_rate, self.binary, generator), *batch[1:]], batch_idx)
