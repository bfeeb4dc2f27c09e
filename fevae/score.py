"""`python -m fevae.score run_dir=DIR input=FILE output=OUT.csv`: score any images with a trained run.

Input: images of the run's shape ``data.image_shape`` (C, H, W): a ``.npy``/``.npz`` array [N,H,W]
(one channel; also [N,1,H,W]) or [N,H,W,C] (channels last) of uint8 pixels (0-255) or floats in
[0,1], a folder of PNGs (grayscale for one channel, RGB for three; sorted by name; 16-bit grayscale
ones scaled to [0,1]) or one PNG, or an IDX file; the format is read from the content
(:mod:`fevae.inputs`); any other shape is refused with one line. The run's own preprocessing is applied (binarised for V1).
The output path is checked before any work.
Output: a CSV with one row per image in input order: the columns in :data:`COLUMNS`, then
``log_p_fevae_l<k>_{pr,apo}`` (extra Jigsaw layers) and the detectors in :data:`OTHER_COLUMNS`
(``likelihood_regret`` only for the first ``eval.regret.subset`` rows; later cells are empty).
Written atomically, so a failed call leaves no output file.
"""

from __future__ import annotations

import logging

import hydra
from omegaconf import DictConfig, OmegaConf

from fevae.errors import FevaeError
from fevae.pipeline.score import (
    USAGE,
    check_output_path,
    score_images,
    write_csv_atomic,
)
from fevae.utils.cli import (
    CONFIG_DIR,
    is_rank_zero,
    run_cli,
    task_overrides,
    user_errors,
)

log = logging.getLogger("fevae.score")


@hydra.main(version_base="1.3", config_path=CONFIG_DIR, config_name="score")
@user_errors
def main(cfg: DictConfig) -> None:
    missing = [k for k in ("run_dir", "input", "output") if OmegaConf.is_missing(cfg, k)]
    if missing:
        raise FevaeError(f"{', '.join(missing)} {'is' if len(missing) == 1 else 'are'} required", USAGE)
    check_output_path(cfg.output, cfg.input)  # before any scoring
    scores = score_images(cfg.run_dir, cfg.input, task_overrides(exclude=("run_dir", "input", "output", "stream_name", "limits")),
                          cfg.stream_name, composed=cfg)
    if not is_rank_zero():
        return
    write_csv_atomic(cfg.output, scores)
    log.info("wrote %d rows to %s", len(next(iter(scores.values()))), cfg.output)


if __name__ == "__main__":
    run_cli(main)
