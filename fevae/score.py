"""`python -m fevae.score run_dir=DIR input=FILE output=OUT.csv`: score any images with a trained run.

Input: ``.npy`` [N,28,28] uint8 pixels (0-255) or floats in [0,1], a folder of 28x28 grayscale
PNGs (sorted by name), or an IDX file. The run's own preprocessing is applied (binarised for V1).
Output: a CSV with one row per image in input order and the columns in :data:`COLUMNS`; written
atomically, so a failed call leaves no output file.
"""

from __future__ import annotations

import csv
import logging
from pathlib import Path

import hydra
import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from fevae.errors import FevaeError
from fevae.evaluation import run_scoring
from fevae.inputs import read_images, to_model_input
from fevae.mixture import TorchMixture
from fevae.run import load_run
from fevae.utils.io import atomic_open
from fevae.utils.cli import CONFIG_DIR, is_rank_zero, task_overrides, user_errors

log = logging.getLogger("fevae.score")

COLUMNS = ["log_p_vae_pr", "log_p_fe_pr", "log_p_fevae_pr", "log_p_vae_apo", "log_p_fe_apo", "log_p_fevae_apo"]

def score_images(
    run_dir: str | Path, input_path: str | Path, overrides: list[str] = (), stream_name: str = "input", composed: DictConfig | None = None
) -> dict[str, np.ndarray]:
    """Scores of every image in ``input_path`` (input order) under the run's models."""
    images = read_images(input_path)
    run = load_run(run_dir, overrides, composed)
    L.seed_everything(run.cfg.seed, workers=True)
    x = to_model_input(images, run.cfg.data.preprocess)
    dataset = TensorDataset(x, torch.zeros(len(x), dtype=torch.long), torch.arange(len(x)))
    loader = DataLoader(dataset, batch_size=run.cfg.eval.batch_size, shuffle=False)
    return run_scoring(run.cfg, run.vae, run.jigsaw, TorchMixture(run.mixture), {stream_name: loader})[stream_name]


def write_csv_atomic(path: str | Path, scores: dict[str, np.ndarray]) -> None:
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise FevaeError(f"output={path}: folder {path.parent} does not exist", "create it or choose another output path")
    columns = [c for c in COLUMNS if c in scores] + sorted(c for c in scores if c not in COLUMNS)
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for row in zip(*(scores[c] for c in columns)):
            writer.writerow([repr(float(v)) for v in row])


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="score")
@user_errors
def main(cfg: DictConfig) -> None:
    scores = score_images(cfg.run_dir, cfg.input, task_overrides(exclude=("run_dir", "input", "output", "stream_name")), cfg.stream_name, composed=cfg)
    if not is_rank_zero():
        return
    write_csv_atomic(cfg.output, scores)
    log.info("wrote %d rows to %s", len(next(iter(scores.values()))), cfg.output)


if __name__ == "__main__":
    main()
