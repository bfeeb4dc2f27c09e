"""The two detector interfaces, and the plain-array storage of fitted states.

* :class:`Detector` — scored in the shared model pass (:class:`fevae.evaluation.scorer.Scorer`): declares what
  it reads from it (the APO importance weights, a second trained model), may compute its own per-image
  values on each batch (timed: its cost per image), and turns them into its score columns.
* :class:`FittedDetector` — computed afterwards from a set's score columns, fitted on the
  in-distribution validation part.

Both are chosen by config (``conf/detector/<name>.yaml``, :mod:`fevae.detectors.registry`).
"""

from __future__ import annotations

import copy
import logging
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

from fevae.errors import FevaeError
from fevae.metrics.ood import parse_score_name
from fevae.utils.io import atomic_open

log = logging.getLogger(__name__)

#: file of a run folder holding every fitted detector's state (plain arrays, ``<detector>/<key>``)
STATE_FILE = "detectors.npz"


class Detector:
    """A detector scored in the shared model pass; subclasses set :attr:`name` (= its config's name).

    The driver (:class:`fevae.evaluation.scorer.Scorer`) calls, per image batch of an evaluation set,
    :meth:`batch` on the rows :meth:`rows` selects (timed as ``detector/<name>``: its own cost), keeps
    what it returns by dataset index, and at the end calls :meth:`scores` with the set's shared
    columns (the ``log_p_*`` scores and, when :attr:`uses_log_weights`, ``iwae``) and its own
    gathered values. Higher scores = more in-distribution; the columns go to metrics.json ``other``.
    """

    name: ClassVar[str] = ""
    #: reads the APO importance weights of the shared pass (the ``iwae`` column; needs APO in eval.schemes)
    uses_log_weights: ClassVar[bool] = False
    #: other trained models it needs (their names; trained, cached and stored with the run's own)
    models: ClassVar[tuple[str, ...]] = ()

    def outputs(self) -> list[str]:
        return [self.name]

    def check(self, schemes: Sequence[str]) -> None:
        """Refuse settings it cannot score with (one :class:`~fevae.errors.FevaeError`)."""
        if self.uses_log_weights and "APO" not in schemes:
            raise FevaeError(f"{self.name} reuses the APO draws, but APO is not in eval.schemes",
                             f"add APO to eval.schemes or drop {self.name} from eval.detectors")

    def bind(self, scorer: Any) -> None:
        """Called once by the driver before scoring (gives access to its models and settings)."""
        self.scorer = scorer

    def rows(self, index: Any, set_name: str) -> Any | None:
        """Boolean mask of the batch rows it scores (None: all)."""
        return None

    def batch(self, x: Any, index: Any, set_name: str) -> dict[str, Any] | None:
        """Its own per-image values ``{key: [b]}`` for the selected rows (None: it needs none)."""
        return None

    def scores(self, shared: Mapping[str, np.ndarray], own: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        raise NotImplementedError

    def cost(self, seconds: Mapping[str, float], n_images: int, n_own: int) -> float | None:
        """Seconds per image: the shared pass it reads (APO decoding and weights) plus its own time."""
        total = 0.0
        if self.uses_log_weights:
            total += (seconds.get("APO/decode", 0.0) + seconds.get("APO/log_w", 0.0)) / max(n_images, 1)
        own = seconds.get(f"detector/{self.name}", 0.0)
        if n_own:
            total += own / n_own
        elif not self.uses_log_weights:
            return None
        return total


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
                             "enable what computes them (eval.schemes, eval.detectors) or drop it from eval.detectors")
        x = np.column_stack([np.asarray(scores[c], dtype=np.float64) for c in self.needs()])
        if not np.isfinite(x).all():
            raise FevaeError(f"detector {self.name}: {what} has non-finite values in {self.needs()}", "check the run's scores")
        return x


#: folds of the cross-fitting that gives every fitted detector's in-distribution validation scores
CROSS_FIT_FOLDS = 5


class CrossFit:
    """The ``folds`` copies of a fitted detector that :func:`cross_fit` fits, each on all validation images but
    one fold's: ``fold_of[i]`` is the fold of validation image ``i``, ``copies[k]`` the copy fitted without fold
    ``k``, and ``out_of_fold`` every output column on the validation images, each image scored by the copy that
    did not see it."""

    def __init__(self, det: FittedDetector, id_val: Mapping[str, np.ndarray], folds: int = CROSS_FIT_FOLDS, seed: int = 0):
        n = max(len(v) for v in id_val.values())
        folds = max(2, min(int(folds), n // 2))
        self.fold_of = np.empty(n, dtype=np.int64)
        self.fold_of[np.random.default_rng(seed).permutation(n)] = np.arange(n) % folds
        self.copies: list[FittedDetector] = []
        self.out_of_fold: dict[str, np.ndarray] = {}
        self._held_sorted: list[dict[str, np.ndarray]] = []  # per copy: its held-out fold's scores, sorted (p_values)
        for k in range(folds):
            held = self.fold_of == k
            other = copy.deepcopy(det)
            other.fit({c: v[~held] for c, v in id_val.items() if len(v) == n})
            self.copies.append(other)
            fold_scores = other.score({c: v[held] for c, v in id_val.items() if len(v) == n})
            self._held_sorted.append({name: np.sort(np.asarray(values, np.float64)) for name, values in fold_scores.items()})
            for name, values in fold_scores.items():
                self.out_of_fold.setdefault(name, np.full(n, np.nan))[held] = values

    def p_values(self, scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Cross-conformal p-values (Vovk 2015, "Cross-conformal predictors") of every output column on the
        images of ``scores``: each image is scored by every copy, and its p-value is
        ``(1 + Σ_k #{i in fold k : copy k's score of i ≤ copy k's score of the image}) / (n + 1)``. An image is
        compared with held-out validation images *by the same fitted state*, so its p-value is calibrated
        (a fit on all n images scores new images systematically higher than the n·(k-1)/k-image fits score
        their held-out fold: a flexible density's flag then fires too rarely)."""
        counts: dict[str, np.ndarray] = {}
        for det, held_sorted in zip(self.copies, self._held_sorted):
            for name, values in det.score(scores).items():
                counts[name] = counts.get(name, 0) + np.searchsorted(held_sorted[name], np.asarray(values, np.float64), side="right")
        return {name: (1.0 + c) / (len(self.fold_of) + 1.0) for name, c in counts.items()}


def cross_fit(det: FittedDetector, id_val: Mapping[str, np.ndarray], folds: int = CROSS_FIT_FOLDS,
              seed: int = 0) -> dict[str, np.ndarray]:
    """Out-of-fold columns of ``det`` on the in-distribution validation part: the images are dealt at random
    (``seed``) into ``folds`` folds, and each fold is scored by a fresh copy of ``det`` fitted on the other
    folds, so no image is scored by a state fitted on itself (an honest ``ood_val`` AUROC needs it; conformal
    p-values use the copies themselves: :meth:`CrossFit.p_values`). ``det`` itself is left as it was.
    With fewer than ``2 · folds`` images the folds shrink to ``n // 2`` (at least 2)."""
    return CrossFit(det, id_val, folds, seed).out_of_fold


def fit_detectors(fitted: Sequence[FittedDetector], scores: Mapping[str, Mapping[str, np.ndarray]], id_val_key: str,
                  seconds: dict[str, float] | None = None, folds: int = CROSS_FIT_FOLDS,
                  p_values: dict[str, dict[str, np.ndarray]] | None = None,
                  p_value_sets: Sequence[str] | None = None) -> dict[str, dict[str, np.ndarray]]:
    """Fit each detector on ``scores[id_val_key]`` (the in-distribution validation part) and add its
    columns to every set of ``scores``; returns the new scores (the input is not modified). The
    validation part's own columns are out-of-fold (:func:`cross_fit`, ``folds`` folds; ``folds=0``: in-sample).
    ``seconds`` (when given) receives each detector's ``fit/<name>`` (cross-fitting included) and ``score/<name>`` wall time;
    ``p_values`` (when given, and ``folds`` > 0) receives per set of ``p_value_sets`` (default: every set but
    ``id_val_key``) each fitted column's cross-conformal p-values (:meth:`CrossFit.p_values`)."""
    clock = seconds if seconds is not None else {}
    if not fitted:
        return {k: dict(v) for k, v in scores.items()}
    if id_val_key not in scores:  # no validation part (data.eval_split.val=0, a legacy split): nothing to fit on
        log.warning("the fitted detectors %s are left out: they are fitted on the in-distribution validation images, and "
                    "this run has none (data.eval_split.val=0)", [d.name for d in fitted])
        return {k: dict(v) for k, v in scores.items()}
    out_of_fold: dict[str, np.ndarray] = {}
    fits: list[CrossFit] = []
    for det in fitted:
        start = time.perf_counter()
        if folds:
            fits.append(CrossFit(det, scores[id_val_key], folds))
            out_of_fold.update(fits[-1].out_of_fold)
        det.fit(scores[id_val_key])
        clock[f"fit/{det.name}"] = time.perf_counter() - start
    out = {}
    for key, cols in scores.items():
        out[key] = dict(cols)
        for det in fitted:
            start = time.perf_counter()
            out[key].update(det.score(cols))
            clock[f"score/{det.name}"] = clock.get(f"score/{det.name}", 0.0) + time.perf_counter() - start
        if p_values is not None and key != id_val_key and (p_value_sets is None or key in p_value_sets):
            for fit in fits:
                p_values.setdefault(key, {}).update(fit.p_values(cols))
    out[id_val_key].update(out_of_fold)
    return out


def fitted_costs(fitted: Sequence[FittedDetector], seconds: Mapping[str, float], n_images: int,
                 costs: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    """Seconds per image of each fitted detector's columns, laid out like ``cost_s_per_image``: its own
    scoring time per image plus, per scheme, the dearest model-pass column it reads (``costs``; the
    other-block columns count as APO: they reuse its draws), i.e. what scoring one more image with it costs.
    The one-off fit (``fit/<name>`` seconds) is not per image."""

    out: dict[str, dict[str, float]] = {}
    for det in fitted:
        own = seconds.get(f"score/{det.name}", 0.0) / max(n_images, 1)
        for name in det.outputs():
            scheme_out, sid = parse_score_name(name)
            per_scheme: dict[str, float] = {}
            for column in det.needs():
                scheme, need = parse_score_name(column)
                if scheme_out in ("PR", "APO") and scheme != scheme_out:
                    continue  # a per-scheme column reads its own scheme's scores only
                cost = costs.get(scheme, {}).get(need)
                if cost is not None:
                    key = "APO" if scheme == "other" else scheme
                    per_scheme[key] = max(per_scheme.get(key, 0.0), cost)
            out.setdefault(scheme_out, {})[sid] = sum(per_scheme.values()) + own
    return out


def save_fitted(path: str | Path, fitted: Sequence[FittedDetector]) -> None:
    """Every detector's fitted state as plain arrays in one ``.npz`` (written atomically)."""

    arrays = {f"{det.name}/{k}": np.asarray(v) for det in fitted for k, v in det.state().items()}
    with atomic_open(Path(path), "wb") as handle:
        np.savez(handle, **arrays)


#: what to do about a damaged ``detectors.npz`` (its detectors are refitted by a re-evaluation)
STATE_FIX = "re-evaluate the run (python -m fevae.evaluate run_dir=<the run>, which refits its detectors) or retrain it"


def state_array(detector: str, arrays: Mapping[str, np.ndarray], key: str, ndim: int | None = None,
                size: int | None = None) -> np.ndarray:
    """``arrays[key]`` of a stored detector state as finite float64, checked: present, a real number
    array of ``ndim`` dimensions, ``size`` long along the last one (when given); else one
    :class:`FevaeError` with :data:`STATE_FIX` (:func:`load_fitted` adds the file's name)."""
    where = f"the state of {detector}"
    if key not in arrays:
        raise FevaeError(f"{where} lacks {key!r}", STATE_FIX)
    value = np.asarray(arrays[key])
    if value.dtype.kind not in "fiu" or value.dtype.kind == "c":
        raise FevaeError(f"{where} has {key!r} of dtype {value.dtype}, not real numbers", STATE_FIX)
    if ndim is not None and value.ndim != ndim:
        raise FevaeError(f"{where} has {key!r} of shape {list(value.shape)}, not {ndim}-dimensional", STATE_FIX)
    if size is not None and (value.ndim == 0 or value.shape[-1] != size):
        raise FevaeError(f"{where} has {key!r} of shape {list(value.shape)}, expected {size} along its last axis", STATE_FIX)
    value = value.astype(np.float64)
    if not np.isfinite(value).all():
        raise FevaeError(f"{where} has {int((~np.isfinite(value)).sum())} NaN or infinite values in {key!r}", STATE_FIX)
    return value


def load_fitted(path: str | Path, fitted: Sequence[FittedDetector]) -> None:
    """Load the states :func:`save_fitted` wrote into ``fitted`` (``allow_pickle=False``), each validated
    by its detector's :meth:`FittedDetector.load_state` (keys, shapes, dtypes, finite values); a damaged
    file (truncated, not an ``.npz``, a pickle, a missing or non-finite array) is one :class:`FevaeError`
    naming it."""
    import zipfile

    path = Path(path)
    if not fitted:
        return
    if not path.is_file():
        raise FevaeError(f"{path} is missing: the run's fitted detectors cannot score new images",
                         "re-score the run with python -m fevae.evaluate, or drop them from eval.detectors")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not hasattr(archive, "files"):
                raise FevaeError(f"{path} is a single array, not the .npz archive of the fitted detectors", STATE_FIX)
            for det in fitted:
                prefix = f"{det.name}/"
                arrays = {k[len(prefix):]: archive[k] for k in archive.files if k.startswith(prefix)}
                if not arrays:
                    raise FevaeError(f"{path} has no state of the detector {det.name}", STATE_FIX)
                try:
                    det.load_state(arrays)
                except FevaeError as err:
                    raise FevaeError(f"{path}: {err.what}", STATE_FIX) from err
    except FevaeError:
        raise
    except (OSError, ValueError, EOFError, KeyError, TypeError, zipfile.BadZipFile) as err:
        # never repeat numpy's text: for a pickled array it suggests allow_pickle=True, which would run the file's code
        kind = "holds pickled objects" if "pickle" in str(err).lower() else "is truncated or not an .npz archive"
        raise FevaeError(f"{path} {kind} ({type(err).__name__}), so it is not read", STATE_FIX) from None
