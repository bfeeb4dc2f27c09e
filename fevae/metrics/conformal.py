"""Conformal p-values of scores against in-distribution calibration scores, and the false-positive rate they realise.

For a score s (higher = more in-distribution) and calibration scores c_1..c_n of held-out
in-distribution images, the conformal p-value of s is

    left tail:  p(s) = (1 + #{i : c_i ≤ s}) / (n + 1)
    two-sided:  p(s) = min(1, 2 · min(left(s), (1 + #{i : c_i ≥ s}) / (n + 1)))

When s and the c_i are exchangeable (a new in-distribution image), P(p(s) ≤ α) ≤ α: an image is flagged
OOD when p(s) ≤ α, and the fraction of *in-distribution test* images flagged — the realised
false-positive rate — must come out ≈ α for a valid detector (Vovk et al. 2005; Bates et al. 2023,
"Testing for outliers with conformal p-values"). A fitted detector's test score is not exchangeable with
its out-of-fold validation scores (a fit on every validation image scores new images higher than the smaller
fold fits score their held-out images): its p-values are cross-conformal instead
(:meth:`fevae.detectors.base.CrossFit.p_values`).
"""

from __future__ import annotations

import numpy as np

#: nominal level of the OOD flag (metrics.json ``conformal_fpr`` / ``conformal_tpr``)
ALPHA = 0.05


def p_values(calibration: np.ndarray, s: np.ndarray, two_sided: bool = False) -> np.ndarray:
    """Conformal p-values (float64, in (0, 1]) of scores ``s`` against ``calibration`` (see the module doc)."""
    ref = np.sort(np.asarray(calibration, dtype=np.float64))
    s = np.asarray(s, dtype=np.float64)
    n = len(ref)
    left = (1.0 + np.searchsorted(ref, s, side="right")) / (n + 1.0)
    if not two_sided:
        return left
    right = (1.0 + n - np.searchsorted(ref, s, side="left")) / (n + 1.0)
    return np.minimum(1.0, 2.0 * np.minimum(left, right))


def flagged_rates(calibration: np.ndarray | None, s_in: np.ndarray, s_out: np.ndarray, alpha: float = ALPHA) -> dict[str, float]:
    """``conformal_fpr``: the fraction of in-distribution test scores ``s_in`` flagged (p ≤ ``alpha``), and
    ``conformal_tpr``: the fraction of OOD scores ``s_out`` flagged, against ``calibration``; with
    ``calibration=None``, ``s_in`` and ``s_out`` are p-values already (a fitted detector's cross-conformal ones)."""
    if calibration is not None:
        s_in, s_out = p_values(calibration, s_in), p_values(calibration, s_out)
    return {"conformal_fpr": float(np.mean(np.asarray(s_in) <= alpha)), "conformal_tpr": float(np.mean(np.asarray(s_out) <= alpha))}
