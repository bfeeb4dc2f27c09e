"""The fitted-detector interface, the registry and the plain-array storage of fitted states."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import ClassVar

import numpy as np

from fevae.errors import FevaeError

log = logging.getLogger(__name__)

#: file of a run folder holding every fitted detector's state (plain arrays, ``<detector>/<key>``)
STATE_FILE = "detectors.npz"


class FittedDetector:
    """A detector computed from a set's score columns, fitted on the in-distribution validation part.

    Subclasses set :attr:`name` (the registry key), implement :meth:`needs` (the score columns it
    reads), :meth:`fit`, :meth:`score` and :meth:`state` / :meth:`load_state` (plain float arrays).
    """

    name: ClassVar[str] = ""

    def needs(self) -> list[str]:
        raise NotImplementedError

    def outputs(self) -> list[str]:
        """The score columns it writes (one per detector by default: its name)."""
        return [self.name]

    def fit(self, id_val: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    def score(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def state(self) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def load_state(self, arrays: Mapping[str, np.ndarray]) -> None:
        raise NotImplementedError

    # ---------------------------------------------------------------- helpers
    def columns(self, scores: Mapping[str, np.ndarray], what: str) -> np.ndarray:
        """``[N, len(needs)]`` float64 of the columns :meth:`needs`, or one error naming the missing ones."""
        missing = [c for c in self.needs() if c not in scores]
        if missing:
            raise FevaeError(f"detector {self.name} needs the score columns {missing}, which {what} lacks",
                             "enable what computes them (eval.schemes, eval.detectors) or drop it from eval.fitted_detectors")
        x = np.column_stack([np.asarray(scores[c], dtype=np.float64) for c in self.needs()])
        if not np.isfinite(x).all():
            raise FevaeError(f"detector {self.name}: {what} has non-finite values in {self.needs()}", "check the run's scores")
        return x


def _registry() -> dict[str, type[FittedDetector]]:
    from fevae.detectors.dose import Dose
    from fevae.detectors.fisher import StandardisedFevae

    return {cls.name: cls for cls in (StandardisedFevae, Dose)}


FITTED_DETECTORS = ("standardised_fevae", "dose")


def build_fitted(names: Sequence[str] | None, schemes: Sequence[str] = ("PR", "APO"), detectors: Sequence[str] = ()) -> list[FittedDetector]:
    """The detectors of ``eval.fitted_detectors`` for a run scoring ``schemes`` and the model-pass
    ``detectors`` (``eval.detectors``); one error for an unknown name."""
    registry = _registry()
    out = []
    for name in list(names or []):
        if name not in registry:
            raise FevaeError(f"eval.fitted_detectors has an unknown detector {name!r}", f"choose from {list(registry)} (or [] for none)")
        out.append(registry[name].for_run(schemes, detectors))
    return out


def fit_detectors(fitted: Sequence[FittedDetector], scores: Mapping[str, Mapping[str, np.ndarray]], id_val_key: str) -> dict[str, dict[str, np.ndarray]]:
    """Fit each detector on ``scores[id_val_key]`` (the in-distribution validation part) and add its
    columns to every set of ``scores``; returns the new scores (the input is not modified)."""
    if not fitted:
        return {k: dict(v) for k, v in scores.items()}
    if id_val_key not in scores:  # no validation part (data.eval_split.val=0, a legacy split): nothing to fit on
        log.warning("eval.fitted_detectors %s are left out: they are fitted on the in-distribution validation images, and "
                    "this run has none (data.eval_split.val=0)", [d.name for d in fitted])
        return {k: dict(v) for k, v in scores.items()}
    for det in fitted:
        det.fit(scores[id_val_key])
    out = {}
    for key, cols in scores.items():
        out[key] = dict(cols)
        for det in fitted:
            out[key].update(det.score(cols))
    return out


def save_fitted(path: str | Path, fitted: Sequence[FittedDetector]) -> None:
    """Every detector's fitted state as plain arrays in one ``.npz`` (written atomically)."""
    from fevae.utils.io import atomic_open

    arrays = {f"{det.name}/{k}": np.asarray(v) for det in fitted for k, v in det.state().items()}
    with atomic_open(Path(path), "wb") as handle:
        np.savez(handle, **arrays)


def load_fitted(path: str | Path, fitted: Sequence[FittedDetector]) -> None:
    """Load the states :func:`save_fitted` wrote into ``fitted`` (``allow_pickle=False``)."""
    path = Path(path)
    if not fitted:
        return
    if not path.is_file():
        raise FevaeError(f"{path} is missing: the run's fitted detectors cannot score new images",
                         "re-score the run with python -m fevae.evaluate, or pass eval.fitted_detectors=[]")
    with np.load(path, allow_pickle=False) as archive:
        for det in fitted:
            prefix = f"{det.name}/"
            arrays = {k[len(prefix):]: archive[k] for k in archive.files if k.startswith(prefix)}
            if not arrays:
                raise FevaeError(f"{path} has no state of the detector {det.name}", "re-score the run with python -m fevae.evaluate")
            det.load_state(arrays)
