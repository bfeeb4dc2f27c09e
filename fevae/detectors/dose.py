"""DoSE-style detector: a one-class density over standardised per-image statistics of the model pass.

Morningstar et al. (2021), "Density of States Estimation for Out-of-Distribution Detection" (DoSE):
the likelihood alone is one summary of an image; several (here: log p_VAE and log p_FE under each
scored scheme, and IWAE / input complexity when the run computes them) are standardised (mean and
standard deviation of the in-distribution validation images) and a kernel density is fitted on the
validation images' vectors; the score is its log density at an image's vector (higher = more
in-distribution). The bandwidth is chosen by 5-fold cross-validated log-likelihood on the validation
images only (a log grid of :data:`BANDWIDTHS`); sklearn's ``KernelDensity`` (Gaussian kernel).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from fevae.detectors.base import STATE_FIX, FittedDetector, state_array
from fevae.errors import FevaeError

#: bandwidth grid (standardised units) searched by cross-validation
BANDWIDTHS = np.logspace(-2, 1, 31)
def cv_folds(name: str, n: int, folds: int) -> int:
    """The cross-validation folds for ``n`` fitting images: ``folds``, fewer (at least 2) when there are under
    2 images per fold (a cross-fitted fold of a small validation part); one error below 4 images."""
    if n < 4:
        raise FevaeError(f"{name} is fitted on {n} in-distribution validation images, fewer than 4",
                         f"raise data.eval_split.val, or drop {name} from eval.detectors")
    return min(folds, n // 2)


def standardiser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and standard deviation of ``x`` [n, k] (a constant column's sd is 1)."""
    mean, sd = x.mean(0), x.std(0)
    sd[sd == 0] = 1.0
    return mean, sd


#: model-pass detectors whose score enters the statistics when the run computes them
EXTRA_STATS = ("iwae", "input_complexity")


class Dose(FittedDetector):
    """``dose``: log density of a KDE over standardised statistics, fitted on the ID validation images."""

    name = "dose"

    def __init__(self, stats: Sequence[str], folds: int = 5, seed: int = 0):
        if len(stats) < 1:
            raise FevaeError("dose needs at least one statistic", "score at least one scheme (eval.schemes)")
        self.stats, self.folds, self.seed = list(stats), int(folds), int(seed)
        self.mean = self.sd = self.points = None
        self.bandwidth = float("nan")
        self._kde = None

    @classmethod
    def for_run(cls, schemes: Sequence[str], detectors: Sequence[str], folds: int = 5) -> "Dose":
        """Built by :func:`fevae.detectors.registry.build_detectors`: the statistics a run scoring ``schemes`` and ``detectors`` has."""
        if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
            raise FevaeError(f"detector.dose.folds={folds!r} is invalid", "set it to an integer ≥ 2 (cross-validation folds of the bandwidth)")
        stats = [f"log_p_{t}_{s.lower()}" for s in schemes for t in ("vae", "fe")] + [d for d in EXTRA_STATS if d in detectors]
        return cls(stats, folds=folds)

    def needs(self) -> list[str]:
        return list(self.stats)

    def fit(self, id_val: Mapping[str, np.ndarray]) -> None:
        from sklearn.model_selection import GridSearchCV, KFold
        from sklearn.neighbors import KernelDensity

        x = self.columns(id_val, "the in-distribution validation part")
        folds = cv_folds(self.name, len(x), self.folds)
        self.mean, self.sd = standardiser(x)
        self.points = (x - self.mean) / self.sd
        search = GridSearchCV(KernelDensity(kernel="gaussian"), {"bandwidth": BANDWIDTHS},
                              cv=KFold(folds, shuffle=True, random_state=self.seed))
        search.fit(self.points)
        self.bandwidth = float(search.best_params_["bandwidth"])
        self._kde = KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit(self.points)

    def score(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        x = self.columns(scores, "a set")
        return {self.name: self._kde.score_samples((x - self.mean) / self.sd)}

    def state(self) -> dict[str, np.ndarray]:
        return {"mean": self.mean, "sd": self.sd, "points": self.points, "bandwidth": np.array(self.bandwidth)}

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        """Mean, sd ([k], sd > 0), points ([n, k], n ≥ 1) and one bandwidth > 0, all finite (k: the statistics)."""
        from sklearn.neighbors import KernelDensity

        k = len(self.stats)
        self.points = state_array(self.name, arrays, "points", ndim=2)
        if self.points.shape[1] != k or len(self.points) == 0:
            raise FevaeError(f"the stored dose state has {self.points.shape} points for {k} statistics",
                             "re-score the run with python -m fevae.evaluate (the run's eval settings changed)")
        self.mean = state_array(self.name, arrays, "mean", ndim=1, size=k)
        self.sd = state_array(self.name, arrays, "sd", ndim=1, size=k)
        bandwidth = state_array(self.name, arrays, "bandwidth")
        if bandwidth.size != 1 or not (self.sd > 0).all() or not bandwidth.reshape(-1)[0] > 0:
            raise FevaeError("the stored dose state needs one bandwidth > 0 and standard deviations > 0", STATE_FIX)
        self.bandwidth = float(bandwidth.reshape(-1)[0])
        self._kde = KernelDensity(kernel="gaussian", bandwidth=self.bandwidth).fit(self.points)
