"""Score a trained run's sets: the Trainer that runs the model pass, the model-pass cache, finiteness checks."""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import lightning as L
import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf

from fevae.cache import SamplesCache, weights_hash
from fevae.callbacks.progress import ProgressLog
from fevae.detectors.registry import build_detectors, detector_config, selected_names
from fevae.errors import FevaeError
from fevae.evaluation.scorer import Scorer
from fevae.evaluation.settings import (
    samples_per_scheme,
    set_indices,
    validate_eval_config,
)
from fevae.features.density import TorchMixture
from fevae.metrics.ood import MCSE_PREFIX
from fevae.training import cache_enabled, progress_settings
from fevae.validation import check_trainer_config

log = logging.getLogger(__name__)

@dataclass
class Scoring:
    """What :func:`run_scoring` returns."""

    #: set -> score name -> float64 array in dataset order
    scores: dict[str, dict[str, np.ndarray]]
    #: seconds per image of each score (:meth:`Scorer.costs`)
    costs: dict[str, Any] = field(default_factory=dict)
    #: whether the model pass came from :class:`fevae.cache.SamplesCache`
    reused_samples: bool = False
    #: set -> score name -> per-image Monte-Carlo standard error (nats) of the log-mean-exp scores
    mc_se: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        for set_name, arrays in self.scores.items():  # the Scorer's mcse__<score> outputs move to mc_se
            for key in [k for k in arrays if k.startswith(MCSE_PREFIX)]:
                self.mc_se.setdefault(set_name, {})[key[len(MCSE_PREFIX):]] = arrays.pop(key)


def _samples_key(cfg: DictConfig, vae: torch.nn.Module, jigsaw: torch.nn.Module, loaders: Mapping[str, Any], layers: Sequence[int],
                 models: Mapping[str, torch.nn.Module] | None = None) -> dict[str, Any]:
    """What determines the model pass: the models' weights, the eval images, the eval and detector settings."""

    images = {}
    for name, loader in loaders.items():
        h = hashlib.sha256()
        for x, _, index in loader:
            h.update(x.numpy().tobytes())
            h.update(index.numpy().tobytes())
        images[name] = h.hexdigest()[:16]
    ev = OmegaConf.to_container(cfg.eval, resolve=True)
    return {
        "vae": weights_hash(vae),
        "jigsaw": weights_hash(jigsaw),
        "images": images,
        "eval": {k: ev.get(k) for k in ("n_samples", "chunk_size", "schemes", "detectors", "regret", "channels_last")},
        "detectors": {name: detector_config(cfg, name) for name in selected_names(cfg)},
        "models": {name: weights_hash(m) for name, m in sorted((models or {}).items())},
        "format": 2,  # each detector's own values under own/<detector>/ (fevae/detectors)
        "layers": sorted(layers),
        "pre_activation": cfg.fe.pre_activation,
        "seed": cfg.seed,
        "dtype": str(next(vae.parameters()).dtype),
    }


def _samples_bytes(cfg: DictConfig, loaders: Mapping[str, Any], jigsaw: torch.nn.Module, layers: Sequence[int]) -> int:
    per_sample = 8 + 8 + 4 * sum(jigsaw.feature_dim(k) for k in layers)
    total_s = sum(samples_per_scheme(cfg.eval.n_samples, list(cfg.eval.schemes)).values())
    return sum(len(loader.dataset) for loader in loaders.values()) * total_s * per_sample


def predict_trainer(cfg: DictConfig, sets: Sequence[str] = ()) -> L.Trainer:
    """The Lightning Trainer that runs the model pass: the run's trainer settings, no experiment logger or
    checkpoints; a progress bar on a terminal, else plain progress lines per set (``sets``: loader names)."""

    check_trainer_config(cfg.trainer)  # Lightning's Trainer and plain values only: never another _target_
    bar, plain = progress_settings(cfg.trainer)
    progress = ProgressLog("scoring", plain=plain, every_s=float(cfg.get("progress_every_s", 30)), sets=sets)
    return instantiate(cfg.trainer, logger=False, callbacks=[progress], enable_checkpointing=False, enable_model_summary=False,
                       enable_progress_bar=bar, inference_mode=False)


def make_scorer(cfg: DictConfig, vae: torch.nn.Module, jigsaw: torch.nn.Module, mixtures: Mapping[int, TorchMixture],
                loaders: Mapping[str, Any], keep_samples: bool = False, n_samples: int | Mapping[str, int] | None = None,
                models: Mapping[str, torch.nn.Module] | None = None) -> Scorer:
    """A :class:`Scorer` with the run's eval settings and model-pass detectors (``n_samples`` overrides ``eval.n_samples``)."""

    return Scorer(
        vae.eval(), jigsaw.eval(), mixtures, list(loaders), layer=cfg.fe.layer, pre_activation=cfg.fe.pre_activation,
        n_samples=cfg.eval.n_samples if n_samples is None else n_samples, chunk_size=cfg.eval.chunk_size,
        schemes=list(cfg.eval.schemes), seed=cfg.seed, detectors=build_detectors(cfg)[0], keep_samples=keep_samples,
        set_indices=set_indices(loaders), models={k: m.eval() for k, m in (models or {}).items()},
        channels_last=bool(cfg.eval.get("channels_last", False)),
    )


def run_scoring(
    cfg: DictConfig,
    vae: torch.nn.Module,
    jigsaw: torch.nn.Module,
    mixtures: TorchMixture | Mapping[int, TorchMixture],
    loaders: Mapping[str, Any],
    models: Mapping[str, torch.nn.Module] | None = None,
) -> Scoring:
    """Score every loader (items ``(x, y, index)``) with the trainer config.

    ``models``: the extra trained models the run's detectors need (:func:`fevae.detectors.registry.needed_models`).

    ``mixtures`` maps Jigsaw layer -> mixture (``cfg.fe.layer`` gives fe/fevae, the others
    ``fevae_l<k>``). With ``cache.enabled`` (auto: in multirun) and one process, the model pass is
    read from / stored in :class:`fevae.cache.SamplesCache`, so only the mixture part is computed
    when the models and eval settings are unchanged.
    """
    validate_eval_config(cfg.eval, cfg)
    if isinstance(mixtures, TorchMixture):
        mixtures = {int(cfg.fe.layer): mixtures}
    trainer = predict_trainer(cfg, list(loaders))
    cache = None
    if cache_enabled(cfg) and trainer.world_size == 1:
        size = _samples_bytes(cfg, loaders, jigsaw, list(mixtures))
        limit = float(cfg.cache.get("max_samples_gb", 4)) * 2**30
        if size <= limit:
            cache = SamplesCache(cfg.paths.cache_dir, _samples_key(cfg, vae, jigsaw, loaders, list(mixtures), models))
        else:
            log.info("scoring: not caching the model pass (%.1f GB > cache.max_samples_gb)", size / 2**30)

    def scorer(keep: bool) -> Scorer:
        return make_scorer(cfg, vae, jigsaw, mixtures, loaders, keep, models=models)

    if cache is None:
        module = scorer(keep=False)
        trainer.predict(module, dataloaders=list(loaders.values()), return_predictions=False)
        result = Scoring(module.results, module.costs())
    else:
        with cache.lock():
            module = scorer(keep=True)
            if cache.has():
                samples, meta = cache.load()
                log.info("scoring: reused the model pass %s (hash %s)", cache.entry, cache.hash)
            else:
                log.info("scoring: decoding (hash %s; cached as %s)", cache.hash, cache.entry)
                trainer.predict(module, dataloaders=list(loaders.values()), return_predictions=False)
                samples = module.results
                meta = {"seconds": dict(module.stopwatch.seconds), "n_images": module.n_images, "n_own": module.n_own}
                cache.store(samples, meta)
        mixture_clock = scorer(keep=False)  # times the mixture part of this job
        mixture_clock.to(trainer.strategy.root_device)
        scores = mixture_clock.scores_from_samples(samples)
        seconds = {**meta["seconds"], **{k: v for k, v in mixture_clock.stopwatch.seconds.items() if "/mixture/" in k}}
        result = Scoring(scores, mixture_clock.costs(seconds, meta["n_images"], meta["n_own"]), reused_samples=True)
    for set_name, scores in result.scores.items():
        for score_name, values in scores.items():
            bad = int((~np.isfinite(values)).sum())
            if bad:
                raise FevaeError(
                    f"{bad} of {values.size} {score_name} scores on {set_name} are not finite",
                    "the model or mixture is degenerate: check training (TensorBoard), raise fe.reg_covar or retrain",
                )
    return result
