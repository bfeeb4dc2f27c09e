"""Fit the feature mixture of p_FE at the end of Jigsaw training (paper Sec. 4)."""

from __future__ import annotations

import logging
import numbers
import time
from pathlib import Path
from typing import Any, Iterable, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fevae.errors import FevaeError, require
from fevae.features.bgm import fit_mixtures
from fevae.features.mixture import MixtureArrays
from fevae.training import restore_best_weights
from fevae.utils.log import stage
from fevae.utils.parallel import usable_cores
from fevae.validation import positive_int

log = logging.getLogger(__name__)


def validate_fe_config(fe: Mapping[str, Any], n_train: int | None = None) -> None:
    """Refuse impossible mixture settings before any work is done."""
    n, c, layer = fe["n"], fe["C"], fe["layer"]
    if not isinstance(c, int) or c < 1:
        raise FevaeError(f"fe.C={c!r} is not a positive number of mixture components", "set fe.C to an integer ≥ 1 (the paper uses 15)")
    if not isinstance(n, int) or n < 1:
        raise FevaeError(f"fe.n={n!r} is not a positive number of training images", "set fe.n to an integer ≥ 1 (the paper uses 10000)")
    if n < c:
        raise FevaeError(f"fe.n={n} is smaller than fe.C={c}", "fit at least as many images as mixture components: raise fe.n or lower fe.C")
    if n_train is not None and n > n_train:
        raise FevaeError(
            f"fe.n={n} is larger than the training set ({n_train} images after the validation hold-out and data.train_subset)",
            f"set fe.n ≤ {n_train}",
        )
    if layer not in (1, 2, 3, 4):
        raise FevaeError(f"fe.layer={layer!r} is not a Jigsaw hidden layer", "set fe.layer to 1, 2, 3 or 4")
    extra = fe.get("extra_layers") or []
    if any(k not in (1, 2, 3, 4) for k in extra):
        raise FevaeError(f"fe.extra_layers={list(extra)} has a layer that is not a Jigsaw hidden layer", "use layers from 1, 2, 3, 4, e.g. fe.extra_layers=[2,3,4] or []")
    if fe["covariance_type"] not in ("full", "tied", "diag", "spherical"):
        raise FevaeError(
            f"fe.covariance_type={fe['covariance_type']!r} is unknown", "use one of full, tied, diag, spherical"
        )


def check_fe_settings(fe: Mapping[str, Any]) -> None:
    """The mixture settings sklearn would only refuse after the Jigsaw trained."""
    reg = fe.get("reg_covar")
    require(isinstance(reg, numbers.Real) and not isinstance(reg, bool) and reg >= 0 and reg == reg and reg != float("inf"),
            f"fe.reg_covar={reg!r} is invalid", "set fe.reg_covar to a number ≥ 0 (default 1e-3; the paper's sklearn 1e-6)")
    positive_int("fe.max_iter", fe.get("max_iter"))
    positive_int("fe.n_init", fe.get("n_init"))
    positive_int("fe.feature_batch_size", fe.get("feature_batch_size"))
    require(isinstance(fe.get("pre_activation"), bool), f"fe.pre_activation={fe.get('pre_activation')!r} is invalid", "set it to true or false")
    fit_workers(fe.get("n_jobs", -1), 1)


@torch.no_grad()
def extract_features(
    jigsaw: torch.nn.Module, dataset: Dataset, layer: int, pre_activation: bool, batch_size: int = 2048
) -> np.ndarray:
    """Jigsaw features [len(dataset), d] of every image of ``dataset`` (items ``(x, ...)``), float64."""
    device = next(jigsaw.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats = [jigsaw.features(batch[0].to(device), layer=layer, pre_activation=pre_activation).double().cpu() for batch in loader]
    return torch.cat(feats).numpy()


def mixture_layers(fe: Mapping[str, Any]) -> list[int]:
    """Jigsaw layers that get a feature mixture: ``fe.layer`` (p_FE, p_FEVAE) then ``fe.extra_layers``."""
    return list(dict.fromkeys([int(fe["layer"]), *(int(k) for k in fe.get("extra_layers") or [])]))


def mixture_file(layer: int, fe: Mapping[str, Any]) -> str:
    """``mixture.npz`` for ``fe.layer``, ``mixture_l<k>.npz`` for the extra layers."""
    return "mixture.npz" if layer == int(fe["layer"]) else f"mixture_l{layer}.npz"


def save_mixtures(out_dir: str | Path, mixtures: Mapping[int, MixtureArrays], fe: Mapping[str, Any]) -> None:
    for layer, arrays in mixtures.items():
        arrays.save(Path(out_dir) / mixture_file(layer, fe))


def load_mixtures(run_dir: str | Path, fe: Mapping[str, Any]) -> dict[int, MixtureArrays] | None:
    """The run's mixtures for every layer of :func:`mixture_layers`, or ``None`` if any is missing."""
    paths = {layer: Path(run_dir) / mixture_file(layer, fe) for layer in mixture_layers(fe)}
    if not all(p.exists() for p in paths.values()):
        return None
    return {layer: MixtureArrays.load(p) for layer, p in paths.items()}


def fit_workers(n_jobs: Any, n_fits: int) -> int:
    """Processes for ``n_fits`` mixture fits: ``fe.n_jobs`` (-1 = one per CPU core), at most one per fit."""
    if isinstance(n_jobs, bool) or not isinstance(n_jobs, int) or n_jobs == 0 or n_jobs < -1:
        raise FevaeError(f"fe.n_jobs={n_jobs!r} is not a number of processes", "set fe.n_jobs to -1 (one per CPU core) or an integer >= 1")
    return max(1, min(n_fits, usable_cores() if n_jobs == -1 else n_jobs))


def fit_feature_mixtures(
    jigsaw: torch.nn.Module, train_set: Dataset, fe: Mapping[str, Any], seed: int, layers: Iterable[int] | None = None
) -> dict[int, MixtureArrays]:
    """One Bayesian Gaussian mixture per layer (default: every layer of :func:`mixture_layers`), each
    on the features of the same ``fe.n`` random training images: ``{layer: MixtureArrays}``.

    The features are extracted here; the fits run side by side in ``fe.n_jobs`` worker processes
    (joblib, widest layer first), each on one BLAS thread (:func:`fevae.features.bgm.fit_mixture`), so
    the mixtures are the same bits whatever ``fe.n_jobs`` and the machine's core count.
    """
    validate_fe_config(fe, len(train_set))
    layers = mixture_layers(fe) if layers is None else [int(k) for k in layers]
    index = np.sort(np.random.default_rng(seed).choice(len(train_set), size=fe["n"], replace=False))
    subset = Subset(train_set, index.tolist())
    features = {}
    with stage(f"Jigsaw features of {fe['n']} training images (layers {', '.join(map(str, layers))})", logger=log):
        for layer in layers:
            features[layer] = extract_features(jigsaw, subset, layer, fe["pre_activation"], fe["feature_batch_size"])
    kwargs = {"n_components": fe["C"], "covariance_type": fe["covariance_type"], "max_iter": fe["max_iter"],
              "reg_covar": fe["reg_covar"], "n_init": fe["n_init"], "random_state": seed}
    workers = fit_workers(fe.get("n_jobs", -1), len(layers))
    with stage(f"fitting {len(layers)} feature mixture(s) (C={fe['C']}, {fe['covariance_type']} covariances) "
               f"in {workers} process(es)", logger=log):
        mixtures = fit_mixtures(features, workers, **kwargs)
    for layer in layers:
        mixture, seconds = mixtures[layer]
        log.info("feature mixture (layer %d) fitted in %.1f s: %s", layer, seconds, mixture.summary())
        if not mixture.converged:
            log.warning("the layer-%d feature mixture did not converge in fe.max_iter=%d iterations; consider raising it", layer, fe["max_iter"])
    return {layer: mixtures[layer][0] for layer in layers}


class MixtureCallback(L.Callback):
    """At the end of Jigsaw training, fit the p_FE mixtures (``fe.layer`` and ``fe.extra_layers``)
    and save them as plain arrays (``mixture.npz``, ``mixture_l<k>.npz`` in ``out_dir``).

    Runs in ``on_train_end`` (in ``on_fit_end`` the module is already torn down). If the trainer
    has a checkpoint callback with a best model, the features come from a copy of the module
    holding those weights, so the mixture and later scoring use the same (best-by-validation)
    Jigsaw while the trainer's own state is left untouched. Under DDP rank 0 alone fits the mixtures
    and broadcasts them (:attr:`mixtures` on every rank); rank 0 saves them.
    """

    def __init__(self, fe: Mapping[str, Any], seed: int, out_dir: str | Path):
        self.fe = dict(fe)
        self.seed = seed
        self.out_dir = Path(out_dir)
        #: the fitted mixtures ``{layer: arrays}``, once training has ended (fitted on rank 0, sent to the others)
        self.mixtures: dict[int, MixtureArrays] | None = None
        #: wall time of the fits (s)
        self.fit_seconds = 0.0

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import copy

        jigsaw = copy.deepcopy(pl_module)
        restore_best_weights(trainer, jigsaw)
        # Under DDP rank 0 alone fits (the fit is seeded, so any rank would get the same arrays) and sends the
        # arrays to the others through the process group: the mixtures are fitted once, and no rank waits for a file.
        start = time.perf_counter()
        arrays = fit_feature_mixtures(jigsaw.eval(), trainer.datamodule.train_set, self.fe, self.seed) if trainer.is_global_zero else None
        self.mixtures = trainer.strategy.broadcast(arrays, src=0) if trainer.world_size > 1 else arrays
        self.fit_seconds = time.perf_counter() - start
        if not trainer.is_global_zero:
            return
        save_mixtures(self.out_dir, self.mixtures, self.fe)
