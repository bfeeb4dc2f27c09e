"""A finished run folder as an object: its config, trained models and feature mixture.

Models are rebuilt from the run's own ``.hydra/config.yaml`` and their weights read with
``torch.load(weights_only=True)``; the mixture is read from plain arrays. Nothing is unpickled.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import torch
from hydra.utils import instantiate
from omegaconf import DictConfig, ListConfig, OmegaConf

from fevae.callbacks.mixture import mixture_file, mixture_layers
from fevae.errors import FevaeError
from fevae.mixture import MixtureArrays
from fevae.training import checkpoint_dir, load_state_dict

log = logging.getLogger(__name__)

MIXTURE_FILE = "mixture.npz"
#: scoring settings a newer fevae added that a finished run takes from today's defaults when it lacks them
UPGRADABLE = ("eval", "fe.extra_layers")
CONFIG_FILE = Path(".hydra") / "config.yaml"


@dataclass
class TrainedRun:
    run_dir: Path
    cfg: DictConfig
    vae: torch.nn.Module
    jigsaw: torch.nn.Module
    #: Jigsaw layer -> fitted mixture (``fe.layer`` always; ``fe.extra_layers`` when the run has them)
    mixtures: dict[int, MixtureArrays]

    @property
    def mixture(self) -> MixtureArrays:
        """The mixture of ``fe.layer`` (p_FE / p_FEVAE)."""
        return self.mixtures[int(self.cfg.fe.layer)]

    def missing_layers(self) -> list[int]:
        """Layers of ``fe.layer`` + ``fe.extra_layers`` that have no mixture in the run folder."""
        return [k for k in mixture_layers(self.cfg.fe) if k not in self.mixtures]


def run_config(run_dir: str | Path, overrides: Iterable[str] = (), composed: DictConfig | None = None) -> DictConfig:
    """The stored config of a run with the command line's overrides applied on top.

    With ``composed`` (the config Hydra composed from the same command line), each overridden
    key takes its value from it, so group overrides like ``trainer=ddp`` bring the whole group;
    without it, ``key=value`` overrides are parsed as YAML values.
    """
    run_dir = Path(run_dir)
    path = run_dir / CONFIG_FILE
    if not run_dir.is_dir():
        raise FevaeError(f"run_dir={run_dir} does not exist", "pass the folder of a `python -m fevae.train` run (see outputs/train/)")
    if not path.exists():
        raise FevaeError(f"{run_dir} has no {CONFIG_FILE}", "pass the folder of a `python -m fevae.train` run, not a sub-folder")
    cfg = OmegaConf.load(path)
    if composed is not None:
        added = fill_newer_settings(cfg, composed)
        if added:
            log.info("%s predates the settings %s: using today's defaults for them", run_dir, ", ".join(added))
    for override in overrides:
        key, _, value = override.lstrip("+~").partition("=")
        key = key.split("@")[0].replace("/", ".")
        if composed is not None and OmegaConf.select(composed, key) is not None:
            OmegaConf.update(cfg, key, OmegaConf.select(composed, key), merge=False, force_add=True)
        else:
            OmegaConf.update(cfg, key, OmegaConf.from_dotlist([f"v={value}"]).v, merge=True, force_add=True)
    return cfg


def fill_newer_settings(cfg: DictConfig, defaults: DictConfig, keys: Iterable[str] = UPGRADABLE) -> list[str]:
    """Add to ``cfg`` (in place) each of ``keys`` it lacks, recursively, from ``defaults``; the keys added.

    A run made by an older fevae has no ``eval.detectors`` or ``fe.extra_layers``; re-scoring it
    should still give today's detectors. Only scoring settings are filled (never what shaped the
    trained weights or the stored mixture), and a value the run does have is never replaced.
    """
    absent = object()

    def fill(key: str) -> list[str]:
        default = OmegaConf.select(defaults, key, default=absent)
        here = OmegaConf.select(cfg, key, default=absent)
        if default is absent:
            return []
        if here is absent:
            plain = OmegaConf.to_container(default, resolve=True) if isinstance(default, DictConfig | ListConfig) else default
            OmegaConf.update(cfg, key, plain, merge=False, force_add=True)
            return [key]
        if isinstance(default, DictConfig) and isinstance(here, DictConfig):
            return [k for sub in default for k in fill(f"{key}.{sub}")]
        return []

    return [k for key in keys for k in fill(key)]


def model_weights(run_dir: Path, name: str) -> Path:
    """The checkpoint a finished run scores with: best-by-validation, else last."""
    folder = checkpoint_dir(run_dir, name)
    for candidate in (folder / "best.ckpt", folder / "last.ckpt"):
        if candidate.exists():
            return candidate
    raise FevaeError(
        f"{run_dir} has no trained {name} ({folder}/best.ckpt is missing): the run did not finish training",
        f"finish it with `python -m fevae.train hydra.run.dir={run_dir} resume=true` plus the run's experiment",
    )


def load_run(
    run_dir: str | Path, overrides: Iterable[str] = (), composed: DictConfig | None = None, map_location: str | torch.device = "cpu"
) -> TrainedRun:
    """Load the config (see :func:`run_config`), best VAE and Jigsaw weights and the mixture of a finished run."""
    run_dir = Path(run_dir)
    cfg = run_config(run_dir, overrides, composed)
    models = {}
    for name in ("vae", "jigsaw"):
        weights = model_weights(run_dir, name)
        module = instantiate(cfg.model[name], _convert_="all")
        try:
            module.load_state_dict(load_state_dict(weights, map_location=map_location))
        except (RuntimeError, KeyError, OSError) as err:
            raise FevaeError(f"cannot load {weights}: {str(err).splitlines()[0]}", "the checkpoint is corrupt or from another config: retrain the run") from err
        models[name] = module.eval()
    mixture_path = run_dir / MIXTURE_FILE
    if not mixture_path.exists():
        raise FevaeError(
            f"{run_dir} has no {MIXTURE_FILE}: the run stopped before the feature mixture was fitted",
            f"finish it with `python -m fevae.train hydra.run.dir={run_dir} resume=true` plus the run's experiment",
        )
    mixtures = {int(cfg.fe.layer): MixtureArrays.load(mixture_path)}
    for layer in mixture_layers(cfg.fe):
        path = run_dir / mixture_file(layer, cfg.fe)
        if path.exists():
            mixtures[layer] = MixtureArrays.load(path)
    return TrainedRun(run_dir, cfg, models["vae"], models["jigsaw"], mixtures)
