"""Every config group option composes, and its values are what the code expects."""

from __future__ import annotations

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.utils import instantiate
from omegaconf import OmegaConf

from fevae.utils.cli import CONFIG_DIR

EXPERIMENTS = {"v1_bernoulli": ("bernoulli", "binarise"), "v2_gaussian": ("gaussian", "scale"),
               "v3_continuous_bernoulli": ("continuous_bernoulli", "scale")}


def make(overrides, name="train"):
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose(config_name=name, overrides=overrides, return_hydra_config=True)


@pytest.mark.parametrize("experiment", sorted(EXPERIMENTS))
@pytest.mark.parametrize("profile", ["smoke", "cpu", "paper"])
def test_experiments_and_profiles_compose(experiment, profile):
    cfg = make([f"+experiment={experiment}", f"profile={profile}"])
    likelihood, preprocess = EXPERIMENTS[experiment]
    assert cfg.model.vae.likelihood.name == likelihood and cfg.data.preprocess == preprocess
    assert cfg.experiment_name == experiment and cfg.profile_name == profile
    assert cfg.model.jigsaw.hidden == [100, 80, 60, 40] and cfg.fe.layer == 1
    vae = instantiate(cfg.model.vae, _convert_="all")
    assert type(vae.likelihood).__name__.lower().startswith(likelihood.replace("_", ""))


def test_paper_settings_are_the_defaults():
    cfg = make(["+experiment=v2_gaussian"])
    assert (cfg.fe.n, cfg.fe.C, cfg.model.vae.latent_dim, cfg.model.vae.lr) == (10000, 15, 20, 1e-3)
    assert (cfg.model.jigsaw.lr, cfg.model.jigsaw.momentum, cfg.model.jigsaw.weight_decay) == (0.1, 0.9, 5e-4)
    assert cfg.budget.vae.batch_size == 128 and cfg.budget.jigsaw.batch_size == 128  # cpu profile: see conf
    paper = make(["profile=paper"])
    assert paper.budget.jigsaw.trainer.max_epochs == 200 and paper.budget.vae.batch_size == 512
    assert cfg.fe.reg_covar == 1e-3 and make(["fe=literal"]).fe.reg_covar == 1e-6
    assert make(["fe=literal"]).fe.C == 15 and not make(["fe=literal"]).fe.pre_activation


@pytest.mark.parametrize("overrides, check", [
    (["hparams_search=optuna"], lambda c: c.hydra.sweeper._target_.endswith("OptunaSweeper") and c.hydra.mode.name == "MULTIRUN"),
    (["hydra/launcher=joblib"], lambda c: c.hydra.launcher._target_.endswith("JoblibLauncher")),
    (["hydra/launcher=slurm"], lambda c: c.hydra.launcher._target_.endswith("SlurmLauncher")),
    (["trainer=ddp"], lambda c: c.trainer.strategy == "ddp" and c.trainer.sync_batchnorm),
    (["debug=default"], lambda c: c.profile_name == "smoke" and c.trainer.deterministic and c.task_name == "debug"),
    (["debug=profiler"], lambda c: c.trainer.profiler == "simple"),
])
def test_sweep_launcher_trainer_and_debug_options_compose(overrides, check):
    assert check(make(["+experiment=v2_gaussian", *overrides]))


def test_evaluate_and_score_configs_compose():
    assert make(["run_dir=x"], "evaluate").task_name == "evaluate"
    cfg = make(["run_dir=x", "input=y", "output=z"], "score")
    assert cfg.stream_name == "input" and cfg.eval.n_samples >= 1


def test_an_older_runs_config_gets_only_the_newer_scoring_settings():
    """fill_newer_settings adds eval.* keys and fe.extra_layers a run lacks (recursively), never
    replaces a value the run has, and leaves alone what shaped the weights or the stored mixture."""
    from fevae.pipeline.runs import fill_newer_settings

    stored = OmegaConf.create({"eval": {"n_samples": 20, "regret": {"subset": 3}}, "fe": {"layer": 1}, "seed": 1})
    today = OmegaConf.create({
        "eval": {"n_samples": 5, "detectors": ["iwae"], "regret": {"subset": 500, "steps": 50}},
        "fe": {"layer": 2, "extra_layers": [2, 3], "reg_covar": 1e-3},
        "seed": 2, "budget": {"epochs": 9},
    })
    assert fill_newer_settings(stored, today) == ["eval.detectors", "eval.regret.steps", "fe.extra_layers"]
    assert OmegaConf.to_container(stored) == {
        "eval": {"n_samples": 20, "regret": {"subset": 3, "steps": 50}, "detectors": ["iwae"]},
        "fe": {"layer": 1, "extra_layers": [2, 3]},
        "seed": 1,
    }
    assert fill_newer_settings(stored, today) == []  # idempotent
