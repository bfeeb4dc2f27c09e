"""`python -m fevae.convergence run_dir=DIR [s_grid=[10,20,50,100,200]]`: how the scores move with S.

One model pass at the largest S of ``s_grid`` over the validation and test parts of every
evaluation set (layer ``fe.layer`` only, no likelihood regret), then every smaller S is scored
from the *first* S of those samples — exactly what a run with that ``eval.n_samples`` computes,
since an image's noise rows do not depend on S. Writes into a new folder
(``outputs/convergence/<experiment>/<time>/``): ``s_curve.csv`` (S × part × OOD set × scheme ×
score: AUROC with its bootstrap interval, median Monte-Carlo standard error), ``s_curve.json``
(the S chosen per scheme and the rule) and ``s_curve.{png,pdf}``.

The rule, fixed before looking: per scheme, the smallest S of the grid whose **validation** AUROC
of log p_FEVAE on MNIST is within ``tolerance`` of its value at the largest S. Test AUROCs are
reported next to it, never used.
"""

from __future__ import annotations

from pathlib import Path

import hydra
from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from fevae.pipeline.convergence import convergence
from fevae.utils.cli import CONFIG_DIR, run_cli, task_overrides, user_errors



@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="convergence")
@user_errors
def main(cfg: DictConfig) -> None:
    grid = OmegaConf.to_container(cfg.s_grid, resolve=True) if cfg.s_grid is not None else []
    convergence(cfg.run_dir, task_overrides(exclude=("run_dir", "s_grid", "tolerance")), Path(HydraConfig.get().runtime.output_dir),
                list(grid), float(cfg.tolerance), composed=cfg)


if __name__ == "__main__":
    run_cli(main)
