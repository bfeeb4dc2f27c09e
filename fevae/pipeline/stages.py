"""The stages a run is made of, shared by the entry points (``fevae.train``, ``fevae.evaluate``,
``fevae.score``, ``fevae.convergence``) so that none imports another: the data module, the report's
run description, and the extra trained models the detectors need (the likelihood ratio's background
VAE: trained with the run, loaded with it, or trained when an older run is re-scored).
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf, open_dict

from fevae.data.evalsets import describe_ood_sets
from fevae.detectors.registry import build_detectors, needed_models
from fevae.errors import FevaeError
from fevae.pipeline.runs import load_model
from fevae.training import checkpoint_dir, fit_model
from fevae.utils.log import stage

log = logging.getLogger(__name__)


def make_datamodule(cfg: DictConfig, batch_size: int) -> L.LightningDataModule:
    dm = instantiate(cfg.data, batch_size=batch_size, eval_batch_size=cfg.eval.batch_size)
    dm.setup()
    return dm


def report_info(cfg: DictConfig, timings: dict[str, float] | None = None) -> dict[str, Any]:
    return {
        "experiment": cfg.experiment_name,
        "likelihood": cfg.model.vae.likelihood.name,
        "preprocess": cfg.data.preprocess,
        "n_samples": cfg.eval.n_samples,
        "fe": OmegaConf.to_container(cfg.fe, resolve=True),
        "eval_split": OmegaConf.to_container(cfg.data.eval_split, resolve=True) if cfg.data.get("eval_split") else cfg.data.get("eval_subset"),
        "ood_sets": describe_ood_sets(cfg.data),
        "profile": cfg.get("profile_name", "?"),
        "seed": cfg.seed,
        "wall_time_s": timings or {},
    }


def with_model(cfg: DictConfig, name: str, node: DictConfig) -> DictConfig:
    """A copy of ``cfg`` with ``model.<name>`` = ``node`` and the VAE's training budget as ``budget.<name>``
    (what :func:`fevae.training.fit_model` and the model cache read)."""
    out = copy.deepcopy(cfg)
    with open_dict(out):
        out.model[name] = node
        out.budget[name] = copy.deepcopy(cfg.budget.vae)
    return out


def detector_model_configs(cfg: DictConfig) -> dict[str, DictConfig]:
    """``{name: the run's config for training it}`` (:func:`with_model`) of each extra model the
    run's detectors need (:func:`fevae.detectors.registry.needed_models`)."""

    return {name: with_model(cfg, name, node) for name, node in needed_models(cfg).items()}


def detector_title(cfg: DictConfig, name: str) -> str:
    """The stage name of training the extra model ``name``."""
    return f"train {name} VAE (for {', '.join(_users(cfg, name))})"


def detector_models(cfg: DictConfig, run_dir: Path, datamodule: Callable[[], L.LightningDataModule] | None = None,
                    out_dir: Path | None = None, timings: dict[str, float] | None = None) -> dict[str, torch.nn.Module]:
    """The extra models of the run's detectors (:func:`fevae.detectors.registry.needed_models`).

    Each is loaded from ``run_dir/checkpoints/<name>/`` (a training run trains them with its own
    models: :func:`fevae.train.training_jobs`); one the
    run lacks (a run made before its detector existed) is trained into ``out_dir``, or, without a
    ``datamodule``, is one error naming the fix. ``datamodule()`` gives the training data (VAE batch size).
    """

    models: dict[str, torch.nn.Module] = {}
    for name, node in needed_models(cfg).items():
        folder = checkpoint_dir(Path(run_dir), name)
        if any((folder / f).exists() for f in ("best.ckpt", "last.ckpt")):
            models[name] = load_model(Path(run_dir), name, node)
            continue
        if datamodule is None:
            raise FevaeError(f"{run_dir} has no trained {name} model, which the detectors {_users(cfg, name)} need",
                             f"re-score the run with python -m fevae.evaluate run_dir={run_dir} (trains it), or drop them from eval.detectors")
        with stage(detector_title(cfg, name), timings, f"train_{name}", logger=log):
            models[name] = fit_model(name, datamodule(), with_model(cfg, name, node), Path(out_dir or run_dir)).eval()
    return models


def _users(cfg: DictConfig, model: str) -> list[str]:

    return [d.name for d in build_detectors(cfg)[0] if model in d.models]
