"""The library behind ``python -m fevae.score`` (:mod:`fevae.score`: its command line, whose docstring
says what it reads and writes)."""

from __future__ import annotations

import csv
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

import lightning as L
import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader, TensorDataset

from fevae.detectors import load_fitted
from fevae.detectors.base import STATE_FILE
from fevae.errors import FevaeError
from fevae.evaluation.driver import run_scoring
from fevae.evaluation.settings import fitted_detectors
from fevae.features.density import TorchMixture
from fevae.inputs import image_shape_of, read_images, to_model_input
from fevae.pipeline.runs import TrainedRun, load_run
from fevae.pipeline.stages import detector_models
from fevae.utils.io import INDEX_PREFIX, atomic_open, full_length_scores

log = logging.getLogger("fevae.score")

COLUMNS = ["log_p_vae_pr", "log_p_fe_pr", "log_p_fevae_pr", "log_p_vae_apo", "log_p_fe_apo", "log_p_fevae_apo"]
OTHER_COLUMNS = ["iwae", "input_complexity", "likelihood_regret", "likelihood_ratio", "jigsaw_loss"]
USAGE = "usage: python -m fevae.score run_dir=RUN_FOLDER input=IMAGES(.npy|PNG folder|IDX) output=OUT.csv"

def score_images(
    run_dir: str | Path, input_path: str | Path, overrides: list[str] = (), stream_name: str = "input", composed: DictConfig | None = None
) -> dict[str, np.ndarray]:
    """Scores of every image in ``input_path`` (input order) under the run's models; the images must
    have the run's shape (``data.image_shape``: [N,H,W] for one channel, [N,H,W,C] for colour)."""
    run = load_run(run_dir, overrides, composed)
    images = read_images(input_path, image_shape=image_shape_of(run.cfg.data))
    return score_loaded(run, images, stream_name)


@dataclass(frozen=True)
class ScoringParts:
    """What scoring reads from a run folder besides its models and mixtures, loaded once (:func:`scoring_parts`)
    and reusable by every call with the same ``eval`` settings (:class:`fevae.api.Run` keeps them per list of overrides)."""

    fitted: list  # the in-distribution-fitted detectors, their state loaded from detectors.npz
    models: dict[str, torch.nn.Module]  # the detectors' extra models (the background VAE)
    mixtures: dict[int, TorchMixture]


def scoring_parts(run: TrainedRun) -> ScoringParts:
    """:class:`ScoringParts` of ``run`` (for its config's ``eval.detectors``): detectors.npz first, validated before any
    other work (a damaged one is refused first), then the detectors' models from the run folder."""
    fitted = load_fitted_detectors(run)
    if run.missing_layers():
        log.warning("the run has no mixture for layers %s: their fevae_l<k> columns are left out", run.missing_layers())
    mixtures = {k: TorchMixture(m) for k, m in run.mixtures.items()}
    return ScoringParts(fitted, detector_models(run.cfg, run.run_dir), mixtures)


def score_loaded(run: TrainedRun, images: np.ndarray, stream_name: str = "input", parts: ScoringParts | None = None) -> dict[str, np.ndarray]:
    """Scores of validated ``images`` (:func:`fevae.inputs.validate_images`) under a loaded run.

    The one scoring path of the score CLI and of :meth:`fevae.api.Run.score`: seeds with the run's
    seed, applies its preprocessing, scores in input order. ``parts``: :func:`scoring_parts` of ``run``
    made earlier (loaded here when None).
    """
    parts = scoring_parts(run) if parts is None else parts
    L.seed_everything(run.cfg.seed, workers=True)
    x = to_model_input(images, run.cfg.data.preprocess)
    dataset = TensorDataset(x, torch.zeros(len(x), dtype=torch.long), torch.arange(len(x)))
    loader = DataLoader(dataset, batch_size=run.cfg.eval.batch_size, shuffle=False)
    scores = run_scoring(run.cfg, run.vae, run.jigsaw, parts.mixtures, {stream_name: loader}, models=parts.models).scores[stream_name]
    return {**scores, **fitted_scores(run, scores, parts.fitted)}


def load_fitted_detectors(run: TrainedRun) -> list:
    """The run's in-distribution-fitted detectors with their state loaded (and validated) from
    ``detectors.npz``; none (with a warning naming them) when the run folder has no fitted state (a run
    made before they existed)."""

    fitted = fitted_detectors(run.cfg)
    if not fitted:
        return []
    if not (run.run_dir / STATE_FILE).is_file():
        log.warning("the run has no %s: the columns of %s are left out", STATE_FILE, [d.name for d in fitted])
        return []
    load_fitted(run.run_dir / STATE_FILE, fitted)
    return fitted


def fitted_scores(run: TrainedRun, scores: dict[str, np.ndarray], fitted: list | None = None) -> dict[str, np.ndarray]:
    """The run's in-distribution-fitted detectors (``detectors.npz``, :func:`load_fitted_detectors`) applied to ``scores``."""
    fitted = load_fitted_detectors(run) if fitted is None else fitted
    return {k: v for det in fitted for k, v in det.score(scores).items()}


def output_columns(scores: Iterable[str]) -> list[str]:
    """The order of the output columns (CSV and :meth:`fevae.api.Run.score`'s DataFrame): :data:`COLUMNS`,
    the other ``log_p_*`` (extra layers) sorted, :data:`OTHER_COLUMNS`, then anything else sorted."""
    names = [c for c in scores if not c.startswith(INDEX_PREFIX)]  # a subset's image indices are not a column
    known = COLUMNS + OTHER_COLUMNS
    rest = sorted(c for c in names if c not in known)
    columns = [c for c in COLUMNS if c in names] + [c for c in rest if c.startswith("log_p_")]
    return columns + [c for c in OTHER_COLUMNS if c in names] + [c for c in rest if not c.startswith("log_p_")]


def check_output_path(path: str | Path, input_path: str | Path | None = None) -> Path:
    """Refuse an output path the CSV cannot be written to, before any work is done: not a file name, a
    folder, under a file, in a missing or unwritable folder, the input itself (``input_path``, compared
    as resolved files), or a name the folder cannot hold (too long, a read-only or virtual file
    system: a temp file of the name :func:`fevae.utils.io.atomic_open` uses is created and removed)."""
    path = Path(path)
    fix = "choose another output path, e.g. output=scores.csv"
    if str(path) in ("", "."):
        raise FevaeError(f"output={str(path)!r} is not a file name", fix)
    if path.is_dir():
        raise FevaeError(f"output={path} is an existing folder, not a file", f"name a file inside it, e.g. output={path / 'scores.csv'}")
    parent = path.parent
    for folder in (parent, *parent.parents):  # the nearest existing ancestor must be a folder
        if folder.exists():
            if not folder.is_dir():
                raise FevaeError(f"output={path}: {folder} is a file, not a folder", fix)
            break
    if not parent.exists():
        raise FevaeError(f"output={path}: folder {parent} does not exist", "create it or choose another output path")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise FevaeError(f"output={path}: folder {parent} is not writable", fix)
    if input_path is not None and _same_file(path, Path(input_path)):
        raise FevaeError(f"output={path} is the input file, which writing the CSV would overwrite", "write the scores to another file, e.g. output=scores.csv")
    _check_creatable(path)
    return path


def _same_file(a: Path, b: Path) -> bool:
    try:
        if a.exists() and b.exists():
            return os.path.samefile(a, b)
        return a.resolve() == b.resolve()
    except (OSError, RuntimeError):  # a symlink loop: atomic_open's own error names it
        return False


def _check_creatable(path: Path) -> None:
    """Create and remove a temp file named as :func:`fevae.utils.io.atomic_open` names it beside ``path``."""
    import errno
    import tempfile

    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as err:
        if err.errno == errno.ENAMETOOLONG:
            try:
                longest = os.pathconf(path.parent, "PC_NAME_MAX") - len(".XXXXXXXX.tmp") - 1
            except (OSError, ValueError):
                longest = 240
            raise FevaeError(f"output={path}: the name is {len(os.fsencode(path.name))} bytes, too long to write here "
                             f"(at most {longest}: the CSV is written through a temp file beside it)", "choose a shorter file name") from None
        raise FevaeError(f"output={path} cannot be created in {path.parent} ({err.strerror or err})",
                         "choose an output path in a writable folder, e.g. output=scores.csv") from None
    os.close(fd)
    os.unlink(tmp)


def write_csv_atomic(path: str | Path, scores: dict[str, np.ndarray]) -> None:
    path = check_output_path(path)
    columns = output_columns(scores)
    full = full_length_scores(scores)
    n = len(full[columns[0]])
    with atomic_open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(columns)
        for i in range(n):  # a detector scored on a subset of the images leaves the other cells empty
            writer.writerow(["" if np.isnan(full[c][i]) else repr(float(full[c][i])) for c in columns])


