"""Out-of-distribution metrics, the public ``metrics.json`` schema, and score files.

Conventions
-----------
* A *score* is a per-example log-likelihood (or any statistic where **higher = more
  in-distribution**). The in-distribution (ID) test set is the **positive class** (label 1),
  every OOD set is the negative class (label 0).
* ``scores`` everywhere is ``dict[set name, dict[score name, float64 array [N]]]`` in dataset
  order, e.g. ``scores["mnist"]["log_p_fevae_apo"]``.
* Score names ending in ``_pr`` / ``_apo`` belong to the prior-predictive (PR) / approximate
  posterior-predictive (APO) evaluation scheme (paper Eq. 1/2); everything else is an ``"other"``
  detector (``iwae``, ``input_complexity``, ...). The *score id* is the name without the
  ``log_p_`` prefix and the scheme suffix (:func:`parse_score_name`).

Public ``metrics.json`` schema (:func:`compute_metrics`; runs add the ``*_val`` mirror of the
validation parts, see :func:`compute_split_metrics`)::

    {"in_distribution": "fashionmnist",
     "n": {"fashionmnist": 2000, "mnist": 2000, ...},          # test parts
     "ood": {"mnist": {"PR":  {"vae": {"auroc": .., "auprc": .., "aupr_out": .., "fpr95": ..,
                                       "auroc_ci": [lo, hi], "auprc_ci": [..], "aupr_out_ci": [..], "fpr95_ci": [..]},
                               "fe": {..}, ..},
                       "APO": {..},
                       "other": {"iwae": {..}}},          # only present when non-empty
             "mnist_saltpepper": {..}},
     "n_scored": {"likelihood_regret": {"fashionmnist": 500, ...}},  # only for subset scores
     "n_val": {..}, "ood_val": {..}, "n_scored_val": {..},      # the same for the validation parts
     "bootstrap": {"n_resamples": 1000, "level": 0.95, "seed": ..},   # how the *_ci were made
     "conformal": {"alpha": 0.05, "calibration": "...", "n": 1000},  # each test score's conformal_fpr /
                   # conformal_tpr: ID test / OOD images flagged at 5% against the ID validation scores
     "cost_s_per_image": {"PR": {"vae": .., ..}, "APO": {..}, "other": {..}}}  # added by runs

A score array shorter than its set covers the set's *first* ``len`` examples, unless the set also holds
``index__<score>``: the dataset indices of the images it covers (``likelihood_regret``'s seeded random
subset); ``index__`` arrays are never scores. The set names are
the scores' (a run's: ``fashionmnist`` and the keys of ``data.ood_sets``), so ``ood.<set>`` /
``ood_val.<set>`` hold one entry per configured OOD set; nothing here names a set except the
display order (:func:`order_sets`) and the default in-distribution name.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from fevae.metrics.bootstrap import Resampler
from fevae.metrics.conformal import ALPHA, flagged_rates
from fevae.errors import FevaeError
from fevae.utils.parallel import usable_cores
from fevae.utils.io import ESS_PREFIX, INDEX_PREFIX, MCSE_PREFIX, load_all_scores, load_scores, save_scores, set_size, write_json_atomic, write_text_atomic  # noqa: F401  (re-exported)

__all__ = [
    "IN_DISTRIBUTION",
    "SCHEMES",
    "TPR_LEVEL",
    "ood_metrics",
    "compute_metrics",
    "compute_split_metrics",
    "check_split_scores",
    "flatten_metrics",
    "parse_score_name",
    "index_scores",
    "order_score_ids",
    "order_sets",
    "write_json_atomic",
    "write_text_atomic",
    "save_scores",
    "load_scores",
    "load_all_scores",
]

#: Default in-distribution set name.
IN_DISTRIBUTION = "fashionmnist"
#: Scheme keys in the order they appear in the schema / report.
SCHEMES = ("PR", "APO", "other")
#: TPR (fraction of ID test points accepted) at which the false-positive rate is reported.
TPR_LEVEL = 0.95

_SUFFIXES = {"_pr": "PR", "_apo": "APO"}
_PREFIX = "log_p_"
_KNOWN_SCORE_ORDER = ("vae", "fe", "fevae")
_KNOWN_SET_ORDER = ("fashionmnist", "mnist", "mnist_saltpepper")


# --------------------------------------------------------------------------------------------
# Score names
# --------------------------------------------------------------------------------------------
def parse_score_name(name: str) -> tuple[str, str]:
    """Split a score name into ``(scheme, score_id)``.

    ``"log_p_fevae_apo" -> ("APO", "fevae")``, ``"log_p_fevae_l2_pr" -> ("PR", "fevae_l2")``,
    ``"iwae" -> ("other", "iwae")``, ``"log_p_iwae" -> ("other", "iwae")``.
    """
    scheme = "other"
    stem = name
    for suffix, sch in _SUFFIXES.items():
        if name.endswith(suffix):
            scheme, stem = sch, name[: -len(suffix)]
            break
    if stem.startswith(_PREFIX):
        stem = stem[len(_PREFIX):]
    if not stem:
        raise FevaeError(
            f"score name {name!r} has no score id",
            "name scores like 'log_p_<id>_pr', 'log_p_<id>_apo' or '<id>'",
        )
    return scheme, stem


def index_scores(names) -> dict[tuple[str, str], str]:
    """Map ``(scheme, score_id) -> score name`` for ``names`` (less the ``index__<score>`` subset records);
    refuses ambiguous duplicates."""
    out: dict[tuple[str, str], str] = {}
    for name in names:
        if str(name).startswith(INDEX_PREFIX):
            continue
        key = parse_score_name(name)
        if key in out:
            raise FevaeError(
                f"score names {out[key]!r} and {name!r} both mean scheme {key[0]} / score {key[1]!r}",
                "keep only one of them in the scores",
            )
        out[key] = name
    return out


def order_score_ids(ids) -> list[str]:
    """Known scores first (vae, fe, fevae), then the rest alphabetically."""
    ids = set(ids)
    known = [s for s in _KNOWN_SCORE_ORDER if s in ids]
    return known + sorted(ids - set(known))


def order_sets(names) -> list[str]:
    """Known sets first (fashionmnist, mnist, mnist_saltpepper), then the rest alphabetically."""
    names = set(names)
    known = [s for s in _KNOWN_SET_ORDER if s in names]
    return known + sorted(names - set(known))


# --------------------------------------------------------------------------------------------
# Metrics
# --------------------------------------------------------------------------------------------
def _as_scores(x, label: str) -> np.ndarray:
    arr = np.asarray(x, dtype=np.float64)
    if arr.ndim != 1:
        raise FevaeError(
            f"{label}: expected a 1-D score array, got shape {arr.shape}",
            "store one score per example",
        )
    if arr.size == 0:
        raise FevaeError(f"{label}: score array is empty", "score at least one example per set")
    bad = int(np.count_nonzero(~np.isfinite(arr)))
    if bad:
        raise FevaeError(
            f"{label}: {bad} of {arr.size} scores are non-finite (NaN/inf); refusing to write "
            "NaN metrics",
            "check the scoring run for numerical problems (e.g. a zero-probability pixel under a "
            "Bernoulli likelihood, a singular BGM covariance) and re-score",
        )
    return arr


def ood_metrics(
    scores_in: np.ndarray,
    scores_out: np.ndarray,
    *,
    in_label: str = "in-distribution",
    out_label: str = "out-of-distribution",
) -> dict[str, float]:
    """AUROC, AUPRC (AUPR-IN), AUPR-OUT and FPR@95%TPR of a score separating ID (positive) from OOD (negative).

    ``scores_*`` are per-example scores where higher means "more in-distribution" (a
    log-likelihood). The in-distribution set is the **positive class (label 1)**:

    * ``auroc``: probability that a random ID example scores higher than a random OOD example.
      1 = perfect separation, 0.5 = chance, **< 0.5 = the OOD data looks *more* likely than the
      ID data** (the Nalisnick et al. 2018 effect, paper Fig. 1(a) top-left).
    * ``auprc``: average precision with ID as the positive class (pytorch-ood's AUPR-IN).
    * ``aupr_out``: average precision with OOD as the positive class, ranked by the negated score
      (pytorch-ood's AUPR-OUT; its chance level is the OOD share of the images, not 0.5).
    * ``fpr95``: fraction of OOD examples accepted (score ≥ threshold) at the largest threshold
      whose TPR (fraction of ID accepted) is ≥ 0.95; read directly off ``roc_curve`` (first
      index with ``tpr >= 0.95``), no interpolation. 0 is best.

    ``in_label`` / ``out_label`` only name the inputs in error messages. Non-finite scores raise
    :class:`FevaeError` (we refuse to produce NaN metrics).
    """
    s_in = _as_scores(scores_in, in_label)
    s_out = _as_scores(scores_out, out_label)
    y = np.concatenate([np.ones(s_in.size, dtype=np.int64), np.zeros(s_out.size, dtype=np.int64)])
    s = np.concatenate([s_in, s_out])
    auroc = float(roc_auc_score(y, s))
    auprc = float(average_precision_score(y, s))
    aupr_out = float(average_precision_score(1 - y, -s))
    fpr, tpr, _ = roc_curve(y, s, drop_intermediate=False)
    idx = int(np.argmax(tpr >= TPR_LEVEL - 1e-12))  # tpr ends at 1.0, so an index always exists
    return {"auroc": auroc, "auprc": auprc, "aupr_out": aupr_out, "fpr95": float(fpr[idx])}


def _metric_tasks(scores: Mapping[str, Mapping[str, np.ndarray]], in_distribution: str):
    """The sets' sizes, the empty ``{set: {scheme: {}}}`` blocks and one task per (OOD set, scheme, score)
    that :func:`compute_metrics` evaluates: ``(ood set, scheme, score id, ID column, OOD column)``."""
    if in_distribution not in scores:
        raise FevaeError(
            f"no scores for the in-distribution set {in_distribution!r} (have: {sorted(scores)})",
            "score the in-distribution test set first",
        )
    ood_sets = [s for s in order_sets(scores) if s != in_distribution]
    if not ood_sets:
        raise FevaeError(
            f"only the in-distribution set {in_distribution!r} has scores",
            "score at least one OOD set (e.g. mnist)",
        )
    n = {name: set_size(name, scores[name]) for name in order_sets(scores)}
    id_index = index_scores(scores[in_distribution])
    tasks: list[tuple[str, str, str, str, str]] = []
    blocks: dict[str, dict[str, Any]] = {ood_set: {} for ood_set in ood_sets}
    for ood_set in ood_sets:
        out_index = index_scores(scores[ood_set])
        for scheme in SCHEMES:
            ids = [sid for (sch, sid) in id_index if sch == scheme and (sch, sid) in out_index]
            if ids or scheme != "other":
                blocks[ood_set][scheme] = {}
            tasks += [(ood_set, scheme, sid, id_index[(scheme, sid)], out_index[(scheme, sid)]) for sid in order_score_ids(ids)]
    return n, blocks, tasks


def _labels(task: tuple[str, str, str, str, str], in_distribution: str) -> dict[str, str]:
    ood_set, _, _, id_name, out_name = task
    return {"in_label": f"set {in_distribution!r} score {id_name!r}", "out_label": f"set {ood_set!r} score {out_name!r}"}


def check_split_scores(test: Mapping[str, Mapping[str, np.ndarray]], val: Mapping[str, Mapping[str, np.ndarray]] | None = None,
                       in_distribution: str = IN_DISTRIBUTION) -> None:
    """Raise what :func:`compute_split_metrics` would raise on these scores (a missing set, a malformed or
    non-finite score) without computing any metric: a writer checks this before its first file."""
    for part in (test, val):
        if part or part is test:
            _, _, tasks = _metric_tasks(part, in_distribution)
            for task in tasks:
                labels = _labels(task, in_distribution)
                _as_scores(part[in_distribution][task[3]], labels["in_label"])
                _as_scores(part[task[0]][task[4]], labels["out_label"])


def compute_metrics(
    scores: Mapping[str, Mapping[str, np.ndarray]], in_distribution: str = IN_DISTRIBUTION,
    resampler: Resampler | None = None, calibration: Mapping[str, np.ndarray] | None = None,
    p_values: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """Compute the public metrics dict (see module docstring) for every OOD set and score.

    Every set other than ``in_distribution`` is treated as OOD. A score is evaluated for an OOD
    set when both the ID set and that OOD set have it. Values are plain Python floats/ints. With
    a ``resampler`` (``n_resamples`` > 0) every metric gets its bootstrap interval ``<metric>_ci``.
    With ``calibration`` (the in-distribution *validation* scores, by score name) every score it holds
    also gets ``conformal_fpr`` / ``conformal_tpr`` (:func:`fevae.metrics.conformal.flagged_rates`: the
    fractions of in-distribution test / OOD images its conformal p-value flags at 5%). A fitted detector's
    column is not calibrated by its validation scores but by its cross-conformal p-values, ``p_values[set][column]``
    (:meth:`fevae.detectors.base.CrossFit.p_values`), when given for both sets.
    """
    n, blocks, tasks = _metric_tasks(scores, in_distribution)
    bootstrap = resampler is not None and resampler.n_resamples > 0
    given = p_values or {}

    def one(task: tuple[str, str, str, str, str]) -> dict[str, float]:
        ood_set, _, _, id_name, out_name = task
        s_in, s_out = scores[in_distribution][id_name], scores[ood_set][out_name]
        values = ood_metrics(s_in, s_out, **_labels(task, in_distribution))
        if id_name in given.get(in_distribution, {}) and out_name in given.get(ood_set, {}):
            values.update(flagged_rates(None, given[in_distribution][id_name], given[ood_set][out_name]))
        elif calibration is not None and id_name in calibration:
            values.update(flagged_rates(calibration[id_name], s_in, s_out))
        if bootstrap:
            values.update(resampler.intervals(np.asarray(s_in, np.float64), np.asarray(s_out, np.float64), in_distribution, ood_set))
        return values

    if bootstrap:  # draw every set pair's resamples once, before the scores are spread over threads
        for ood_set, _, _, id_name, out_name in tasks:
            resampler.weights(len(scores[in_distribution][id_name]), len(scores[ood_set][out_name]), in_distribution, ood_set)
    # The metrics of one score are numpy work that releases the GIL: scores run side by side on threads.
    with ThreadPoolExecutor(max_workers=max(1, min(len(tasks), usable_cores()))) as pool:
        for (ood_set, scheme, sid, _, _), values in zip(tasks, pool.map(one, tasks)):
            blocks[ood_set][scheme][sid] = values
    out: dict[str, Any] = {"in_distribution": in_distribution, "n": n, "ood": blocks}
    subsets: dict[str, dict[str, int]] = {}
    for set_name in order_sets(scores):
        for name, values in scores[set_name].items():
            if len(values) < n[set_name] and not name.startswith(INDEX_PREFIX):
                subsets.setdefault(parse_score_name(name)[1], {})[set_name] = int(len(values))
    if subsets:
        out["n_scored"] = subsets  # detectors scored on the first k examples of a set only
    return out


def compute_split_metrics(
    test: Mapping[str, Mapping[str, np.ndarray]], val: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    in_distribution: str = IN_DISTRIBUTION, resampler: Resampler | None = None,
    p_values: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> dict[str, Any]:
    """:func:`compute_metrics` of the test parts, plus ``n_val`` / ``ood_val`` / ``n_scored_val``
    from the validation parts (same shape as ``n`` / ``ood`` / ``n_scored``) when ``val`` has sets.
    ``p_values``: the fitted detectors' cross-conformal p-values of the test parts (:func:`compute_metrics`)."""
    calibration = (val or {}).get(in_distribution)
    metrics = compute_metrics(test, in_distribution, resampler, calibration=calibration, p_values=p_values)
    if calibration is not None:
        metrics["conformal"] = {"alpha": ALPHA, "calibration": f"{in_distribution} validation part (fitted detectors: "
                                "cross-conformal, each image against every fold's held-out images scored by the copy fitted without them)",
                                "n": int(max((len(v) for v in calibration.values()), default=0))}
    if val:
        v = compute_metrics(val, in_distribution, resampler)
        metrics["n_val"], metrics["ood_val"] = v["n"], v["ood"]
        if "n_scored" in v:
            metrics["n_scored_val"] = v["n_scored"]
    if resampler is not None and resampler.n_resamples > 0:
        metrics["bootstrap"] = {"n_resamples": resampler.n_resamples, "level": resampler.level, "seed": resampler.seed,
                                "method": "stratified percentile bootstrap over images"}
    return metrics


def flatten_metrics(metrics: Mapping[str, Any], prefix: str = "") -> dict[str, float]:
    """Flatten numeric leaves to ``"a/b/c" -> float``, e.g. ``ood/mnist/APO/fevae/auroc``.

    Also yields ``n/<set>`` counts; string leaves (``in_distribution``) are skipped.
    """
    flat: dict[str, float] = {}
    for key, value in metrics.items():
        path = f"{prefix}/{key}" if prefix else str(key)
        if isinstance(value, Mapping):
            flat.update(flatten_metrics(value, path))
        elif isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
            flat[path] = float(value)
    return flat
