"""One validation pass over a composed config: every component's checks, called from one place above them.

:func:`validate_config` runs first in every task, before data is read or a model trained: it
refuses every setting the constructors and fitting code would refuse later (it *calls* those
checks: the models and the data module are built, which is cheap; the feature-mixture and
evaluation checks are the same functions the fitting and scoring code use), plus the settings
only Lightning or sklearn would notice after training (budgets, ``fe.reg_covar``, ``fe.max_iter``).
The checks themselves live with their components; the generic helpers in :mod:`fevae.validation`.
"""

from __future__ import annotations

import torch
from omegaconf import DictConfig

from fevae.detectors.registry import detector_class
from fevae.errors import FevaeError, require
from fevae.evaluation.settings import validate_eval_config
from fevae.features.fitting import check_fe_settings, validate_fe_config
from fevae.monitor import validate_separation_config
from fevae.side_by_side import check_training_config
from fevae.validation import (
    ALLOWED_TARGETS,
    USER_GROUPS,
    build,
    check_budget,
    check_trainer_config,
    check_user_groups,
    containers,
    find_targets,
    plain,
    positive_int,
)

__all__ = ["check_sync_batchnorm", "check_targets", "validate_config"]


def check_sync_batchnorm(trainer: DictConfig) -> None:
    """Training with ``trainer.sync_batchnorm=true`` under DDP on the CPU would fail at the first step
    (PyTorch's SyncBatchNorm runs on CUDA only): refused before any work. Scoring (``trainer.predict``)
    does not convert the BatchNorm layers, so :mod:`fevae.evaluate` keeps such a run's setting."""
    accelerator = str(trainer.get("accelerator", "auto"))
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if trainer.get("sync_batchnorm") and "ddp" in str(trainer.get("strategy", "")) and on_cpu:
        raise FevaeError("trainer.sync_batchnorm=true needs CUDA GPUs (PyTorch's SyncBatchNorm has no CPU version), and this DDP training runs on the CPU",
                         "add trainer.sync_batchnorm=false (each rank then normalises with its own batch's statistics)")

def check_targets(cfg: DictConfig, source: str = "the config", skip: tuple[str, ...] = ("hydra",)) -> None:
    """Refuse any ``_target_`` that is not an allowed class at an allowed key (nothing is instantiated).

    ``skip``: top-level keys not looked at (Hydra's own ``hydra`` node of a composed config; a run
    folder's config is checked with ``skip=()``).
    """
    for container in containers(cfg):
        for key, target in find_targets(container):
            if key.split(".")[0].split("[")[0] in skip:
                continue
            if key.startswith("detector.") and key.count(".") == 1:
                detector_class(key.split(".", 1)[1], target)  # a class of fevae.detectors only, or one error
                continue
            allowed = ALLOWED_TARGETS.get(key)
            if allowed is None or target not in allowed:
                raise FevaeError(
                    f"{source} sets {key or '(top level)'}._target_={target!r}, which fevae does not build",
                    f"fevae builds only {', '.join(f'{k}: {v[0]}' for k, v in ALLOWED_TARGETS.items())}",
                )


def validate_config(cfg: DictConfig, source: str = "the config", build_data: bool = True, skip: tuple[str, ...] = ("hydra", *USER_GROUPS)) -> None:
    """Refuse any invalid setting of a composed train/evaluate config (or a stored run's config).

    Nothing is read from disk and nothing is trained; the models and the data module are built
    (cheap) so that their constructors' checks run now rather than after minutes of work.
    """
    check_targets(cfg, source, skip)
    check_user_groups(cfg)
    seed = cfg.get("seed")
    positive_int("seed", seed, 0)
    require(isinstance(cfg.get("resume", False), bool), f"resume={cfg.get('resume')!r} is invalid", "set resume=true or false")
    require(cfg.get("trainer") is not None, "trainer is missing", "pick trainer=default|cpu|gpu|ddp")
    check_trainer_config(cfg.trainer)
    check_training_config(cfg.get("training"))
    ev = plain(cfg.get("eval"), "eval")
    fe = plain(cfg.get("fe"), "fe")
    require(isinstance(ev, dict), "eval is missing", "use eval=default")
    require(isinstance(fe, dict), "fe is missing", "use fe=default")
    try:
        validate_eval_config(ev, cfg)
        validate_fe_config(fe)
    except KeyError as err:
        raise FevaeError(f"setting {err} is missing from {source}", "use a config composed by fevae (conf/)") from err
    check_fe_settings(fe)
    validate_separation_config(plain(cfg.get("separation"), "separation"))  # absent = off (an older config)
    check_budget(cfg)
    models = cfg.get("model")
    require(isinstance(models, DictConfig), "model is missing", "use model=default")
    build("model.vae", models.get("vae"))
    jigsaw = build("model.jigsaw", models.get("jigsaw"))
    for layer in {int(fe["layer"]), *(int(k) for k in fe.get("extra_layers") or [])}:
        jigsaw.feature_dim(layer)  # the layer exists in this Jigsaw (model.jigsaw.hidden)
    if build_data:
        build("data", cfg.get("data"), batch_size=cfg.budget.vae.batch_size, eval_batch_size=ev["batch_size"])
