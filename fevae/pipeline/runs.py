"""A run folder: who owns it while it trains (:func:`own_run_folder`), and, once finished, its
config, trained models and feature mixture (:func:`load_run`).

Loading trusts nothing in the folder: ``.hydra/config.yaml`` is read as data (YAML, no code), every
``_target_`` in it must be one of the allow-listed classes at its own key (:mod:`fevae.validation`),
the models are built from those classes with validated values, their weights are read with
``torch.load(weights_only=True)`` (any failure is one :class:`FevaeError`), and the mixture is read
from plain arrays. Nothing is unpickled and nothing named by the folder is imported or called.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import yaml
from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fevae.errors import FevaeError
from fevae.features.fitting import mixture_file, mixture_layers
from fevae.features.mixture import MixtureArrays
from fevae.limits import load_yaml_config
from fevae.pipeline.checks import validate_config
from fevae.training import checkpoint_dir, load_state_dict
from fevae.utils.cli import override_key
from fevae.validation import build

log = logging.getLogger(__name__)

MIXTURE_FILE = "mixture.npz"
#: scoring settings a newer fevae added that a finished run takes from today's defaults when it lacks them
UPGRADABLE = ("eval", "fe.extra_layers", "data.ood_sets", "detector")
#: of those, the ones filled only when the run lacks them as a whole (a run's own choice of sets is
#: never topped up with today's), unresolved, so their interpolations read the run's own values
#: (``data.ood_sets.mnist_saltpepper``'s p is ``${data.saltpepper_fraction}``: the run's fraction)
FILL_WHOLE = ("data.ood_sets", "detector")
CONFIG_FILE = Path(".hydra") / "config.yaml"
#: config groups only a training builds (user-chosen ``_target_`` classes): dropped from a loaded run's config
TRAINING_ONLY = ("callbacks", "logger")


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
    try:  # a regular file whose YAML aliases expand to a bounded size (fevae.limits), read as OmegaConf.load reads it
        cfg = load_yaml_config(path, "use a run folder written by `python -m fevae.train`")
    except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as err:
        raise FevaeError(f"{path} is not a readable YAML config ({type(err).__name__})", "use a run folder written by `python -m fevae.train`") from err
    if not isinstance(cfg, DictConfig):
        raise FevaeError(f"{path} holds a {type(cfg).__name__}, not a config mapping", "use a run folder written by `python -m fevae.train`")
    for key in TRAINING_ONLY:  # what only a training builds is never built from a folder's config
        cfg.pop(key, None)
    if composed is not None:
        added = fill_newer_settings(cfg, composed)
        if added:
            log.info("%s predates the settings %s: using today's defaults for them", run_dir, ", ".join(added))
    for override in overrides:
        key, value = override_key(override), override.partition("=")[2]
        if override.startswith("~"):  # a deletion (~data.ood_sets.mnist): drop the key from the run's config
            parent, _, leaf = key.rpartition(".")
            node = OmegaConf.select(cfg, parent) if parent else cfg
            if isinstance(node, DictConfig) and leaf in node:
                del node[leaf]
            continue
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
            plain = OmegaConf.to_container(default, resolve=key not in FILL_WHOLE) if isinstance(default, DictConfig | ListConfig) else default
            OmegaConf.update(cfg, key, plain, merge=False, force_add=True)
            return [key]
        if isinstance(default, DictConfig) and isinstance(here, DictConfig) and key not in FILL_WHOLE:
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


def load_model(run_dir: Path, name: str, node: Any, map_location: str | torch.device = "cpu") -> torch.nn.Module:
    """The allow-listed model ``model.<name>`` built from ``node`` with the run's trained weights, in eval mode."""
    weights = model_weights(run_dir, name)
    module = build(f"model.{name}", node)
    state = load_state_dict(weights, map_location=map_location)
    try:
        module.load_state_dict(state)
    except (RuntimeError, KeyError, OSError, TypeError, ValueError) as err:
        raise FevaeError(f"cannot load {weights}: {str(err).splitlines()[0]}", "the checkpoint is corrupt or from another config: retrain the run") from err
    bad = [k for k, v in state.items() if (v.is_floating_point() or v.is_complex()) and not bool(torch.isfinite(v).all())]
    if bad:
        raise FevaeError(f"checkpoint {weights} has non-finite (NaN or infinite) weights in {bad[0]}"
                         f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}", "retrain the run (or re-evaluate a copy that has sound weights)")
    return module.eval()


def check_device(map_location: Any) -> None:
    """Refuse a ``map_location`` this machine has no device for (or that is no device), before any file is read."""
    if map_location is None or callable(map_location) or isinstance(map_location, dict):
        return  # torch.load's own forms: a function or a remapping, checked by torch
    try:
        device = torch.device(map_location)
    except (RuntimeError, TypeError, ValueError) as err:
        raise FevaeError(f"map_location={map_location!r} is not a device ({str(err).splitlines()[0] if str(err) else type(err).__name__})",
                         "use map_location='cpu' (or 'cuda' on a machine with a GPU)") from None
    available = {"cpu": True, "meta": False, "cuda": torch.cuda.is_available(), "mps": torch.backends.mps.is_available()}
    if not available.get(device.type, True):
        raise FevaeError(f"map_location={map_location!r}: this machine has no {device.type} device available",
                         "use map_location='cpu' (the checkpoint itself is fine)")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise FevaeError(f"map_location={map_location!r}: this machine has {torch.cuda.device_count()} CUDA device(s)",
                         "use map_location='cuda:0' or 'cpu'")


def check_accelerator(cfg: DictConfig, run_dir: Path) -> None:
    """Refuse a run's ``trainer.accelerator`` that this machine lacks (a run trained with ``trainer=gpu``
    scored on a CPU machine), naming the override that scores it here, before anything is built."""
    accelerator = str(OmegaConf.select(cfg, "trainer.accelerator", default="auto") or "auto").lower()
    missing = {"gpu": not torch.cuda.is_available() and not torch.backends.mps.is_available(),
               "cuda": not torch.cuda.is_available(), "mps": not torch.backends.mps.is_available()}
    if missing.get(accelerator, False):
        raise FevaeError(f"the run {run_dir} is set to trainer.accelerator={accelerator}, and this machine has no such device",
                         "score it on the CPU: add trainer=cpu (Python: fevae.load_run(run_dir, overrides=['trainer=cpu']))")


def load_run(
    run_dir: str | Path, overrides: Iterable[str] = (), composed: DictConfig | None = None, map_location: str | torch.device = "cpu"
) -> TrainedRun:
    """Load the config (see :func:`run_config`), best VAE and Jigsaw weights and the mixture of a finished run."""
    run_dir = Path(run_dir)
    check_device(map_location)
    cfg = run_config(run_dir, overrides, composed)
    check_accelerator(cfg, run_dir)
    # the folder's config is data: allow-listed targets only, every value checked (nothing built from it yet)
    validate_config(cfg, source=str(run_dir / CONFIG_FILE), skip=())
    models = {name: load_model(run_dir, name, cfg.model[name], map_location) for name in ("vae", "jigsaw")}
    mixture_path = run_dir / MIXTURE_FILE
    if not mixture_path.exists():
        raise FevaeError(
            f"{run_dir} has no {MIXTURE_FILE}: the run stopped before the feature mixture was fitted",
            f"finish it with `python -m fevae.train hydra.run.dir={run_dir} resume=true` plus the run's experiment",
        )
    mixtures = {int(cfg.fe.layer): _load_mixture(mixture_path, run_dir)}
    for layer in mixture_layers(cfg.fe):
        path = run_dir / mixture_file(layer, cfg.fe)
        if path.exists():
            mixtures[layer] = _load_mixture(path, run_dir)
    return TrainedRun(run_dir, cfg, models["vae"], models["jigsaw"], mixtures)


def _load_mixture(path: Path, run_dir: Path) -> MixtureArrays:
    """A run's mixture file, validated (keys, shapes, finite values: :class:`MixtureArrays`); a bad one names the file and the remedy."""
    try:
        return MixtureArrays.load(path)
    except FevaeError as err:
        raise FevaeError(err.what if str(path) in err.what else f"{path}: {err.what}",
                         f"retrain the run, or re-evaluate it with fe.* overrides (python -m fevae.evaluate run_dir={run_dir} "
                         "fe.C=...), which refits the mixture") from err


