"""The library behind ``python -m fevae.evaluate`` (:mod:`fevae.evaluate`: its command line, whose docstring
says what it reads and writes)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from omegaconf import DictConfig

from fevae.evaluation.driver import run_scoring
from fevae.evaluation.settings import fitted_detectors
from fevae.features.density import TorchMixture
from fevae.features.fitting import fit_feature_mixtures, save_mixtures
from fevae.outputs.write import example_images, write_outputs
from fevae.pipeline.runs import load_run
from fevae.pipeline.stages import detector_models, make_datamodule, report_info
from fevae.utils.cli import is_rank_zero
from fevae.utils.log import log_config

log = logging.getLogger("fevae.evaluate")


def evaluate(run_dir: str | Path, overrides: list[str], out_dir: Path, composed: DictConfig | None = None) -> dict[str, Any]:
    run = load_run(run_dir, overrides, composed)
    cfg = run.cfg
    if is_rank_zero():
        log_config(cfg, out_dir)  # the run's config with this command's overrides: what is scored
    L.seed_everything(cfg.seed, workers=True)
    data = make_datamodule(cfg, cfg.budget.jigsaw.batch_size)
    mixtures = run.mixtures
    refit = any(o.lstrip("+~").startswith("fe.") for o in overrides)
    if refit or run.missing_layers():
        # fe.* overridden: refit every layer; otherwise keep the run's mixtures and fit the layers it lacks
        layers, kept = (None, {}) if refit else (run.missing_layers(), mixtures)
        log.info("%s: fitting the feature mixtures", "fe.* overridden" if refit else f"the run has no mixture for layers {layers}")
        mixtures = {**kept, **fit_feature_mixtures(run.jigsaw, data.train_set, cfg.fe, cfg.seed, layers)}
        if is_rank_zero():
            save_mixtures(out_dir, mixtures, cfg.fe)
    loaders = data.eval_loaders()
    models = detector_models(cfg, Path(run_dir), lambda: make_datamodule(cfg, cfg.budget.vae.batch_size), out_dir=out_dir)  # a model the run lacks is trained here, into out_dir
    scoring = run_scoring(cfg, run.vae, run.jigsaw, {k: TorchMixture(m) for k, m in mixtures.items()}, loaders, models=models)
    if not is_rank_zero():
        return {"metrics": None, "out_dir": str(out_dir)}
    info = {**report_info(cfg), "source_run": str(run_dir), "overrides": overrides}
    metrics = write_outputs(out_dir, scoring.scores, info, examples=example_images(data), costs=scoring.costs,
                            mc_se=scoring.mc_se, bootstrap=cfg.eval.get("bootstrap"),
                            split=data.split_record(), in_distribution=data.id_name,
                            fitted=fitted_detectors(cfg), figures=cfg.eval.get("figures", "all"))
    log.info("evaluation written to %s", out_dir)
    return {"metrics": metrics, "out_dir": str(out_dir)}


