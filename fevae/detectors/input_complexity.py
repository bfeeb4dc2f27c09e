"""Input complexity (Serrà et al., 2020, "Input complexity and out-of-distribution detection with
likelihood-based generative models"): IWAE log p(x) + L(x)·ln 2, L(x) the PNG code length of the 8-bit
image in bits (both terms in nats). Its own cost is the PNG compression.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import torch

from fevae.scoring.baselines import compressed_bits, input_complexity_from_bits, to_uint8
from fevae.detectors.base import Detector
from fevae.metrics.ood import ESS_PREFIX, MCSE_PREFIX


class InputComplexity(Detector):
    name = "input_complexity"
    uses_log_weights = True

    def batch(self, x: torch.Tensor, index: torch.Tensor, set_name: str) -> dict[str, torch.Tensor]:
        return {"bits": torch.from_numpy(compressed_bits(to_uint8(x)))}

    def scores(self, shared: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = {self.name: input_complexity_from_bits(torch.from_numpy(shared["iwae"]), torch.from_numpy(own["bits"])).numpy()}
        for prefix in (MCSE_PREFIX, MCSE_PREFIX + ESS_PREFIX):  # the code length is exact: IWAE's error and weights
            if prefix + "iwae" in shared:
                out[prefix + self.name] = shared[prefix + "iwae"]
        return out
