"""Fitting one model through a Lightning Trainer: checkpoints, loggers, extra callbacks, resume, RNG state."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pickle

import lightning as L
import torch
from hydra.utils import instantiate
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from fevae.cache import ModelCache
from fevae.callbacks.progress import ProgressLog
from fevae.errors import FevaeError
from fevae.utils.cli import in_multirun, is_rank_zero
from fevae.utils.log import interactive
from fevae.validation import build, check_trainer_config

log = logging.getLogger(__name__)

#: metric each model's "best" checkpoint minimises
MONITOR = "val/loss"


class RngStateCallback(L.Callback):
    """Save the torch RNG states in each checkpoint and restore them on resume.

    Lightning restores weights, optimiser and loop state but not the global RNG, so without this
    a resumed run would draw other shuffles, dropout masks and Jigsaw permutations than an
    uninterrupted one. With it, resuming from an epoch-end checkpoint reproduces the same weights.
    """

    def on_save_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        checkpoint["fevae_rng"] = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            checkpoint["fevae_rng"]["cuda"] = torch.cuda.get_rng_state_all()

    def on_load_checkpoint(self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]) -> None:
        state = checkpoint.get("fevae_rng")
        if state is None:
            return
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda"])


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """A Lightning checkpoint read with ``torch.load(weights_only=True)``: tensors and plain values only.

    Whatever is wrong with the file (not a checkpoint, truncated, a pickle of other objects, a
    saved list) is one :class:`FevaeError`; torch's own text is not repeated, since it suggests
    ``weights_only=False``, which would run any code the file carries.
    """
    path = Path(path)
    fix = "retrain the run (or restore the file from where it came); never load it with weights_only=False"
    if not path.is_file():
        raise FevaeError(f"checkpoint {path} does not exist or is not a file", fix)
    try:
        checkpoint = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        raise FevaeError(f"checkpoint {path} holds objects other than tensors and plain values, so it is not read", fix) from err
    except Exception as err:  # zip/EOF/OS/runtime errors of a truncated or foreign file
        raise FevaeError(f"checkpoint {path} is corrupt, truncated or not a torch checkpoint ({type(err).__name__})", fix) from err
    if not isinstance(checkpoint, dict) or not isinstance(checkpoint.get("state_dict"), dict):
        raise FevaeError(f"checkpoint {path} is a {type(checkpoint).__name__} without a state_dict, not a Lightning checkpoint", fix)
    bad = [k for k, v in checkpoint["state_dict"].items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise FevaeError(f"checkpoint {path} has non-tensor weights ({bad[0]!r})", fix)
    return checkpoint


def load_state_dict(path: str | Path, map_location: Any = "cpu") -> dict[str, torch.Tensor]:
    """The ``state_dict`` of a Lightning checkpoint, loaded without unpickling arbitrary objects."""
    return load_checkpoint(path, map_location)["state_dict"]


def restore_best_weights(trainer: L.Trainer, module: L.LightningModule) -> None:
    """Load the best-by-validation weights of ``trainer``'s checkpoint callback into ``module``."""
    callback = trainer.checkpoint_callback
    best = getattr(callback, "best_model_path", "") if callback is not None else ""
    if best and Path(best).exists():
        module.load_state_dict(load_state_dict(best, map_location=module.device))
        log.info("restored best weights from %s", best)


def user_callbacks(cfg: DictConfig) -> list[L.Callback]:
    """The ``callbacks`` config group's callbacks, built anew for each training (after fevae's own)."""
    out = []
    for key, node in (cfg.get("callbacks") or {}).items():
        if node is None:  # `callbacks.<name>=null` switches one off
            continue
        callback = instantiate(node)
        if not isinstance(callback, L.Callback):
            raise FevaeError(f"callbacks.{key} builds a {type(callback).__name__}, not a Lightning Callback",
                             f"point callbacks.{key}._target_ at a lightning.pytorch.callbacks.Callback class")
        out.append(callback)
    return out


def user_loggers(cfg: DictConfig, run_dir: Path, name: str) -> list[Logger]:
    """The ``logger`` config group's experiment loggers for model ``name``.

    A relative ``save_dir`` is taken inside the run folder, and a logger without a ``name`` gets the
    model's (so ``logger=tensorboard`` writes ``<run>/tensorboard/<model>/``, as before).
    """
    out = []
    for key, node in (cfg.get("logger") or {}).items():
        if node is None:
            continue
        extra: dict[str, Any] = {}
        save_dir = node.get("save_dir")
        if save_dir is not None and not Path(str(save_dir)).is_absolute():
            extra["save_dir"] = str(run_dir / str(save_dir))
        if "name" not in node:
            extra["name"] = name
        logger = instantiate(node, **extra)
        if not isinstance(logger, Logger):
            raise FevaeError(f"logger.{key} builds a {type(logger).__name__}, not a Lightning Logger",
                             f"point logger.{key}._target_ at a lightning.pytorch.loggers.Logger class, or use logger=tensorboard|csv|many")
        out.append(logger)
    return out


def progress_settings(trainer_cfg: Any) -> tuple[bool, bool]:
    """``(show a bar, write plain progress lines)``: a bar only where a terminal shows it
    (``trainer.enable_progress_bar`` true and stderr a terminal), plain lines everywhere else."""
    bar = bool(trainer_cfg.get("enable_progress_bar", True)) and interactive()
    return bar, not bar


def checkpoint_dir(run_dir: Path, name: str) -> Path:
    return run_dir / "checkpoints" / name


def cache_enabled(cfg: DictConfig) -> bool:
    enabled = cfg.get("cache", {}).get("enabled", False)
    return in_multirun() if enabled == "auto" else bool(enabled)


def fit_model(
    name: str,
    datamodule: L.LightningDataModule,
    cfg: DictConfig,
    run_dir: Path,
    callbacks: list[L.Callback] | None = None,
) -> L.LightningModule:
    """Build ``cfg.model[name]`` and train it with the trainer config plus ``cfg.budget[name].trainer``.

    Writes ``checkpoints/<name>/{best,last}.ckpt`` and ``tensorboard/<name>/``. With
    ``cache.enabled`` a model already trained under the same config (:mod:`fevae.cache`) is
    reused instead of trained, and a newly trained one is added to the cache. With
    ``cfg.resume`` and an existing ``last.ckpt``, training continues from it (a finished model
    is not retrained). Returns the module holding its best-by-validation weights.

    The global RNGs are seeded with ``cfg.seed`` before the module is built, so each model's
    initialisation and training depend only on its own config, not on what was trained before
    it in the same process.
    """
    L.seed_everything(cfg.seed, workers=True, verbose=False)
    module: L.LightningModule = build(f"model.{name}", cfg.model[name])  # allow-listed class, checked values
    ckpt_dir = checkpoint_dir(run_dir, name)
    if not cache_enabled(cfg):
        return _fit(name, module, datamodule, cfg, run_dir, callbacks)
    cache = ModelCache(cfg.paths.cache_dir, cfg, name)
    with cache.lock():  # one job trains a given model; the others wait and reuse it
        if cache.has():
            log.info("%s: reused trained model %s (hash %s)", name, cache.entry, cache.hash)
            cache.restore(ckpt_dir)
            module.load_state_dict(load_state_dict(ckpt_dir / "best.ckpt", map_location=module.device))
            return module
        log.info("%s: training (hash %s; cached as %s)", name, cache.hash, cache.entry)
        _fit(name, module, datamodule, cfg, run_dir, callbacks)
        if is_rank_zero():
            cache.store(ckpt_dir)
    return module


def _fit(
    name: str,
    module: L.LightningModule,
    datamodule: L.LightningDataModule,
    cfg: DictConfig,
    run_dir: Path,
    callbacks: list[L.Callback] | None,
) -> L.LightningModule:
    ckpt_dir = checkpoint_dir(run_dir, name)
    # Two callbacks: Lightning 2.6's `save_last` only refreshes last.ckpt when the best improves.
    best = ModelCheckpoint(dirpath=ckpt_dir, filename="best", monitor=MONITOR, mode="min", enable_version_counter=False)
    last = ModelCheckpoint(dirpath=ckpt_dir, filename="last", monitor=None, save_top_k=1, enable_version_counter=False)
    check_trainer_config(cfg.trainer)
    bar, plain = progress_settings(cfg.trainer)
    progress = ProgressLog(name, plain=plain, every_s=float(cfg.get("progress_every_s", 30)))
    loggers = user_loggers(cfg, run_dir, name)
    trainer: L.Trainer = instantiate(
        cfg.trainer,
        **cfg.budget[name].trainer,
        callbacks=[best, last, RngStateCallback(), progress, *(callbacks or []), *user_callbacks(cfg)],
        logger=loggers or False,
        enable_progress_bar=bar,
        default_root_dir=str(run_dir),
    )
    last_path = ckpt_dir / "last.ckpt"
    ckpt_path = last_path if cfg.resume and last_path.exists() else None
    if ckpt_path is not None:
        load_checkpoint(ckpt_path)  # a corrupt last.ckpt is one error line, not Lightning's traceback
        log.info("%s: resuming from %s", name, ckpt_path)
    trainer.fit(module, datamodule=datamodule, ckpt_path=ckpt_path, weights_only=True)
    restore_best_weights(trainer, module)
    return module
