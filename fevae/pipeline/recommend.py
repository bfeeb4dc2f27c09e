"""The library behind ``python -m fevae.recommend`` (:mod:`fevae.recommend`; the rule is :mod:`fevae.detectors.recommend`):
each run's in-distribution validation scores, and its proxy outliers made from its training images and scored through it."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from hydra.utils import instantiate

from fevae.data.evalsets import id_set_name
from fevae.data.proxies import PROXIES, make_proxies
from fevae.detectors.base import FittedDetector
from fevae.detectors.recommend import HALVINGS, N_PROXY, PROXY_SEED, decide
from fevae.errors import FevaeError
from fevae.evaluation.settings import fitted_detectors
from fevae.pipeline.runs import TrainedRun, load_run, run_config
from fevae.pipeline.score import score_loaded
from fevae.utils.io import INDEX_PREFIX, MCSE_PREFIX, load_scores


def proxy_sources(run_dir: Path | str, overrides: Sequence[str] = ()) -> tuple[TrainedRun, np.ndarray, np.ndarray]:
    """``(loaded run, its training images, their indices in the training split)``: the only images proxies are made
    of. Only the in-distribution files are read, and split as in training (the hold-out of ``data.val_size`` images
    for the VAE's validation is excluded); no evaluation set is built."""
    run = load_run(run_dir, overrides)
    dm = instantiate(run.cfg.data, batch_size=1, eval_batch_size=1)
    train, given_val, _ = dm._in_distribution()
    dm._setup_train(train, given_val)
    idx = dm.train_indices.numpy()
    return run, np.asarray(train[0])[idx], idx


def proxy_scores(run_dir: Path | str, n: int = N_PROXY, seed: int = PROXY_SEED) -> dict[str, dict[str, np.ndarray]]:
    """``{family: {column: scores}}`` of one run's proxy outliers (the rule's step 3), scored through the run as the
    API scores images (fitted detectors from its ``detectors.npz``; likelihood regret left out: eval.regret.subset=0)."""
    run, images, _ = proxy_sources(run_dir, ["eval.regret.subset=0"])
    if images.ndim != 3:
        raise FevaeError(f"{run_dir} has images of shape {list(images.shape[1:])}", "the recommendation rule supports one-channel runs only")
    proxies = make_proxies(images, n, seed)
    stacked = np.concatenate(list(proxies.values()))
    scores = score_loaded(run, stacked, stream_name="proxies")
    out, start = {}, 0
    for family, imgs in proxies.items():
        out[family] = {c: np.asarray(v)[start:start + len(imgs)] for c, v in scores.items()
                       if not c.startswith((INDEX_PREFIX, MCSE_PREFIX)) and len(v) == len(stacked)}
        start += len(imgs)
    return out


def _fitted_by_column(run_dir: Path | str) -> dict[str, FittedDetector]:
    return {c: d for d in fitted_detectors(run_config(run_dir)) for c in d.outputs()}


def recommend(runs: Sequence[Path | str], id_set: str | None = None, n_proxy: int = N_PROXY, halvings: int = HALVINGS) -> dict[str, Any]:
    """The rule (:mod:`fevae.detectors.recommend`) over finished ``runs``: reads each run's ``scores/val/<id>.npz`` and
    its training images, nothing else."""
    per_run = []
    for run in map(Path, runs):
        cfg = run_config(run)
        name = id_set or id_set_name(cfg.data)
        per_run.append({"id_val": load_scores(run / "scores" / "val" / f"{name}.npz"), "fitted": _fitted_by_column(run),
                        "proxies": proxy_scores(run, n_proxy)})
    result = decide(per_run, list(PROXIES), halvings)
    result["rule"].update(n_proxy=n_proxy, proxy_seed=PROXY_SEED)
    return {**result, "runs": [str(r) for r in runs]}
