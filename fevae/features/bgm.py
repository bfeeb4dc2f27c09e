"""Fit the Bayesian Gaussian mixture (sklearn) of p_FE on features, and keep it as plain arrays (:class:`~fevae.features.mixture.MixtureArrays`)."""

from __future__ import annotations

import logging
import math
import time
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import torch

from fevae.errors import FevaeError
from fevae.features.mixture import (
    COVARIANCE_TYPES,
    INIT_PARAMS,
    PRIOR_TYPES,
    MixtureArrays,
)
from fevae.utils.parallel import pool_args

log = logging.getLogger(__name__)


# ---------------------------------------------------------------------------- fitting
def _check_int(value: Any, key: str, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise FevaeError(f"{key} must be an integer >= {minimum}, got {value!r}", f"set {key}")
    return int(value)


def fit_mixture(
    features: np.ndarray,
    n_components: int = 15,
    covariance_type: str = "full",
    max_iter: int = 500,
    reg_covar: float = 1e-6,
    random_state: int | None = 0,
    weight_concentration_prior_type: str = "dirichlet_process",
    n_init: int = 1,
    init_params: str = "kmeans",
) -> MixtureArrays:
    """Fit a :class:`~sklearn.mixture.BayesianGaussianMixture` to ``features [n, d]``.


    Inputs are validated before fitting (config keys ``fe.n``, ``fe.C``, ``fe.covariance_type``,
    ...); the fit runs in float64 on one BLAS/OpenMP thread: its bits do not depend on the machine's
    core count (two threads change the last bits), and one thread is faster than two for these sizes
    (100-d features, ~1e4 vectors; benchmarks/). A non-converged fit is logged (and recorded in
    ``converged``), not raised.
    """
    if isinstance(features, torch.Tensor):
        features = features.detach().cpu().numpy()
    try:
        feats = np.asarray(features, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise FevaeError(f"features are not numeric ({err})", "pass a float array [n, d]") from err
    if feats.ndim != 2 or feats.shape[1] < 1:
        raise FevaeError(
            f"features have shape {feats.shape}, expected [n, d] with d >= 1",
            "pass one flat feature vector per image",
        )
    n = feats.shape[0]
    c = _check_int(n_components, "fe.C", 1)
    if n < c:
        raise FevaeError(
            f"cannot fit {c} mixture components to {n} feature vectors",
            "increase fe.n (number of training images used for the mixture) or decrease fe.C",
        )
    if not np.all(np.isfinite(feats)):
        bad = int(np.sum(~np.all(np.isfinite(feats), axis=1)))
        raise FevaeError(
            f"{bad} of {n} feature vectors contain NaN/inf",
            "check the feature extractor checkpoint (diverged training?)",
        )
    if covariance_type not in COVARIANCE_TYPES:
        raise FevaeError(
            f"unknown covariance type {covariance_type!r}",
            f"set fe.covariance_type to one of {', '.join(COVARIANCE_TYPES)}",
        )
    if weight_concentration_prior_type not in PRIOR_TYPES:
        raise FevaeError(
            f"unknown weight concentration prior type {weight_concentration_prior_type!r}",
            f"set fe.weight_concentration_prior_type to one of {', '.join(PRIOR_TYPES)}",
        )
    if init_params not in INIT_PARAMS:
        raise FevaeError(
            f"unknown init_params {init_params!r}",
            f"set fe.init_params to one of {', '.join(INIT_PARAMS)}",
        )
    max_iter = _check_int(max_iter, "fe.max_iter", 1)
    n_init = _check_int(n_init, "fe.n_init", 1)
    try:
        reg = float(reg_covar)
    except (TypeError, ValueError):
        reg = math.nan
    if isinstance(reg_covar, bool) or not (math.isfinite(reg) and reg >= 0):
        raise FevaeError(f"fe.reg_covar must be a finite number >= 0, got {reg_covar!r}", "set fe.reg_covar")


    from sklearn.exceptions import ConvergenceWarning
    from sklearn.mixture import BayesianGaussianMixture
    from threadpoolctl import threadpool_limits


    bgm = BayesianGaussianMixture(
        n_components=c,
        covariance_type=covariance_type,
        max_iter=max_iter,
        reg_covar=reg,
        random_state=random_state,
        weight_concentration_prior_type=weight_concentration_prior_type,
        n_init=n_init,
        init_params=init_params,
    )
    with warnings.catch_warnings(), threadpool_limits(limits=1):
        warnings.simplefilter("ignore", ConvergenceWarning)
        try:
            bgm.fit(feats)
        except ValueError as err:  # ill-defined covariance (collapsed components)
            raise FevaeError(
                f"fitting the feature mixture failed: {err}",
                "increase fe.reg_covar, decrease fe.C or use more feature vectors (fe.n)",
            ) from err
    arrays = MixtureArrays.from_sklearn(bgm, n_samples_fit=n)
    if not arrays.converged:
        log.warning(
            "feature mixture did not converge in %d iterations (lower bound %.4g); "
            "consider raising fe.max_iter",
            arrays.n_iter,
            arrays.lower_bound,
        )
    return arrays


def _fit_timed(features: np.ndarray, kwargs: dict[str, Any]) -> tuple[MixtureArrays, float]:
    start = time.perf_counter()
    arrays = fit_mixture(features, **kwargs)
    return arrays, time.perf_counter() - start


def fit_mixtures(features: Mapping[Any, np.ndarray], n_jobs: int = 1, **kwargs: Any) -> dict[Any, tuple[MixtureArrays, float]]:
    """:func:`fit_mixture` of each ``features[key]`` (same ``kwargs``), ``n_jobs`` of them side by side in
    worker processes (joblib's loky; widest features first): ``{key: (arrays, seconds)}``. Each fit runs
    on one BLAS thread, so the results equal ``n_jobs=1``'s bit for bit (tested)."""
    order = sorted(features, key=lambda k: -np.shape(features[k])[1])
    from joblib import Parallel, delayed


    n_jobs = max(1, min(int(n_jobs), len(order)))


    fitted = Parallel(n_jobs=n_jobs, backend="loky" if n_jobs > 1 else "sequential", **pool_args())(  # workers die with this process
        delayed(_fit_timed)(features[k], kwargs) for k in order)
    return {k: fitted[order.index(k)] for k in features}
