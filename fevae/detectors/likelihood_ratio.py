"""Likelihood ratio (Ren et al., 2019, "Likelihood Ratios for Out-of-Distribution Detection", NeurIPS).

A generative model's likelihood mixes *background* statistics (how smooth, how dark, how much ink —
what any image of the domain shares) with the *semantic* content of the in-distribution data. Ren et
al. train a second, background model on training inputs perturbed at rate μ (each pixel replaced by
a uniformly random value with probability μ, :class:`fevae.models.background.BackgroundVAE`), which
destroys the semantics but keeps the background statistics, and score

    LLR(x) = log p(x) − log p_background(x)      (higher = more in-distribution).

Both log-likelihoods are IWAE estimates with the APO scheme's K = S posterior draws on the same noise
stream (common random numbers): ``log p(x)`` is the run's ``iwae`` column, the background's is
computed on each batch (its cost: one more APO decoding pass). The background VAE has the run's VAE
architecture and training budget; it is trained, cached (``cache.enabled``) and checkpointed like the
run's models (``checkpoints/background/``). μ = 0.2 is Ren et al.'s range upper end for images
(they tune μ ∈ [0.1, 0.2] on validation OOD data; nothing here is tuned on OOD images).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from fevae.scoring.baselines import iwae_score
from fevae.detectors.base import Detector
from fevae.errors import FevaeError
from fevae.scoring.estimators import channels_last_decode

BACKGROUND = "background"


class LikelihoodRatio(Detector):
    name = "likelihood_ratio"
    uses_log_weights = True
    models = (BACKGROUND,)

    def __init__(self, mutation_rate: float = 0.2):
        if isinstance(mutation_rate, bool) or not isinstance(mutation_rate, (int, float)) or not 0 < mutation_rate < 1:
            raise FevaeError(f"detector.likelihood_ratio.mutation_rate={mutation_rate!r} is invalid",
                             "set it to a probability in (0, 1), e.g. 0.2 (Ren et al. use 0.1-0.2)")
        self.mutation_rate = float(mutation_rate)

    def model_config(self, cfg: DictConfig, name: str) -> DictConfig:
        """The background VAE: the run's VAE config with the perturbing class and μ."""
        node = OmegaConf.to_container(cfg.model.vae, resolve=True)
        node.update({"_target_": "fevae.models.background.BackgroundVAE", "mutation_rate": self.mutation_rate})
        return OmegaConf.create(node)

    def batch(self, x: torch.Tensor, index: torch.Tensor, set_name: str) -> dict[str, torch.Tensor]:
        s = self.scorer
        background = s.models[BACKGROUND]
        decode = channels_last_decode(background) if s.channels_last else None  # as the run's own VAE is decoded
        log_p = iwae_score(x, index, vae=background, n_samples=s.n_samples["APO"], chunk_size=s.chunk_size, seed=s.seed,
                           stream=s.stream(set_name, "APO"), decode=decode)
        return {"log_p_background": log_p}

    def scores(self, shared: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {self.name: shared["iwae"] - own["log_p_background"]}
