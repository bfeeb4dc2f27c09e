"""The paper's scores, per scheme and Jigsaw layer: log p_VAE, log p_FE and log p_FEVAE (Eqs. 1-4).

For each scheme (PR: z ~ p(z); APO: z ~ q(z|x)) the S decoded samples of the shared model pass are
reduced by :class:`fevae.scoring.estimators.ScoreAccumulator`: ``log_p_vae_<scheme>``, ``log_p_fe_<scheme>`` and
``log_p_fevae_<scheme>`` under the mixture of ``fe.layer``, ``log_p_fevae_l<k>_<scheme>`` under each
extra layer's, each with its Monte-Carlo standard error ``mcse__<name>``; ``iwae`` (the APO importance
weights) when a detector reads it. Always scored: every other detector and every report builds on them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import torch

from fevae.metrics.ood import ESS_PREFIX, MCSE_PREFIX
from fevae.scoring.estimators import ScoreAccumulator


class FevaeTerms:
    """The scores of the paper from the shared pass (see the module doc); ``mixtures``: ``{"l<k>": TorchMixture}``."""

    name = "fevae"

    def __init__(self, mixtures: Mapping[str, Any], layer: int, schemes: Sequence[str], n_samples: Mapping[str, int]):
        self.mixtures = mixtures
        self.schemes, self.n_samples = list(schemes), dict(n_samples)
        self.fe_names = {f"l{layer}": "fe"}
        self.fevae_names = {name: "fevae" if name == f"l{layer}" else f"fevae_{name}" for name in mixtures}

    def scores(self, f_x: Mapping[str, torch.Tensor], chunks_of: Callable[[str], Iterable[Mapping[str, torch.Tensor]]],
               stopwatch: Any) -> dict[str, torch.Tensor]:
        """Named scores of a batch from its features ``f_x`` and ``chunks_of(scheme)`` (model-pass chunks)."""
        out: dict[str, torch.Tensor] = {}
        for scheme in self.schemes:
            lp_x = {name: self.mixtures[name].component_log_prob(f) for name, f in f_x.items()}
            acc = ScoreAccumulator(self.mixtures, lp_x, self.fe_names, self.fevae_names, stopwatch=stopwatch, prefix=f"{scheme}/")
            for chunk in chunks_of(scheme):
                acc.update(chunk)
            errors = acc.compute_se() if self.n_samples[scheme] > 1 else {}  # one sample has no error estimate
            ess = acc.compute_ess() if self.n_samples[scheme] > 1 else {}
            for key, value in acc.compute().items():
                name = key if key == "iwae" else f"log_p_{key}_{scheme.lower()}"
                out[name] = value
                if key in errors:
                    out[MCSE_PREFIX + name] = errors[key]
                    out[MCSE_PREFIX + ESS_PREFIX + name] = ess[key]
        return out

    def cost(self, seconds: Mapping[str, float], n_images: int) -> dict[str, dict[str, float]]:
        """Seconds per image of each score, per scheme (decoding + the features and mixture densities it needs)."""
        n = max(n_images, 1)
        out = {}
        for scheme in self.schemes:
            decode = seconds.get(f"{scheme}/decode", 0.0)
            block = {"vae": decode / n}
            for name, score in self.fevae_names.items():
                cost = (decode + seconds.get(f"{scheme}/features/{name}", 0.0) + seconds.get(f"{scheme}/mixture/{name}", 0.0)) / n
                block[score] = cost
                if name in self.fe_names:
                    block[self.fe_names[name]] = cost
            out[scheme] = block
        return out
