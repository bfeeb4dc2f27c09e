"""IWAE: the importance-weighted estimate of log p(x) (Burda et al., 2016, "Importance Weighted Autoencoders").

log p(x) ≈ logmeanexp_k [log p(x|z_k) + log p(z_k) − log q(z_k|x)], z_k ~ q(z|x), K = the APO scheme's
S. It reuses the APO draws of the shared model pass (no extra decoding), so its noise is the same as
``log_p_vae_apo``'s (common random numbers).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from fevae.detectors.base import Detector
from fevae.metrics.ood import ESS_PREFIX, MCSE_PREFIX


class Iwae(Detector):
    name = "iwae"
    uses_log_weights = True

    def scores(self, shared: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k: shared[k] for k in ("iwae", MCSE_PREFIX + "iwae", MCSE_PREFIX + ESS_PREFIX + "iwae") if k in shared}
