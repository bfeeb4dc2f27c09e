"""Standardised FEVAE: p_FEVAE's two terms on one scale, by their in-distribution tail probabilities.

log p_FEVAE ≈ log p_VAE + log p_FE adds a pixel term of ~10³ nats to a feature term of ~10² nats, so
whichever spreads more decides the ranking, by accident of scale. Here each term t ∈ {log p_VAE,
log p_FE} of a scheme becomes its left-tail probability under the in-distribution validation images,

    p_t(x) = (1 + #{validation images v : t(v) ≤ t(x)}) / (n + 1),

(the empirical CDF, never 0), and the two are combined by Fisher's method: the score is
log p_VAE-tail + log p_FE-tail = ½ · (−χ²₄ statistic); higher = more in-distribution. An image
below every validation value of a term gets the floor 1/(n + 1) for it. Nothing is tuned.

The two-sided variant ``standardised_fevae_two_sided_<scheme>`` combines each term's *two-sided* tail
probability (:func:`fevae.metrics.conformal.p_values`): an image whose likelihood is too *high* for the
in-distribution images (a flat or low-contrast image) is flagged like one whose likelihood is too low.
Reference: R. A. Fisher, *Statistical Methods for Research Workers* (1925), §21.1; the per-term
tail probabilities as in "typicality" tests of Nalisnick et al. (2019).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fevae.detectors.base import STATE_FIX, FittedDetector, state_array
from fevae.errors import FevaeError
from fevae.metrics.conformal import p_values

TERMS = ("vae", "fe")


class StandardisedFevae(FittedDetector):
    """``standardised_fevae_<scheme>``: Fisher's combination of the ID tail probabilities of log p_VAE and log p_FE;
    ``standardised_fevae_two_sided_<scheme>``: the same of their two-sided tail probabilities."""

    name = "standardised_fevae"

    def __init__(self, schemes: Sequence[str] = ("PR", "APO")):
        if not schemes:
            raise FevaeError("standardised_fevae needs a scheme (eval.schemes is empty)", "use eval.schemes=[PR,APO]")
        self.schemes = list(schemes)
        #: column -> the sorted validation values
        self.reference: dict[str, np.ndarray] = {}

    @classmethod
    def for_run(cls, schemes: Sequence[str], detectors: Sequence[str]) -> "StandardisedFevae":
        """Built by :func:`fevae.detectors.registry.build_detectors` for a run scoring ``schemes`` and ``detectors``."""
        return cls(schemes)

    def _terms(self, scheme: str) -> list[str]:
        return [f"log_p_{t}_{scheme.lower()}" for t in TERMS]

    def needs(self) -> list[str]:
        return [c for s in self.schemes for c in self._terms(s)]

    def outputs(self) -> list[str]:
        return [f"{self.name}{side}_{s.lower()}" for side in ("", "_two_sided") for s in self.schemes]

    def fit(self, id_val: Mapping[str, np.ndarray]) -> None:
        x = self.columns(id_val, "the in-distribution validation part")
        self.reference = {c: np.sort(x[:, i]) for i, c in enumerate(self.needs())}

    def score(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.columns(scores, "a set")
        cols = dict(zip(self.needs(), x.T))
        out = {}
        names = iter(self.outputs())
        for two_sided in (False, True):
            for scheme in self.schemes:
                out[next(names)] = sum(np.log(p_values(self.reference[c], cols[c], two_sided)) for c in self._terms(scheme))
        return out

    def state(self) -> dict[str, np.ndarray]:
        return {c: v for c, v in self.reference.items()}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """The sorted validation values of each term: present, 1-D, non-empty, finite, ascending."""
        missing = [c for c in self.needs() if c not in arrays]
        if missing:
            raise FevaeError(f"the stored standardised_fevae state lacks {missing}", STATE_FIX)
        reference = {c: state_array(self.name, arrays, c, ndim=1) for c in self.needs()}
        for c, ref in reference.items():
            if len(ref) == 0:
                raise FevaeError(f"the stored standardised_fevae state has no validation values of {c}", STATE_FIX)
            if np.any(np.diff(ref) < 0):
                raise FevaeError(f"the stored standardised_fevae values of {c} are not sorted", STATE_FIX)
        self.reference = reference
