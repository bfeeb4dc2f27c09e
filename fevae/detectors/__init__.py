"""OOD detectors fitted on the in-distribution validation images (issue #13, first part).

A :class:`~fevae.detectors.base.FittedDetector` turns per-image statistics the model pass already
yields (the score columns of a set: ``log_p_vae_apo``, ``log_p_fe_pr``, ``iwae``, ...) into one
score per image, higher = more in-distribution. It is **fitted on the in-distribution set's
validation part only** (never a test image, never an OOD image), then scores every part of every
set; its fitted state is plain arrays (``detectors.npz`` of a run), never a pickle.

* :class:`~fevae.detectors.fisher.StandardisedFevae` — ``standardised_fevae`` (per scheme): each
  term of p_FEVAE turned into its in-distribution left-tail probability, combined by Fisher's method.
* :class:`~fevae.detectors.dose.Dose` — ``dose``: a kernel density (bandwidth by cross-validated
  likelihood on the ID validation images) over standardised per-image statistics (Morningstar et
  al., 2021, DoSE).
"""

from fevae.detectors.base import FITTED_DETECTORS, FittedDetector, build_fitted, fit_detectors, load_fitted, save_fitted

__all__ = ["FITTED_DETECTORS", "FittedDetector", "build_fitted", "fit_detectors", "load_fitted", "save_fitted"]
