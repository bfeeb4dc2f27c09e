"""The fitted mixture as a torch module: log-densities of features under each component, in float64 (scoring's p_FE)."""

from __future__ import annotations

import math
import os

import numpy as np
import torch
from torch import nn

from fevae.errors import FevaeError
from fevae.features.mixture import MixtureArrays


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
