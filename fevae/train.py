"""`python -m fevae.train +experiment=v2_gaussian [overrides]`: train, fit the mixture, score, report.

One run = one folder (``hydra.run.dir``): ``.hydra/``, ``train.log``, ``checkpoints/{vae,jigsaw}/``,
``tensorboard/``, ``mixture.npz``, ``scores/``, ``metrics.json``, ``figures/``, ``report.md``,
``timings.json``.
"""

from __future__ import annotations

import hydra
from omegaconf import DictConfig

from fevae.data.evalsets import check_data_sources, check_ood_sources
from fevae.metrics.ood import flatten_metrics
from fevae.pipeline.checks import validate_config
from fevae.pipeline.folders import own_run_folder, record_refused_start
from fevae.pipeline.train import run_dir_of, train
from fevae.utils.cli import CONFIG_DIR, run_cli, user_errors
from fevae.utils.log import route_lightning_logs


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="train")
@user_errors
def main(cfg: DictConfig) -> float | str | None:

    route_lightning_logs()
    try:
        validate_config(cfg)  # a bad setting is refused before the run folder is claimed
        check_ood_sources(cfg.data)  # every OOD image file read and checked before the run folder is claimed
        check_data_sources(cfg.data)  # every dataset split located (not read) before the run folder is claimed
    except Exception:
        record_refused_start(run_dir_of(cfg), cfg)  # its .hydra/, into a folder nobody holds that holds no run
        raise
    with own_run_folder(run_dir_of(cfg), cfg):  # one process per run folder; resume only with the same config
        result = train(cfg)
    return flatten_metrics(result["metrics"]).get(cfg.optimized_metric) if result["metrics"] else None


if __name__ == "__main__":
    run_cli(main)
