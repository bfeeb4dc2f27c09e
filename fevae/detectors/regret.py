"""Likelihood regret (Xiao et al., 2020, "Likelihood Regret: An Out-of-Distribution Detection Score
for Variational Auto-encoder"): minus the ELBO gain of an encoder copy refitted to the image
(:func:`fevae.scoring.baselines.likelihood_regret_score`). It costs ~0.035 s per image on 2 CPU cores (``make bench``), so only
a seeded random sample of ``subset`` images of each part (validation, test) of each evaluation set is
scored: the same images for every run seed (:meth:`fevae.evaluation.scorer.Scorer.subset_images`); their dataset
indices are stored next to the scores (``index__likelihood_regret`` in ``scores/<set>.npz``).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import torch

from fevae.scoring.baselines import likelihood_regret_score
from fevae.detectors.base import Detector
from fevae.errors import FevaeError
from fevae.utils.io import INDEX_PREFIX
from fevae.utils.log import stage

log = logging.getLogger(__name__)


class LikelihoodRegret(Detector):
    name = "likelihood_regret"

    def __init__(self, subset: int = 300, steps: int = 50, lr: float = 1e-4, n_samples: int = 4, batch_size: int = 64):
        for key, value, low in (("subset", subset, 0), ("steps", steps, 0), ("n_samples", n_samples, 1), ("batch_size", batch_size, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise FevaeError(f"eval.regret.{key}={value!r} is invalid", f"set eval.regret.{key} to an integer ≥ {low}")
        if isinstance(lr, bool) or not isinstance(lr, (int, float)) or not lr > 0:
            raise FevaeError(f"eval.regret.lr={lr!r} is invalid", "set eval.regret.lr to a number > 0 (e.g. 1e-4)")
        self.subset, self.steps, self.lr, self.n_samples, self.batch_size = subset, steps, float(lr), n_samples, batch_size

    def rows(self, index: torch.Tensor, set_name: str) -> torch.Tensor:
        chosen = self.scorer.subset_images(set_name, self.subset)
        if chosen is None:  # images without known indices (none of the run's sets): the first `subset`
            return index < self.subset
        return torch.from_numpy(np.isin(index.cpu().numpy(), chosen)).to(index.device)

    def batch(self, x: torch.Tensor, index: torch.Tensor, set_name: str) -> dict[str, torch.Tensor] | None:
        if not len(x):
            return None
        step = self.batch_size
        with stage(f"likelihood regret of {len(x)} {set_name} images ({self.steps} encoder steps each)", logger=log):
            values = [
                likelihood_regret_score(x[i : i + step], index[i : i + step], vae=self.scorer.vae, steps=self.steps, lr=self.lr,
                                        n_samples=self.n_samples, seed=self.scorer.seed, stream=self.scorer.stream(set_name, "APO"))
                for i in range(0, len(x), step)
            ]
        return {"score": torch.cat(values), "image_index": index.to(torch.float64)}

    def scores(self, shared: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if "score" not in own:
            return {}
        out = {self.name: own["score"]}
        if "image_index" in own:
            out[INDEX_PREFIX + self.name] = np.asarray(own["image_index"], dtype=np.float64)
        return out
