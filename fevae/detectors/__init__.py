"""OOD detectors as plug-ins: one module per detector, one config file per detector (``conf/detector/``).

Two kinds (:mod:`fevae.detectors.base`):

* :class:`~fevae.detectors.base.Detector` — scored in the shared model pass
  (:class:`fevae.evaluation.scorer.Scorer` is the driver): :mod:`~fevae.detectors.fevae` (the paper's
  log p_VAE / p_FE / p_FEVAE per scheme and layer, always scored), :mod:`~fevae.detectors.iwae`,
  :mod:`~fevae.detectors.input_complexity`, :mod:`~fevae.detectors.regret` (likelihood regret),
  :mod:`~fevae.detectors.likelihood_ratio` (Ren et al. 2019, with a background VAE),
  :mod:`~fevae.detectors.jigsaw_loss` (the Jigsaw's own self-supervised loss, Hendrycks et al. 2019).
* :class:`~fevae.detectors.base.FittedDetector` — computed from a set's score columns and **fitted on
  the in-distribution set's validation part only** (never a test image, never an OOD image); the fitted
  state is plain arrays (``detectors.npz`` of a run), never a pickle:
  :mod:`~fevae.detectors.fisher` (``standardised_fevae``: Fisher's combination of the two terms' ID
  tail probabilities, one- and two-sided), :mod:`~fevae.detectors.dose` (DoSE: a KDE over standardised
  statistics), :mod:`~fevae.detectors.fused` (a Gaussian mixture over standardised statistics, the
  Jigsaw loss included). Their validation-part scores are out-of-fold (5-fold cross-fitting).

Every score is higher = more in-distribution. :mod:`fevae.detectors.registry` builds them from config.
"""

from fevae.detectors.base import Detector, FittedDetector, fit_detectors, load_fitted, save_fitted
from fevae.detectors.registry import SHIPPED, build_detectors, build_fitted

__all__ = ["SHIPPED", "Detector", "FittedDetector", "build_detectors", "build_fitted", "fit_detectors", "load_fitted", "save_fitted"]
