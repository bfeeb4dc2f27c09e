"""The library behind ``python -m fevae.train`` (:mod:`fevae.train`: its command line, whose docstring
says what it reads and writes)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import lightning as L
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fevae.evaluation.driver import run_scoring
from fevae.evaluation.settings import (
    check_optimized_metric,
    fitted_detectors,
    validate_eval_config,
)
from fevae.features.density import TorchMixture
from fevae.features.fitting import (
    MixtureCallback,
    fit_feature_mixtures,
    load_mixtures,
    save_mixtures,
    validate_fe_config,
)
from fevae.metrics.ood import write_json_atomic
from fevae.monitor import separation_callbacks
from fevae.outputs.write import example_images, write_outputs
from fevae.pipeline.checks import check_sync_batchnorm, validate_config
from fevae.pipeline.runs import load_model
from fevae.pipeline.stages import (
    detector_model_configs,
    detector_title,
    make_datamodule,
    report_info,
)
from fevae.side_by_side import TrainJob, plan, train_jobs
from fevae.training import fit_model
from fevae.utils.cli import is_rank_zero
from fevae.utils.log import log_config, stage
from fevae.utils.timing import INSIDE

log = logging.getLogger("fevae.train")


def run_dir_of(cfg: DictConfig) -> Path:
    return Path(HydraConfig.get().runtime.output_dir)


def train(cfg: DictConfig) -> dict[str, Any]:
    """The train task: returns ``{"metrics": ..., "run_dir": ...}``."""
    validate_config(cfg)  # every setting, before any data is read or model trained (fevae/validation.py)
    check_sync_batchnorm(cfg.trainer)
    run_dir = run_dir_of(cfg)
    timings: dict[str, float] = {}
    validate_eval_config(cfg.eval, cfg)
    validate_fe_config(cfg.fe)
    check_optimized_metric(cfg)
    if is_rank_zero():
        log_config(cfg, run_dir)
    L.seed_everything(cfg.seed, workers=True)

    vae_data = make_datamodule(cfg, cfg.budget.vae.batch_size)
    validate_fe_config(cfg.fe, len(vae_data.train_set))
    jigsaw_data = make_datamodule(cfg, cfg.budget.jigsaw.batch_size)
    mixture_cb = MixtureCallback(cfg.fe, cfg.seed, run_dir)
    jobs = training_jobs(cfg, run_dir, vae_data, jigsaw_data, mixture_cb)
    side, threads = plan(cfg.get("training"), cfg.trainer, len(jobs))
    if side:
        with stage(f"train {', '.join(j.name for j in jobs)} side by side ({threads} thread{'s' * (threads != 1)} each)",
                   timings, "train_side_by_side"):
            train_jobs(jobs, True, threads)
    else:
        train_jobs(jobs, False, threads)
    for job in jobs:  # side by side, each model's times are parts of train_side_by_side (fevae.utils.timing.INSIDE)
        timings.update({f"train_side_by_side{INSIDE}{k}" if side else k: v for k, v in job.extra.items()})
    trained = {job.name: job.load() for job in jobs}
    vae, jigsaw = trained.pop("vae"), trained.pop("jigsaw")
    models = {name: module.eval() for name, module in trained.items()}  # the likelihood ratio's background VAE
    arrays = mixture_cb.mixtures if not side else (load_mixtures(run_dir, cfg.fe) if "fit_mixture" in jobs[-1].extra else None)
    if arrays is None:  # no Jigsaw training happened (reused from the cache, or resumed after it had finished)
        with stage("feature mixtures", timings, "fit_mixture"):
            arrays = load_mixtures(run_dir, cfg.fe) if cfg.resume else None
            if arrays is None:
                arrays = fit_feature_mixtures(jigsaw.eval(), jigsaw_data.train_set, cfg.fe, cfg.seed)
                if is_rank_zero():
                    save_mixtures(run_dir, arrays, cfg.fe)

    with stage("scoring", timings, "score"):
        mixtures = {layer: TorchMixture(a) for layer, a in arrays.items()}
        scoring = run_scoring(cfg, vae, jigsaw, mixtures, vae_data.eval_loaders(), models=models)

    if not is_rank_zero():
        return {"metrics": None, "run_dir": str(run_dir)}
    with stage("writing scores, metrics, figures and report", timings, "write_outputs"):
        metrics = write_outputs(run_dir, scoring.scores, report_info(cfg, timings), examples=example_images(vae_data), costs=scoring.costs,
                                mc_se=scoring.mc_se, bootstrap=cfg.eval.get("bootstrap"),
                                split=vae_data.split_record(), in_distribution=vae_data.id_name,
                                fitted=fitted_detectors(cfg), figures=cfg.eval.get("figures", "all"))
    write_json_atomic(run_dir / "timings.json", timings)
    log.info("run folder: %s", run_dir)
    return {"metrics": metrics, "run_dir": str(run_dir)}


def training_jobs(cfg: DictConfig, run_dir: Path, vae_data: L.LightningDataModule, jigsaw_data: L.LightningDataModule,
                  mixture_cb: MixtureCallback) -> list[TrainJob]:
    """The run's models to train, in the order a sequential run trains them: the VAE, the detectors'
    extra models (the likelihood ratio's background VAE), the Jigsaw (whose end fits the feature
    mixtures). Each job returns its stage times; each loads its trained module afterwards (from memory
    when it ran in this process, else from its best checkpoint)."""
    trained: dict[str, L.LightningModule] = {}

    def job(name: str, title: str, key: str, data: L.LightningDataModule, model_cfg: DictConfig, callbacks: list[L.Callback]) -> TrainJob:
        def run() -> dict[str, float]:
            seconds: dict[str, float] = {}
            with stage(title, seconds, key):
                trained[name] = fit_model(name, data, model_cfg, run_dir, callbacks=callbacks)
            if name == "jigsaw" and mixture_cb.mixtures is not None:  # the mixtures fitted at its end are a stage of their own
                seconds[key] -= mixture_cb.fit_seconds
                seconds["fit_mixture"] = mixture_cb.fit_seconds
            return seconds

        def load() -> L.LightningModule:
            return trained[name] if name in trained else load_model(run_dir, name, model_cfg.model[name])

        return TrainJob(name, run, load)

    jobs = [job("vae", "train VAE", "train_vae", vae_data, cfg, separation_callbacks("vae", cfg, run_dir))]
    jobs += [job(name, detector_title(cfg, name), f"train_{name}", vae_data, model_cfg, [])
             for name, model_cfg in detector_model_configs(cfg).items()]
    jobs.append(job("jigsaw", "train Jigsaw (and fit the feature mixtures at its end)", "train_jigsaw", jigsaw_data, cfg,
                    [*separation_callbacks("jigsaw", cfg, run_dir), mixture_cb]))
    return jobs


