"""Detectors from config: ``conf/detector/<name>.yaml`` holds ``<name>: {_target_: ..., <settings>}``,
``eval.detectors`` lists the ones a run scores (default: every config selected by the ``detector``
defaults list of conf/train.yaml, ``detector=[iwae,...]`` on the command line).

A run folder's config is data, so a ``_target_`` is accepted only when it names a class of the
package :mod:`fevae.detectors` (``fevae.detectors.<module>.<Class>``) that is a
:class:`~fevae.detectors.base.Detector` or :class:`~fevae.detectors.base.FittedDetector`; every other
key is a constructor argument of a plain value. A new detector is one module in ``fevae/detectors/``
and one config file in ``conf/detector/``.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fevae.detectors.base import Detector, FittedDetector
from fevae.errors import FevaeError
from fevae.utils.cli import CONFIG_DIR

PACKAGE = "fevae.detectors"
#: the detectors conf/detector/ ships (a run made before a detector's config existed gets it from there)
SHIPPED = ("iwae", "input_complexity", "likelihood_regret", "likelihood_ratio", "jigsaw_loss", "standardised_fevae", "dose", "fused")


def selected_names(cfg: Mapping[str, Any]) -> list[str]:
    """``eval.detectors`` (plus an older run's ``eval.fitted_detectors``), in order, without repeats."""
    ev = cfg.get("eval") or {}
    names = [str(n) for n in list(ev.get("detectors") or []) + list(ev.get("fitted_detectors") or [])]
    return list(dict.fromkeys(names))


def _shipped_config(name: str) -> DictConfig | None:

    path = Path(CONFIG_DIR) / "detector" / f"{name}.yaml"
    return OmegaConf.load(path).get(name) if name in SHIPPED and path.is_file() else None


def detector_config(cfg: DictConfig, name: str) -> dict[str, Any]:
    """The plain settings (``_target_`` included) of detector ``name`` in ``cfg``, resolved."""
    node = (cfg.get("detector") or {}).get(name) if isinstance(cfg.get("detector"), Mapping) else None
    if node is None:
        node = _shipped_config(name)
        if node is None:
            known = sorted(set(SHIPPED) | set(cfg.get("detector") or {}))
            raise FevaeError(f"eval.detectors has unknown detectors [{name!r}]",
                             f"choose from {known} (or [] for none); a new one needs fevae/detectors/{name}.py and "
                             f"conf/detector/{name}.yaml, selected with detector=[...,{name}]")
        cfg = OmegaConf.merge(cfg, {"detector": {name: node}})  # its interpolations (${eval.regret...}) resolve in the run's config
        node = cfg.detector[name]
    try:
        plain = OmegaConf.to_container(node, resolve=True) if isinstance(node, DictConfig) else node
    except OmegaConfBaseException as err:
        raise FevaeError(f"detector.{name} cannot be resolved ({str(err).splitlines()[0]})", f"fix conf/detector/{name}.yaml") from err
    if not isinstance(plain, dict) or "_target_" not in plain:
        raise FevaeError(f"detector.{name} has no _target_", f"give conf/detector/{name}.yaml a _target_: {PACKAGE}.<module>.<Class>")
    return plain


def detector_class(name: str, target: Any) -> type:
    """The allow-listed class a ``_target_`` names (see the module doc), imported only when allowed."""
    module, _, attr = str(target).rpartition(".")
    if not module.startswith(PACKAGE + ".") or not attr.isidentifier():
        raise FevaeError(f"detector.{name}._target_={target!r} is not a class of {PACKAGE}",
                         f"fevae builds detectors only from {PACKAGE}.<module>.<Class>")
    try:
        cls = getattr(importlib.import_module(module), attr)
    except (ImportError, AttributeError) as err:
        raise FevaeError(f"detector.{name}._target_={target!r} cannot be imported ({err})",
                         f"check the class name, or add the module fevae/detectors/{module.rsplit('.', 1)[-1]}.py") from err
    if not (isinstance(cls, type) and issubclass(cls, Detector | FittedDetector)):
        raise FevaeError(f"detector.{name}._target_={target!r} is not a detector class",
                         "name a subclass of fevae.detectors.Detector or fevae.detectors.FittedDetector")
    if cls.name != name:
        raise FevaeError(f"detector.{name}._target_={target!r} is the detector {cls.name!r}",
                         f"name the config file after its detector: conf/detector/{cls.name}.yaml")
    return cls


def build_detectors(cfg: DictConfig) -> tuple[list[Detector], list[FittedDetector]]:
    """The run's detectors: those scored in the model pass and those fitted on its scores afterwards."""
    names = selected_names(cfg)
    schemes = list(cfg.eval.schemes)
    passed, fitted = [], []
    for name in names:
        settings = detector_config(cfg, name)
        cls = detector_class(name, settings.pop("_target_"))
        bad = {k: v for k, v in settings.items() if not isinstance(v, (str, int, float, bool, type(None), list, dict))}
        if bad:
            raise FevaeError(f"detector.{name} has settings that are not plain values: {sorted(bad)}", f"fix conf/detector/{name}.yaml")
        try:
            det = cls.for_run(schemes, names, **settings) if issubclass(cls, FittedDetector) else cls(**settings)
        except TypeError as err:
            raise FevaeError(f"detector.{name} has settings its class does not take ({err})", f"fix conf/detector/{name}.yaml") from err
        if isinstance(det, Detector):
            det.check(schemes)
            passed.append(det)
        else:
            fitted.append(det)
    return passed, fitted


def build_fitted(names: Sequence[str], schemes: Sequence[str] = ("PR", "APO"), detectors: Sequence[str] = ()) -> list[FittedDetector]:
    """The shipped fitted detectors ``names`` (default settings) for a run scoring ``schemes`` and the
    model-pass ``detectors``: for scripts and tests that work on score arrays without a run config."""
    cfg = OmegaConf.create({"eval": {"schemes": list(schemes), "detectors": [*detectors, *names]}})
    fitted = {d.name: d for d in build_detectors(cfg)[1]}
    return [fitted[n] for n in names if n in fitted]


def needed_models(cfg: DictConfig) -> dict[str, DictConfig]:
    """``{name: model config}`` of the extra trained models the run's detectors need (the likelihood
    ratio's background VAE), built from the run's config."""
    out: dict[str, DictConfig] = {}
    for det in build_detectors(cfg)[0]:
        for name in det.models:
            out[name] = det.model_config(cfg, name)
    return out


def names_of(detectors: Sequence[Any]) -> list[str]:
    return [d.name for d in detectors]
