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
import os
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fevae.errors import FevaeError
from fevae.utils.io import atomic_open

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


