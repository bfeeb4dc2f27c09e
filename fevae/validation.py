"""Generic config checks and the allow-list that builds objects from configs.

This module knows no fevae component: it imports only :mod:`fevae.errors`. Each component's own
checks live with its code (``fevae.features.fitting.validate_fe_config``,
``fevae.evaluation.settings.validate_eval_config``, ``fevae.monitor.validate_separation_config``,
``fevae.side_by_side.check_training_config``, ...); :func:`fevae.pipeline.checks.validate_config`, one
layer above them all, calls them in one pass before data is read or a model trained.

Objects are built only from the classes of :data:`ALLOWED_TARGETS`, at the config keys listed
there; a ``_target_`` anywhere else, or naming another class, is refused before anything is
imported or instantiated (:func:`build` imports the allow-listed class by name). A run folder's
``.hydra/config.yaml`` is data, never code.
"""

from __future__ import annotations

import importlib
import inspect
import numbers
from collections.abc import Mapping
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fevae.errors import FevaeError, require

#: config key -> the ``_target_`` strings accepted there (every other ``_target_`` is refused)
ALLOWED_TARGETS: dict[str, tuple[str, ...]] = {
    "model.vae": ("fevae.models.vae.VAE", "fevae.models.VAE"),
    "model.jigsaw": ("fevae.models.jigsaw.Jigsaw", "fevae.models.Jigsaw"),
    # the likelihood ratio's background VAE (built from model.vae by fevae.detectors.likelihood_ratio)
    "model.background": ("fevae.models.background.BackgroundVAE",),
    "data": ("fevae.data.datamodule.FevaeDataModule", "fevae.data.FevaeDataModule"),
    "trainer": ("lightning.pytorch.Trainer", "lightning.Trainer", "lightning.pytorch.trainer.trainer.Trainer"),
}
#: config groups whose entries are the user's own Lightning callbacks / loggers (``<group>.<name>._target_``),
#: built for training only (a loaded run folder's config has them removed: :data:`fevae.pipeline.runs.TRAINING_ONLY`)
USER_GROUPS = ("callbacks", "logger")
#: training-length settings a profile sets per model (``budget.<model>.trainer``, conf/profile/); the
#: same key under ``trainer`` would be silently overridden there, so it is refused
BUDGET_KEYS = ("max_epochs", "min_epochs", "max_steps", "min_steps", "max_time", "limit_train_batches", "limit_val_batches",
               "val_check_interval", "check_val_every_n_epoch")
#: likelihood names of conf/likelihood (the VAE builds them by name, not by ``_target_``)
LIKELIHOODS = ("bernoulli", "continuous_bernoulli", "gaussian")
#: plain values a model/data config may hold (after resolving interpolations)
_PLAIN = (str, bool, numbers.Real, type(None))


def plain(node: Any, key: str) -> Any:
    """``node`` resolved to plain Python containers, or a one-line error naming ``key``."""
    if isinstance(node, DictConfig | ListConfig):
        try:
            return OmegaConf.to_container(node, resolve=True)
        except OmegaConfBaseException as err:
            raise FevaeError(f"{key} cannot be resolved ({str(err).splitlines()[0]})", f"fix the value of {key}") from err
    return node


def find_targets(node: Any, prefix: str = "") -> list[tuple[str, Any]]:
    """``(dotted key, target)`` of every ``_target_`` in a plain container (``""`` is the root)."""
    found: list[tuple[str, Any]] = []
    if isinstance(node, Mapping):
        if "_target_" in node:
            found.append((prefix, node["_target_"]))
        for k, child in node.items():
            if k != "_target_":
                found += find_targets(child, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(node, list | tuple):
        for i, child in enumerate(node):
            found += find_targets(child, f"{prefix}[{i}]")
    return found


def containers(cfg: Any) -> list[Any]:
    """``cfg`` as plain containers: unresolved, and resolved when it resolves (an interpolation can
    bring a ``_target_`` in)."""
    if not isinstance(cfg, DictConfig | ListConfig):
        return [cfg]
    out = [OmegaConf.to_container(cfg, resolve=False)]
    try:
        out.append(OmegaConf.to_container(cfg, resolve=True))
    except OmegaConfBaseException:
        pass  # reported by the checks that need the values
    return out



def check_trainer_config(trainer: Any) -> None:
    """The trainer config names Lightning's Trainer and nests no other ``_target_``."""
    for container in containers(trainer):
        if not isinstance(container, Mapping):
            raise FevaeError(f"trainer={container!r} is not a group of settings", "use trainer=default|cpu|gpu|ddp")
        targets = find_targets(container)
        target = container.get("_target_")
        if target not in ALLOWED_TARGETS["trainer"]:
            raise FevaeError(f"trainer._target_={target!r} is not Lightning's Trainer", "use trainer=default|cpu|gpu|ddp (lightning.pytorch.Trainer)")
        nested = [k for k, _ in targets if k]
        if nested:
            raise FevaeError(f"trainer.{nested[0]} has a _target_, which fevae does not build", "give trainer.* plain values only")
        for key in USER_GROUPS:
            if key in container:
                raise FevaeError(f"trainer.{key} is not read: fevae builds the trainers' {key} itself",
                                 f"use the {key} config group ({key}=... or +{key}.<name>._target_=...; docs/usage.md: Running experiments)")


def check_user_groups(cfg: DictConfig) -> None:
    """Each entry of the ``callbacks`` and ``logger`` groups is ``<name>: {_target_: <class path>, ...}`` (or null)."""
    for group in USER_GROUPS:
        node = cfg.get(group)
        if node is None:
            continue
        if not isinstance(node, DictConfig):
            raise FevaeError(f"{group}={node!r} is not a group of named entries", f"use {group}=<config> or +{group}.<name>._target_=<class>")
        for name, entry in node.items():
            if entry is None:
                continue
            target = entry.get("_target_") if isinstance(entry, DictConfig) else None
            if not isinstance(target, str) or not target:
                raise FevaeError(f"{group}.{name} has no _target_", f"give it one, e.g. +{group}.{name}._target_=<module.Class>, or set {group}.{name}=null")


def build(key: str, node: Any, **extra: Any) -> Any:
    """An instance of the allowed class at ``key`` (``model.vae``, ``model.jigsaw``, ``data``) from ``node``.

    The ``_target_`` must be the allowed one, every other key a constructor argument with a plain
    value; the constructor then validates the values (the checks the classes always run).
    """
    if node is None:
        raise FevaeError(f"{key} is missing from the config", "use a config composed by fevae (conf/)")
    values = plain(node, key)
    if not isinstance(values, dict):
        raise FevaeError(f"{key} is {type(values).__name__}, not a mapping", f"give {key} as a group of settings")
    values = dict(values)  # a copy: a caller's plain dict is left as it was (and can be built from again)
    target = values.pop("_target_", None)
    if target not in ALLOWED_TARGETS[key]:
        raise FevaeError(f"{key}._target_={target!r} is not {ALLOWED_TARGETS[key][0]}", f"fevae builds only {ALLOWED_TARGETS[key][0]} for {key}")
    module, _, name = ALLOWED_TARGETS[key][0].rpartition(".")
    cls = getattr(importlib.import_module(module), name)  # the allow-listed class, imported by name (never the config's string)
    for flag in [k for k in values if str(k).startswith("_") and str(k).endswith("_")]:
        values.pop(flag)  # hydra flags (_convert_, _recursive_, ...): meaningless here
    values.update(extra)
    params: dict[str, inspect.Parameter] = {}
    for klass in reversed(cls.__mro__):  # a subclass's __init__(*args, its own, **kwargs) takes its bases' too
        if "__init__" in vars(klass) and klass is not object:
            params.update(inspect.signature(klass.__init__).parameters)
    params = {k: p for k, p in params.items() if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
    unknown = sorted(str(k) for k in values if k not in params or k == "self")
    if unknown:
        raise FevaeError(f"{key} has unknown settings {unknown}", f"see {cls.__module__}.{cls.__name__} for the valid ones")
    for name, value in values.items():
        _require_plain(f"{key}.{name}", value)
    if key in ("model.vae", "model.background"):
        lik = values.get("likelihood")
        require(isinstance(lik, dict), f"model.vae.likelihood={lik!r} is not a group of settings", "use likelihood=gaussian|bernoulli|continuous_bernoulli")
        require(lik.get("name") in LIKELIHOODS, f"model.vae.likelihood.name={lik.get('name')!r} is unknown", f"use one of {', '.join(LIKELIHOODS)}")
    _check_types(key, values, params)
    try:
        return cls(**values)
    except FevaeError:
        raise
    except (TypeError, ValueError) as err:
        raise FevaeError(f"{key} is invalid ({str(err).splitlines()[0]})", f"see {cls.__module__}.{cls.__name__}") from err


def _require_plain(key: str, value: Any) -> None:
    if isinstance(value, dict):
        for k, v in value.items():
            _require_plain(f"{key}.{k}", v)
    elif isinstance(value, list | tuple):
        for i, v in enumerate(value):
            _require_plain(f"{key}[{i}]", v)
    elif not isinstance(value, _PLAIN):
        raise FevaeError(f"{key}={value!r} is not a plain value", "use numbers, strings, booleans, lists")


def _check_types(key: str, values: dict[str, Any], params: Mapping[str, inspect.Parameter]) -> None:
    """Numbers where the constructor's default is a number (booleans are not numbers)."""
    for name, value in values.items():
        default = params[name].default
        if isinstance(default, bool) or default is None or default is inspect.Parameter.empty:
            continue
        if isinstance(default, numbers.Real):
            ok = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if isinstance(default, int) and ok:
                ok = float(value).is_integer()
            require(ok, f"{key}.{name}={value!r} is not a{'n integer' if isinstance(default, int) else ' number'}",
                    f"set {key}.{name} to a number like {default!r}")
            if isinstance(default, int) and not isinstance(value, int):
                values[name] = int(value)


def positive_int(key: str, value: Any, minimum: int = 1) -> None:
    ok = isinstance(value, int) and not isinstance(value, bool) and value >= minimum
    require(ok, f"{key}={value!r} is invalid", f"set {key} to an integer ≥ {minimum}")


def check_budget(cfg: DictConfig) -> None:
    budget = cfg.get("budget")
    require(isinstance(budget, DictConfig), "budget is missing", "pick a profile: profile=smoke|cpu|paper")
    shared = plain(cfg.get("trainer"), "trainer") or {}
    for key in BUDGET_KEYS:  # a trainer.* value a profile overrides per model would be silently ignored
        models = [name for name in ("vae", "jigsaw") if key in (budget.get(name, {}).get("trainer") or {})]
        if key in shared and models:
            raise FevaeError(
                f"trainer.{key} would be ignored: the profile sets budget.{models[0]}.trainer.{key} per model",
                f"set budget.vae.trainer.{key}=... and/or budget.jigsaw.trainer.{key}=... instead (profiles: conf/profile/)")
    for name in ("vae", "jigsaw"):
        part = budget.get(name)
        require(isinstance(part, DictConfig), f"budget.{name} is missing", "pick a profile: profile=smoke|cpu|paper")
        positive_int(f"budget.{name}.batch_size", part.get("batch_size"))
        trainer = plain(part.get("trainer", {}), f"budget.{name}.trainer") or {}
        require(isinstance(trainer, dict), f"budget.{name}.trainer is not a group of settings", "see conf/profile/")
        for key, value in trainer.items():
            full = f"budget.{name}.trainer.{key}"
            _require_plain(full, value)
            if key in ("max_epochs", "max_steps"):
                ok = isinstance(value, int) and not isinstance(value, bool) and (value >= 1 or value == -1)
                require(ok, f"{full}={value!r} is invalid", f"set {full} to an integer ≥ 1 (or -1 for no limit)")
            elif key in ("min_epochs", "min_steps", "num_sanity_val_steps"):
                positive_int(full, value, 0) if value is not None else None
            elif key == "log_every_n_steps":
                positive_int(full, value, 1)
            elif key.startswith("limit_") and key.endswith("_batches"):
                ok = (isinstance(value, int) and not isinstance(value, bool) and value >= 0) or (
                    isinstance(value, float) and 0.0 <= value <= 1.0)
                require(ok, f"{full}={value!r} is invalid", f"set {full} to a number of batches ≥ 0 or a fraction in [0, 1]")
            elif key == "val_check_interval":
                ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and value > 0
                require(ok, f"{full}={value!r} is invalid", f"set {full} to a number > 0")
