"""Bayesian Gaussian mixture over Jigsaw features, stored as plain arrays (never pickled).

The paper (Sec. 3-4) fits a Bayesian Gaussian mixture (BGM) with ``C = 15`` components to the
features ``f = l^1(x)`` of ``n = 10000`` training images and scores a test image ``x`` against
decoded parameters ``phi_x(z)`` with Eq. (3)::

    p_FE(f_x | f_phi) = p_FE(f_x | C_phi) * p_FE(f_phi | C_phi),   C_phi = argmax_c resp_c(f_phi)

This module

* fits :class:`sklearn.mixture.BayesianGaussianMixture` (:func:`fit_mixture`) and keeps only
  float64 arrays (:class:`MixtureArrays`) — enough to reproduce sklearn's ``predict``,
  ``predict_proba`` and ``score_samples`` exactly — saved atomically as ``.npz`` and loaded with
  ``allow_pickle=False``;
* evaluates the mixture in torch (:class:`TorchMixture`) on any device, in float64.

sklearn internals mirrored (``sklearn/mixture/_bayesian_mixture.py`` and
``sklearn/mixture/_gaussian_mixture.py``):

* ``_estimate_log_gaussian_prob``: ``-0.5 * (d log 2pi + ||(x - mu_c) P_c||^2) + log det P_c``
  with ``P_c = precisions_cholesky_[c]`` (upper triangular, ``P P^T = Sigma^-1``); this is
  :meth:`TorchMixture.component_log_prob`, the plain Gaussian density with the point-estimate
  parameters ``means_`` / ``covariances_`` (BGM normalises ``covariances_`` by the degrees of
  freedom, so ``precisions_cholesky_`` is the Cholesky factor of ``covariances_^-1``).
* ``BayesianGaussianMixture._estimate_log_prob``: the above ``- 0.5 d log(nu_c)
  + 0.5 (log_lambda_c - d / beta_c)`` with ``log_lambda_c = d log 2 + sum_i digamma((nu_c - i)/2)``.
* ``BayesianGaussianMixture._estimate_log_weights``: digamma expectations ``E[log pi_c]`` of the
  (stick-breaking) Dirichlet-process or Dirichlet weight posterior.
* ``BaseMixture._estimate_weighted_log_prob`` = the sum of the two; ``predict`` is its argmax,
  ``score_samples`` its logsumexp.

Both constant terms are computed once in float64 with :func:`scipy.special.digamma` (exactly as
sklearn does) and stored as buffers of :class:`TorchMixture`.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import os
import time
import warnings
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fevae.errors import FevaeError
from fevae.utils.io import atomic_open
from fevae.utils.parallel import pool_args

log = logging.getLogger(__name__)

COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
PRIOR_TYPES = ("dirichlet_process", "dirichlet_distribution")
INIT_PARAMS = ("kmeans", "k-means++", "random", "random_from_data")
FORMAT_VERSION = 1

_ARRAY_FIELDS = (
    "weights",
    "means",
    "covariances",
    "precisions_cholesky",
    "weight_concentration",
    "degrees_of_freedom",
    "mean_precision",
)
_META_FIELDS = (
    "covariance_type",
    "weight_concentration_prior_type",
    "converged",
    "n_iter",
    "lower_bound",
    "n_features",
    "n_samples_fit",
)


def _param_shapes(covariance_type: str, prior_type: str, c: int, d: int) -> dict[str, tuple]:
    cov = {"full": (c, d, d), "tied": (d, d), "diag": (c, d), "spherical": (c,)}[covariance_type]
    return {
        "weights": (c,),
        "means": (c, d),
        "covariances": cov,
        "precisions_cholesky": cov,
        "weight_concentration": (2, c) if prior_type == "dirichlet_process" else (c,),
        "degrees_of_freedom": () if covariance_type == "tied" else (c,),
        "mean_precision": (c,),
    }


@dataclass(frozen=True, eq=False)
class MixtureArrays:
    """A fitted BGM as float64 arrays (sklearn attribute names without the trailing ``_``).

    ``weight_concentration`` is ``np.stack(weight_concentration_)`` of shape ``[2, C]`` for the
    ``dirichlet_process`` prior (sklearn's tuple of two arrays) and the ``[C]`` array for
    ``dirichlet_distribution``. ``degrees_of_freedom`` is 0-d for ``tied`` covariances (as in
    sklearn) and ``[C]`` otherwise. Arrays are stored read-only.
    """

    covariance_type: str
    weight_concentration_prior_type: str
    weights: np.ndarray
    means: np.ndarray
    covariances: np.ndarray
    precisions_cholesky: np.ndarray
    weight_concentration: np.ndarray
    degrees_of_freedom: np.ndarray
    mean_precision: np.ndarray
    converged: bool
    n_iter: int
    lower_bound: float
    n_features: int
    n_samples_fit: int

    def __post_init__(self) -> None:
        if self.covariance_type not in COVARIANCE_TYPES:
            raise FevaeError(
                f"unknown covariance type {self.covariance_type!r}",
                f"use one of {', '.join(COVARIANCE_TYPES)} (fe.covariance_type)",
            )
        if self.weight_concentration_prior_type not in PRIOR_TYPES:
            raise FevaeError(
                f"unknown weight concentration prior type {self.weight_concentration_prior_type!r}",
                f"use one of {', '.join(PRIOR_TYPES)} (fe.weight_concentration_prior_type)",
            )
        for name in _ARRAY_FIELDS:
            arr = np.array(getattr(self, name), dtype=np.float64, copy=True)
            arr.setflags(write=False)
            object.__setattr__(self, name, arr)
        object.__setattr__(self, "converged", bool(self.converged))
        object.__setattr__(self, "n_iter", int(self.n_iter))
        object.__setattr__(self, "lower_bound", float(np.asarray(self.lower_bound).reshape(-1)[0]))  # tied: shape (1,)
        object.__setattr__(self, "n_features", int(self.n_features))
        object.__setattr__(self, "n_samples_fit", int(self.n_samples_fit))
        if self.means.ndim != 2 or self.means.shape[0] < 1 or self.means.shape[1] < 1:
            raise FevaeError(
                f"mixture means have shape {self.means.shape}, expected [C, d] with C, d >= 1",
                "refit the feature mixture",
            )
        c, d = self.means.shape
        if d != self.n_features:
            raise FevaeError(
                f"mixture means have {d} features but n_features is {self.n_features}",
                "refit the feature mixture",
            )
        expected = _param_shapes(self.covariance_type, self.weight_concentration_prior_type, c, d)
        for name, shape in expected.items():
            got = getattr(self, name).shape
            if got != shape:
                raise FevaeError(
                    f"mixture array {name!r} has shape {got}, expected {shape} for "
                    f"C={c}, d={d}, covariance_type={self.covariance_type!r}",
                    "refit the feature mixture",
                )
        for name in _ARRAY_FIELDS:
            if not np.all(np.isfinite(getattr(self, name))):
                raise FevaeError(
                    f"mixture array {name!r} contains non-finite values", "refit the feature mixture"
                )

    # ------------------------------------------------------------------ properties
    @property
    def n_components(self) -> int:
        return int(self.means.shape[0])

    # ------------------------------------------------------------------ sklearn bridge
    @classmethod
    def from_sklearn(cls, bgm: Any, n_samples_fit: int | None = None) -> MixtureArrays:
        """Extract the arrays of a fitted :class:`~sklearn.mixture.BayesianGaussianMixture`."""
        wc = bgm.weight_concentration_
        if bgm.weight_concentration_prior_type == "dirichlet_process":
            wc = np.stack([np.asarray(wc[0]), np.asarray(wc[1])])
        return cls(
            covariance_type=bgm.covariance_type,
            weight_concentration_prior_type=bgm.weight_concentration_prior_type,
            weights=bgm.weights_,
            means=bgm.means_,
            covariances=bgm.covariances_,
            precisions_cholesky=bgm.precisions_cholesky_,
            weight_concentration=wc,
            degrees_of_freedom=bgm.degrees_of_freedom_,
            mean_precision=bgm.mean_precision_,
            converged=bgm.converged_,
            n_iter=bgm.n_iter_,
            lower_bound=bgm.lower_bound_,
            n_features=bgm.means_.shape[1],
            n_samples_fit=-1 if n_samples_fit is None else n_samples_fit,
        )

    def to_sklearn(self) -> Any:
        """A :class:`~sklearn.mixture.BayesianGaussianMixture` whose fitted attributes are these
        arrays (for cross-checks: its ``predict``/``score_samples`` run sklearn's own code)."""
        from sklearn.mixture import BayesianGaussianMixture

        bgm = BayesianGaussianMixture(
            n_components=self.n_components,
            covariance_type=self.covariance_type,
            weight_concentration_prior_type=self.weight_concentration_prior_type,
        )
        wc = self.weight_concentration
        if self.weight_concentration_prior_type == "dirichlet_process":
            wc = (wc[0].copy(), wc[1].copy())
        else:
            wc = wc.copy()
        dof = self.degrees_of_freedom.copy()
        bgm.weight_concentration_ = wc
        bgm.weights_ = self.weights.copy()
        bgm.means_ = self.means.copy()
        bgm.covariances_ = self.covariances.copy()
        bgm.precisions_cholesky_ = self.precisions_cholesky.copy()
        bgm.degrees_of_freedom_ = float(dof) if dof.ndim == 0 else dof
        bgm.mean_precision_ = self.mean_precision.copy()
        if self.covariance_type == "full":
            bgm.precisions_ = np.einsum("cij,ckj->cik", self.precisions_cholesky, self.precisions_cholesky)
        elif self.covariance_type == "tied":
            bgm.precisions_ = self.precisions_cholesky @ self.precisions_cholesky.T
        else:
            bgm.precisions_ = self.precisions_cholesky**2
        bgm.converged_ = self.converged
        bgm.n_iter_ = self.n_iter
        bgm.lower_bound_ = self.lower_bound
        bgm.n_features_in_ = self.n_features
        return bgm

    # ------------------------------------------------------------------ persistence
    def to_dict(self) -> dict[str, np.ndarray]:
        """All fields as numpy arrays (strings/bools/ints/floats as 0-d arrays)."""
        out: dict[str, np.ndarray] = {"format_version": np.array(FORMAT_VERSION, dtype=np.int64)}
        for name in _ARRAY_FIELDS:
            out[name] = np.asarray(getattr(self, name), dtype=np.float64)
        out["covariance_type"] = np.array(self.covariance_type)
        out["weight_concentration_prior_type"] = np.array(self.weight_concentration_prior_type)
        out["converged"] = np.array(self.converged, dtype=np.bool_)
        out["n_iter"] = np.array(self.n_iter, dtype=np.int64)
        out["lower_bound"] = np.array(self.lower_bound, dtype=np.float64)
        out["n_features"] = np.array(self.n_features, dtype=np.int64)
        out["n_samples_fit"] = np.array(self.n_samples_fit, dtype=np.int64)
        return out

    def save(self, path: str | os.PathLike) -> Path:
        """Write an ``.npz`` atomically (temp file in the same directory, then ``os.replace``)."""
        path = Path(path)
        with atomic_open(path, "wb") as fh:
            np.savez(fh, **self.to_dict())
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> MixtureArrays:
        """Load an ``.npz`` written by :meth:`save` (``allow_pickle=False``)."""
        path = Path(path)
        fix = "refit the feature mixture (it is written by the mixture-fitting step)"
        if not path.is_file():
            raise FevaeError(f"mixture file {path} does not exist", fix)
        try:
            with np.load(path, allow_pickle=False) as npz:
                data = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, KeyError) as err:
            raise FevaeError(f"mixture file {path} is corrupt or not an .npz ({err})", fix) from err
        missing = [k for k in ("format_version", *_ARRAY_FIELDS, *_META_FIELDS) if k not in data]
        if missing:
            raise FevaeError(f"mixture file {path} lacks keys {', '.join(missing)}", fix)
        version = int(data["format_version"])
        if version != FORMAT_VERSION:
            raise FevaeError(
                f"mixture file {path} has format version {version}, expected {FORMAT_VERSION}", fix
            )
        try:
            kwargs: dict[str, Any] = {name: data[name] for name in _ARRAY_FIELDS}
            kwargs["covariance_type"] = str(data["covariance_type"].item())
            kwargs["weight_concentration_prior_type"] = str(
                data["weight_concentration_prior_type"].item()
            )
            kwargs["converged"] = bool(data["converged"].item())
            kwargs["n_iter"] = int(data["n_iter"].item())
            kwargs["lower_bound"] = float(data["lower_bound"].item())
            kwargs["n_features"] = int(data["n_features"].item())
            kwargs["n_samples_fit"] = int(data["n_samples_fit"].item())
            return cls(**kwargs)
        except FevaeError as err:
            raise FevaeError(f"mixture file {path} is invalid: {err.what}", fix) from err
        except (TypeError, ValueError) as err:
            raise FevaeError(f"mixture file {path} is invalid ({err})", fix) from err

    def summary(self) -> dict[str, Any]:
        """Scalars for logging."""
        return {
            "C": self.n_components,
            "d": self.n_features,
            "covariance_type": self.covariance_type,
            "weight_concentration_prior_type": self.weight_concentration_prior_type,
            "converged": self.converged,
            "n_iter": self.n_iter,
            "lower_bound": self.lower_bound,
            "n_samples_fit": self.n_samples_fit,
            "effective_components": int(np.sum(self.weights > 1e-3)),
        }

    def replace(self, **changes: Any) -> MixtureArrays:
        return dataclasses.replace(self, **changes)


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


# ---------------------------------------------------------------------------- torch evaluation
def _bgm_constants(arrays: MixtureArrays) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(E[log pi_c], BGM log-prob correction_c, log det P_c), each [C], as sklearn computes them."""
    from scipy.special import digamma

    c, d = arrays.means.shape
    wc = arrays.weight_concentration
    if arrays.weight_concentration_prior_type == "dirichlet_process":
        digamma_sum = digamma(wc[0] + wc[1])
        digamma_a = digamma(wc[0])
        digamma_b = digamma(wc[1])
        log_weights = digamma_a - digamma_sum + np.hstack((0, np.cumsum(digamma_b - digamma_sum)[:-1]))
    else:
        log_weights = digamma(wc) - digamma(np.sum(wc))

    dof = arrays.degrees_of_freedom
    log_lambda = d * np.log(2.0) + np.sum(digamma(0.5 * (dof - np.arange(0, d)[:, np.newaxis])), 0)
    correction = -0.5 * d * np.log(dof) + 0.5 * (log_lambda - d / arrays.mean_precision)

    pc = arrays.precisions_cholesky
    if arrays.covariance_type == "full":
        log_det = np.sum(np.log(pc.reshape(c, -1)[:, :: d + 1]), axis=1)
    elif arrays.covariance_type == "tied":
        log_det = np.sum(np.log(np.diag(pc)))
    elif arrays.covariance_type == "diag":
        log_det = np.sum(np.log(pc), axis=1)
    else:
        log_det = d * np.log(pc)
    full = lambda a: np.broadcast_to(np.asarray(a, dtype=np.float64), (c,)).copy()  # noqa: E731
    return full(log_weights), full(correction), full(log_det)


class TorchMixture(nn.Module):
    """Float64 torch evaluation of a fitted BGM; inputs ``[..., d]`` of any float dtype.

    All arrays are float64 buffers (non-persistent: the ``.npz`` is the source of truth, so
    model checkpoints do not duplicate it), moved by ``.to(device)``. Dtype casts of the module
    (``.float()``, ``.half()``, ``.to(torch.bfloat16)``) leave them float64; results are float64.
    """

    def __init__(self, arrays: MixtureArrays):
        super().__init__()
        self.covariance_type = arrays.covariance_type
        self.weight_concentration_prior_type = arrays.weight_concentration_prior_type
        self.n_components, self.n_features = arrays.means.shape
        log_weights, correction, log_det = _bgm_constants(arrays)
        buffers = {
            "weights": arrays.weights,
            "means": arrays.means,
            "covariances": arrays.covariances,
            "precisions_cholesky": arrays.precisions_cholesky,
            "weight_concentration": arrays.weight_concentration,
            "degrees_of_freedom": arrays.degrees_of_freedom,
            "mean_precision": arrays.mean_precision,
            "log_weights": log_weights,  # E[log pi_c] (sklearn _estimate_log_weights)
            "log_prob_correction": correction,  # BGM terms of _estimate_log_prob beyond the Gaussian
            "log_det_precisions_cholesky": log_det,  # _compute_log_det_cholesky, [C]
        }
        for name, value in buffers.items():
            self.register_buffer(name, torch.tensor(np.asarray(value), dtype=torch.float64), persistent=False)

    @classmethod
    def load(cls, path: str | os.PathLike) -> TorchMixture:
        return cls(MixtureArrays.load(path))

    def extra_repr(self) -> str:
        return f"C={self.n_components}, d={self.n_features}, covariance_type={self.covariance_type!r}"

    def _apply(self, fn, recurse=True):  # keep float64 buffers float64 under module dtype casts
        def keep_float64(t: torch.Tensor) -> torch.Tensor:
            out = fn(t)
            if t.dtype == torch.float64 and out.dtype != torch.float64:
                return t.to(device=out.device)
            return out

        return super()._apply(keep_float64, recurse)

    # ------------------------------------------------------------------ densities
    def _as_input(self, f: torch.Tensor) -> torch.Tensor:
        f = torch.as_tensor(f)
        if f.ndim < 1 or f.shape[-1] != self.n_features:
            raise FevaeError(
                f"features have shape {tuple(f.shape)}, the mixture expects [..., {self.n_features}]",
                "use the feature extractor the mixture was fitted on (or refit the mixture)",
            )
        return f.to(device=self.means.device, dtype=torch.float64)

    def _mahalanobis(self, f: torch.Tensor) -> torch.Tensor:
        """Squared Mahalanobis distances ``||(f - mu_c) P_c||^2`` -> [..., C] (loop over C)."""
        out = f.new_empty((*f.shape[:-1], self.n_components))
        pc = self.precisions_cholesky
        for c in range(self.n_components):
            diff = f - self.means[c]
            if self.covariance_type == "full":
                y = torch.einsum("...i,ij->...j", diff, pc[c])
            elif self.covariance_type == "tied":
                y = torch.einsum("...i,ij->...j", diff, pc)
            else:  # diag: pc[c] is [d]; spherical: pc[c] is a scalar
                y = diff * pc[c]
            out[..., c] = y.square().sum(-1)
        return out

    def component_log_prob(self, f: torch.Tensor) -> torch.Tensor:
        """``log N(f | means_c, covariances_c)`` for each component -> [..., C] float64."""
        f = self._as_input(f)
        d = self.n_features
        return -0.5 * (d * math.log(2 * math.pi) + self._mahalanobis(f)) + self.log_det_precisions_cholesky

    def _weighted_from_component(self, log_prob: torch.Tensor) -> torch.Tensor:
        return log_prob + self.log_prob_correction + self.log_weights

    def weighted_log_prob(self, f: torch.Tensor) -> torch.Tensor:
        """sklearn BGM ``_estimate_weighted_log_prob`` -> [..., C] float64."""
        return self._weighted_from_component(self.component_log_prob(f))

    def predict(self, f: torch.Tensor) -> torch.Tensor:
        """Most responsible component (== sklearn ``predict``) -> [...] int64."""
        return self.weighted_log_prob(f).argmax(-1)

    def predict_proba(self, f: torch.Tensor) -> torch.Tensor:
        """Responsibilities (== sklearn ``predict_proba``) -> [..., C] float64."""
        return torch.softmax(self.weighted_log_prob(f), dim=-1)

    def score_samples(self, f: torch.Tensor) -> torch.Tensor:
        """sklearn ``score_samples`` (logsumexp of the weighted log-probs) -> [...] float64."""
        return torch.logsumexp(self.weighted_log_prob(f), dim=-1)

    # ------------------------------------------------------------------ Eq. (3)
    def log_p_fe_from_log_prob(self, log_prob_x: torch.Tensor, f_phi: torch.Tensor) -> torch.Tensor:
        """Eq. (3) given ``log_prob_x = component_log_prob(f_x)`` ([..., C], computed once per
        test batch) and decoded features ``f_phi [..., d]``; leading shapes broadcast."""
        log_prob_x = torch.as_tensor(log_prob_x).to(device=self.means.device, dtype=torch.float64)
        if log_prob_x.shape[-1:] != (self.n_components,):
            raise FevaeError(
                f"log_prob_x has shape {tuple(log_prob_x.shape)}, expected [..., {self.n_components}]",
                "pass component_log_prob(f_x)",
            )
        log_prob_phi = self.component_log_prob(f_phi)
        comp = self._weighted_from_component(log_prob_phi).argmax(-1, keepdim=True)
        log_prob_x, log_prob_phi = torch.broadcast_tensors(log_prob_x, log_prob_phi)
        comp = comp.expand(*log_prob_x.shape[:-1], 1)
        return (log_prob_x.gather(-1, comp) + log_prob_phi.gather(-1, comp)).squeeze(-1)

    def log_p_fe(self, f_x: torch.Tensor, f_phi: torch.Tensor) -> torch.Tensor:
        """Eq. (3) in log space: ``c = predict(f_phi)``;
        ``log N(f_x | c) + log N(f_phi | c)``. ``f_x [..., d]`` broadcasts against
        ``f_phi [..., d]`` (e.g. ``[B, d]`` vs ``[S, B, d]`` -> ``[S, B]``); float64."""
        return self.log_p_fe_from_log_prob(self.component_log_prob(f_x), f_phi)
