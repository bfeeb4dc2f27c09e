"""`python -m fevae.evaluate run_dir=DIR [eval.n_samples=100] [fe.C=10] ...`: re-score a finished run.

Results (scores, metrics.json, figures, report.md, and the mixture files when refitted) go to a new
folder ``outputs/evaluate/default/<time>/`` (``hydra.run.dir`` moves it); the run is left untouched.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig

from fevae.pipeline.evaluate import evaluate
from fevae.utils.cli import CONFIG_DIR, run_cli, task_overrides, user_errors
from fevae.utils.log import route_lightning_logs


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="evaluate")
@user_errors
def main(cfg: DictConfig) -> None:
    route_lightning_logs()
    evaluate(cfg.run_dir, task_overrides(exclude=("run_dir",)), Path(HydraConfig.get().runtime.output_dir), composed=cfg)


if __name__ == "__main__":
    run_cli(main)
