"""Fusion of several per-image statistics by a density fitted on the in-distribution validation images.

Like DoSE (:mod:`fevae.detectors.dose`), each image is summarised by a vector of statistics of the
model pass — by default the APO log p_VAE and log p_FE, IWAE, input complexity and the Jigsaw's own
loss (:data:`DEFAULT_STATS`; those the run does not compute are left out) — standardised with the
in-distribution validation images' mean and standard deviation. A density is fitted on those vectors
and the score is its log density at an image's vector (higher = more in-distribution; an image whose
statistics are too *high* is as far out as one whose statistics are too low, so the score is two-sided).

* ``density: gmm`` (default): sklearn's ``GaussianMixture`` (full covariances); its number of components
  is the one of :data:`COMPONENTS` with the best mean held-out log-likelihood over ``folds``-fold
  cross-validation on the validation images. Stored as plain arrays (weights, means, Cholesky factors
  of the precisions).
* ``density: kde``: the Gaussian KDE with a cross-validated bandwidth of :class:`~fevae.detectors.dose.Dose`.

The validation images' own ``fused`` scores are out-of-fold (:func:`fevae.detectors.base.cross_fit`),
like every fitted detector's. The posterior's KL to the prior is not a statistic of the model pass yet,
so it is not among the defaults.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fevae.detectors.base import STATE_FIX, FittedDetector, state_array
from fevae.detectors.dose import Dose, cv_folds, standardiser
from fevae.errors import FevaeError

#: the statistics fused by default (those the run computes)
DEFAULT_STATS = ("log_p_vae_apo", "log_p_fe_apo", "iwae", "input_complexity", "jigsaw_loss")
#: numbers of mixture components searched by cross-validated held-out likelihood
COMPONENTS = (1, 2, 3, 4, 6, 8)
DENSITIES = ("gmm", "kde")


def _mixture(weights: np.ndarray, means: np.ndarray, precisions_cholesky: np.ndarray):
    """A fitted sklearn ``GaussianMixture`` (full covariances) rebuilt from plain arrays."""
    from sklearn.mixture import GaussianMixture

    gm = GaussianMixture(n_components=len(weights), covariance_type="full")
    gm.weights_, gm.means_, gm.precisions_cholesky_ = weights, means, precisions_cholesky
    gm.precisions_ = precisions_cholesky @ np.swapaxes(precisions_cholesky, 1, 2)
    gm.covariances_ = np.linalg.inv(gm.precisions_)
    gm.converged_, gm.n_iter_, gm.lower_bound_ = True, 0, float("nan")
    return gm


class Fused(FittedDetector):
    """``fused``: log density (Gaussian mixture or KDE) of standardised statistics, fitted on the ID validation images."""

    name = "fused"

    def __init__(self, stats: Sequence[str], density: str = "gmm", folds: int = 5, seed: int = 0):
        if len(stats) < 1:
            raise FevaeError("fused has no statistic the run computes", "score APO (eval.schemes) or list detector.fused.stats")
        if density not in DENSITIES:
            raise FevaeError(f"detector.fused.density={density!r} is invalid", f"choose one of {list(DENSITIES)}")
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise FevaeError(f"detector.fused.folds={folds!r} is invalid", "set it to an integer ≥ 2 (cross-validation folds)")
        self.stats, self.density, self.folds, self.seed = list(stats), density, folds, int(seed)
        self.mean = self.sd = None
        self._gm = None
        self._kde = Dose(self.stats, folds=folds, seed=seed) if density == "kde" else None

    @classmethod
    def for_run(cls, schemes: Sequence[str], detectors: Sequence[str], stats: Sequence[str] | None = None,
                density: str = "gmm", folds: int = 5) -> "Fused":
        """Built by :func:`fevae.detectors.registry.build_detectors`: ``stats`` (default :data:`DEFAULT_STATS`)
        that a run scoring ``schemes`` and ``detectors`` computes. A statistic named explicitly must be computed."""
        computed = {f"log_p_{t}_{s.lower()}" for s in schemes for t in ("vae", "fe", "fevae")} | set(detectors)
        if stats is None:
            return cls([s for s in DEFAULT_STATS if s in computed], density=density, folds=folds)
        missing = [s for s in stats if s not in computed]
        if missing:
            raise FevaeError(f"detector.fused.stats has statistics the run does not compute: {missing}",
                             f"choose among {sorted(computed)}")
        return cls(list(stats), density=density, folds=folds)

    def needs(self) -> list[str]:
        return list(self.stats)

    def fit(self, id_val: Mapping[str, np.ndarray]) -> None:
        if self._kde is not None:
            self._kde.fit(id_val)
            return
        from sklearn.mixture import GaussianMixture
        from sklearn.model_selection import GridSearchCV, KFold

        x = self.columns(id_val, "the in-distribution validation part")
        folds = cv_folds(self.name, len(x), self.folds)
        self.mean, self.sd = standardiser(x)
        z = (x - self.mean) / self.sd
        # at least ~10 images per parameter of a component's full covariance in each training fold
        per_component = 10 * (z.shape[1] + z.shape[1] * (z.shape[1] + 1) // 2)
        grid = [k for k in COMPONENTS if k == 1 or k * per_component <= len(z) * (folds - 1) / folds]
        search = GridSearchCV(GaussianMixture(covariance_type="full", reg_covar=1e-4, n_init=1, random_state=self.seed),
                              {"n_components": grid}, cv=KFold(folds, shuffle=True, random_state=self.seed))
        search.fit(z)
        self._gm = search.best_estimator_

    def score(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._kde is not None:
            return {self.name: self._kde.score(scores)[self._kde.name]}
        x = self.columns(scores, "a set")
        return {self.name: self._gm.score_samples((x - self.mean) / self.sd)}

    @property
    def n_components(self) -> int:
        return 0 if self._gm is None else len(self._gm.weights_)

    def state(self) -> dict[str, np.ndarray]:
        if self._kde is not None:
            return self._kde.state()
        return {"mean": self.mean, "sd": self.sd, "weights": self._gm.weights_, "means": self._gm.means_,
                "precisions_cholesky": self._gm.precisions_cholesky_}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """KDE: :meth:`Dose.load_state`. GMM: mean, sd ([k], sd > 0), weights ([c], > 0, sum 1), means ([c, k])
        and the precisions' Cholesky factors ([c, k, k], upper triangular with a positive diagonal), all finite."""
        if self._kde is not None:
            self._kde.load_state(arrays)
            return
        k = len(self.stats)
        self.mean = state_array(self.name, arrays, "mean", ndim=1, size=k)
        self.sd = state_array(self.name, arrays, "sd", ndim=1, size=k)
        weights = state_array(self.name, arrays, "weights", ndim=1)
        means = state_array(self.name, arrays, "means", ndim=2)
        chol = state_array(self.name, arrays, "precisions_cholesky", ndim=3)
        c = len(weights)
        if c < 1 or means.shape != (c, k) or chol.shape != (c, k, k):
            raise FevaeError(f"the stored fused state has {c} weights, means {means.shape} and factors {chol.shape} for {k} statistics",
                             "re-score the run with python -m fevae.evaluate (the run's eval settings changed)")
        diag = np.diagonal(chol, axis1=1, axis2=2)
        if not ((self.sd > 0).all() and (weights > 0).all() and abs(weights.sum() - 1) < 1e-6 and (diag > 0).all()
                and np.allclose(np.tril(chol, -1), 0)):
            raise FevaeError("the stored fused state needs sd > 0, weights > 0 summing to 1 and upper-triangular factors "
                             "with a positive diagonal", STATE_FIX)
        self._gm = _mixture(weights, means, chol)
