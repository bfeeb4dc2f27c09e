"""Fit the feature mixture of p_FE at the end of Jigsaw training (paper Sec. 4)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, Subset

from fevae.errors import FevaeError
from fevae.mixture import MixtureArrays, fit_mixture

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
    if fe["covariance_type"] not in ("full", "tied", "diag", "spherical"):
        raise FevaeError(
            f"fe.covariance_type={fe['covariance_type']!r} is unknown", "use one of full, tied, diag, spherical"
        )


@torch.no_grad()
def extract_features(
    jigsaw: torch.nn.Module, dataset: Dataset, layer: int, pre_activation: bool, batch_size: int = 2048
) -> np.ndarray:
    """Jigsaw features [len(dataset), d] of every image of ``dataset`` (items ``(x, ...)``), float64."""
    device = next(jigsaw.parameters()).device
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats = [jigsaw.features(batch[0].to(device), layer=layer, pre_activation=pre_activation).double().cpu() for batch in loader]
    return torch.cat(feats).numpy()


def fit_feature_mixture(jigsaw: torch.nn.Module, train_set: Dataset, fe: Mapping[str, Any], seed: int) -> MixtureArrays:
    """Fit the Bayesian Gaussian mixture on the features of ``fe.n`` random training images."""
    validate_fe_config(fe, len(train_set))
    index = np.sort(np.random.default_rng(seed).choice(len(train_set), size=fe["n"], replace=False))
    features = extract_features(jigsaw, Subset(train_set, index.tolist()), fe["layer"], fe["pre_activation"], fe["feature_batch_size"])
    mixture = fit_mixture(
        features,
        n_components=fe["C"],
        covariance_type=fe["covariance_type"],
        max_iter=fe["max_iter"],
        reg_covar=fe["reg_covar"],
        n_init=fe["n_init"],
        random_state=seed,
    )
    log.info("feature mixture fitted: %s", mixture.summary())
    if not mixture.converged:
        log.warning("the feature mixture did not converge in fe.max_iter=%d iterations; consider raising it", fe["max_iter"])
    return mixture


class MixtureCallback(L.Callback):
    """At the end of Jigsaw training, fit the p_FE mixture and save it as plain arrays (``.npz``).

    Runs in ``on_train_end`` (in ``on_fit_end`` the module is already torn down). If the trainer
    has a checkpoint callback with a best model, the features come from a copy of the module
    holding those weights, so the mixture and later scoring use the same (best-by-validation)
    Jigsaw while the trainer's own state is left untouched. Under DDP every rank fits the same
    mixture (available as :attr:`mixture`) and rank 0 saves it.
    """

    def __init__(self, fe: Mapping[str, Any], seed: int, path: str | Path):
        self.fe = dict(fe)
        self.seed = seed
        self.path = Path(path)
        #: the fitted mixture, once training has ended (every rank fits the same one)
        self.mixture: MixtureArrays | None = None

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import copy

        from fevae.training import restore_best_weights

        jigsaw = copy.deepcopy(pl_module)
        restore_best_weights(trainer, jigsaw)
        # Every rank fits the same (seeded) mixture, so no rank waits for a file; rank 0 writes it.
        mixture = self.mixture = fit_feature_mixture(jigsaw.eval(), trainer.datamodule.train_set, self.fe, self.seed)
        if not trainer.is_global_zero:
            return
        mixture.save(self.path)
        if trainer.logger is not None:
            summary = mixture.summary()
            trainer.logger.log_metrics(
                {f"mixture/{k}": float(v) for k, v in summary.items() if isinstance(v, (int, float, bool))},
                step=trainer.global_step,
            )
