"""Composing the real Hydra configs for tests and running the tasks on tiny synthetic data."""

from __future__ import annotations

from pathlib import Path

from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, open_dict

from fevae.utils.cli import CONFIG_DIR

#: overrides that fit the smoke profile to the synthetic data of helpers.make_data_dir
TINY = [
    "profile=smoke",
    "data.train_subset=null",
    "data.val_size=16",
    "data.eval_split.val=12",
    "data.eval_split.val_pool=0.5",  # 16 of the synthetic sets' 32 images (12 of a 24-image set): the validation pool
    "data.eval_split.test=null",
    "fe.n=32",
    "fe.C=2",
    "budget.vae.batch_size=16",
    "budget.jigsaw.batch_size=16",
    "trainer.enable_progress_bar=false",
    "trainer.enable_model_summary=false",
    # no figures (~9 s of a tiny run's ~18 s) and the layer-1 mixture fitted here, not in a worker pool (~2.5 s):
    # the tests of figures, dashboards and worker processes ask for them (FIGURES, or their own overrides)
    "eval.figures=none",
    "fe.n_jobs=1",
]
#: what a test of the figures adds to TINY: Fig. 1(a), 1(b), 2 and the detector AUROCs (`all` adds a histogram per score)
FIGURES = ["eval.figures=paper"]


def compose_cfg(config_name: str, run_dir: Path, overrides: list[str]) -> DictConfig:
    """Compose ``conf/<config_name>.yaml`` as the CLI would, with the run folder at ``run_dir``."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        cfg = compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    with open_dict(cfg):
        cfg.hydra.runtime.output_dir = str(run_dir)
        cfg.hydra.job.num = 0
    HydraConfig().set_config(cfg)
    run_dir.mkdir(parents=True, exist_ok=True)
    return cfg


def train_cfg(run_dir: Path, data_dir: Path, experiment: str = "v2_gaussian", extra: list[str] | None = None) -> DictConfig:
    return compose_cfg("train", run_dir, [f"+experiment={experiment}", f"paths.data_dir={data_dir}", *TINY, *(extra or [])])


def save_run_config(cfg: DictConfig, run_dir: Path) -> None:
    """Write ``.hydra/config.yaml`` as Hydra's CLI does (the tasks read finished runs from it)."""
    from omegaconf import OmegaConf

    (run_dir / ".hydra").mkdir(parents=True, exist_ok=True)
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"])
    OmegaConf.save(plain, run_dir / ".hydra" / "config.yaml")
