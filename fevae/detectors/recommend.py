"""Which detector to recommend: a rule fixed in advance that reads in-distribution data only.

    python -m fevae.recommend outputs/seeds_v2/0 outputs/seeds_v2/1 outputs/seeds_v2/2 --out recommend.json

The rule (issue #24; committed before any result of the detectors it ranks on any OOD set was looked at;
docs/detectors.md quotes it). Its inputs are, per run, the in-distribution *validation* scores
(``scores/val/<id>.npz``) and proxy outliers made from the run's *training* images — never a test image,
never an image of an evaluation set:

1. **Candidates**: every score column of the in-distribution validation scores that covers all its images
   (a detector scored on a subset, likelihood regret, is left out), single likelihoods and detectors alike.
2. **Calibration** (must pass on every run): its OOD flag must be settable from in-distribution images
   alone. The validation images are split at random into halves A and B (:data:`HALVINGS` times); B's images
   are flagged when their conformal p-value against A is ≤ 5% (:func:`fevae.metrics.conformal.p_values`); a
   fitted detector's p-values are cross-conformal, as a run's are (:meth:`fevae.detectors.base.CrossFit.p_values`:
   copies fitted on A without one of its folds score B and that fold). The median fraction of B flagged must
   lie in [:data:`LOW`, :data:`HIGH`]. (Until 2026-12-07 a fitted detector was re-fitted on all of A to score B
   against A's out-of-fold scores: a calibration error of that procedure, not of the detector, failed ``fused``.)
3. **Separation on proxy outliers**: :data:`N_PROXY` images per family of :data:`fevae.data.proxies.PROXIES`
   (transformations disjoint from every shipped evaluation set and corruption), each family made from its
   own seeded sample of the run's training images, are scored through the finished run (the API's
   scoring path, fitted detectors from ``detectors.npz``; likelihood regret is not scored: its cost).
   Per family and run: the AUROC of the validation images (in-distribution) against the family's images.
   A candidate's **worst-case proxy AUROC** is the lowest over families of its mean over runs.
   A candidate is **informative** when its mean proxy AUROC (over families, of the means over runs) is above the
   95th percentile of that of a detector of **pure noise** — scores independent of the image — with the same
   numbers of images (:func:`noise_reference`). (Added 2026-12-07: pure noise is calibrated, and its worst-case
   proxy AUROC, the lowest of seven chance-level numbers, is 0.487 in median with the default sizes: it tied with
   V2's pick. The condition removes only candidates no better than noise on average; it changes no pick of the
   shipped runs, V2, V1 or reversed. Reported too: whether a candidate's *worst* proxy is above noise's.)
4. The recommended detector is the **calibrated, informative candidate with the best worst-case proxy AUROC**
   (ties: the better mean over families); none such is reported as such.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from fevae.detectors.base import CrossFit, FittedDetector
from fevae.errors import FevaeError
from fevae.metrics.conformal import ALPHA, p_values
from fevae.metrics.ood import ood_metrics
from fevae.utils.io import INDEX_PREFIX, MCSE_PREFIX

LOW, HIGH = 0.035, 0.065
HALVINGS = 20
N_PROXY = 300
#: Monte-Carlo draws of the pure-noise reference (:func:`noise_reference`)
NOISE_DRAWS = 2000
#: the seed of the proxy images (the same training images and transformations for every candidate)
PROXY_SEED = 0


def candidates(id_val: Mapping[str, np.ndarray]) -> list[str]:
    """The score columns that cover every validation image (rule step 1)."""
    n = max(len(v) for v in id_val.values())
    return [c for c, v in id_val.items()
            if not c.startswith((INDEX_PREFIX, MCSE_PREFIX)) and len(v) == n and np.isfinite(v).all()]


def flagged_fractions(id_val: Mapping[str, np.ndarray], columns: Sequence[str], fitted: FittedDetector | None = None,
                      seed: int = 0, halvings: int = HALVINGS) -> dict[str, np.ndarray]:
    """Per random halving A/B of the ID validation images: the fraction of B flagged at 5% by conformal p-values
    against A, for each of ``columns`` (rule step 2). ``fitted``: the detector whose outputs the columns are, re-fitted
    on A once per halving for all of them, A's scores out-of-fold; without it, the columns are read as they are."""
    n = max(len(v) for v in id_val.values())
    missing = [c for c in columns if c not in id_val]
    if missing and fitted is None:
        raise FevaeError(f"the in-distribution validation scores have no {missing}", "score the run with that detector")
    rng = np.random.default_rng(seed)
    out: dict[str, list[float]] = {c: [] for c in columns}
    for _ in range(halvings):
        perm = rng.permutation(n)
        a, b = np.sort(perm[: n // 2]), np.sort(perm[n // 2:])
        if fitted is None:
            p = {c: p_values(id_val[c][a], id_val[c][b]) for c in columns}
        else:  # the p-values a run gives a fitted detector's test images (fevae.outputs.write): cross-conformal
            p = CrossFit(fitted, {k: v[a] for k, v in id_val.items() if len(v) == n}, seed=seed).p_values(
                {k: v[b] for k, v in id_val.items() if len(v) == n})
        for c in columns:
            out[c].append(float(np.mean(p[c] <= ALPHA)))
    return {c: np.asarray(v) for c, v in out.items()}


def flagged_fraction(id_val: Mapping[str, np.ndarray], column: str, fitted: FittedDetector | None = None, seed: int = 0,
                     halvings: int = HALVINGS) -> np.ndarray:
    """:func:`flagged_fractions` of one column."""
    return flagged_fractions(id_val, [column], fitted, seed, halvings)[column]


def eligible(row: Mapping[str, Any]) -> bool:
    """Whether a candidate's row of :func:`decide`'s table can be recommended: calibrated and informative (a row of a
    result without the noise reference, made before 2026-12-07, only needs to be calibrated)."""
    return bool(row["calibrated"] and row.get("informative", True))


def noise_reference(sizes: Sequence[tuple[int, Mapping[str, int]]], draws: int = NOISE_DRAWS, seed: int = 0) -> dict[str, float]:
    """The worst-case proxy AUROC (rule step 3) of a detector of pure noise, whose scores are independent of the image,
    with the rule's numbers of images: ``sizes`` has per run ``(validation images, {family: proxy images})``. Per draw:
    per run and family the AUROC of independent uniform scores (the validation scores shared by the run's families,
    as a candidate's are), its mean over runs; the lowest over families (``median``, ``upper_95``: its median and 95th
    percentile over draws) and the mean over families (``mean_median``, ``mean_upper_95``)."""
    rng = np.random.default_rng(seed)
    families = list(sizes[0][1])
    worst, mean = np.empty(draws), np.empty(draws)
    for d in range(draws):
        per_family = np.zeros(len(families))
        for n_val, n_proxy in sizes:
            val = np.sort(rng.random(n_val))
            for k, family in enumerate(families):  # AUROC = P(validation score > proxy score)
                per_family[k] += 1.0 - np.searchsorted(val, rng.random(n_proxy[family])).mean() / n_val
        worst[d], mean[d] = per_family.min() / len(sizes), per_family.mean() / len(sizes)
    return {"draws": draws, "median": float(np.median(worst)), "upper_95": float(np.quantile(worst, 0.95)),
            "mean_median": float(np.median(mean)), "mean_upper_95": float(np.quantile(mean, 0.95))}


def decide(runs: Sequence[Mapping[str, Any]], families: Sequence[str], halvings: int = HALVINGS) -> dict[str, Any]:
    """Rule steps 2-4 over ``runs``, each ``{"id_val": columns, "fitted": {column: unfitted detector},
    "proxies": {family: columns}}``: per common candidate its calibration per run and proxy AUROCs, the ranking
    and the recommended detector."""
    columns = [[c for c in candidates(r["id_val"]) if all(c in p for p in r["proxies"].values())] for r in runs]
    common = [c for c in columns[0] if all(c in cols for cols in columns)]
    flagged_by_run = []  # per run {column: median fraction flagged}; a fitted detector's columns from one set of refits
    for r in runs:
        groups: dict[tuple[str, Any], tuple[FittedDetector | None, list[str]]] = {}
        for column in common:
            det = r["fitted"].get(column)
            groups.setdefault(("detector", id(det)) if det is not None else ("column", column), (det, []))[1].append(column)
        flagged_by_run.append({c: float(np.median(v)) for det, cols in groups.values()
                               for c, v in flagged_fractions(r["id_val"], cols, det, halvings=halvings).items()})
    table: dict[str, dict[str, Any]] = {}
    for column in common:
        flagged, auroc = [by_run[column] for by_run in flagged_by_run], {f: [] for f in families}
        for r in runs:
            for family in families:
                auroc[family].append(ood_metrics(r["id_val"][column], r["proxies"][family][column])["auroc"])
        means = {f: float(np.mean(v)) for f, v in auroc.items()}
        table[column] = {"flagged": flagged, "calibrated": all(LOW <= m <= HIGH for m in flagged),
                         "proxy_auroc": {f: [float(x) for x in v] for f, v in auroc.items()},
                         "worst_proxy": min(means, key=means.get), "worst_proxy_auroc": min(means.values()),
                         "mean_proxy_auroc": float(np.mean(list(means.values())))}
    if common:
        noise = noise_reference([(len(r["id_val"][common[0]]), {f: len(r["proxies"][f][common[0]]) for f in families}) for r in runs])
        for row in table.values():
            row["informative"] = row["mean_proxy_auroc"] > noise["mean_upper_95"]
            row["above_noise"] = row["worst_proxy_auroc"] > noise["upper_95"]
    else:
        noise = None
    ranked = sorted((c for c, row in table.items() if eligible(row)),
                    key=lambda c: (table[c]["worst_proxy_auroc"], table[c]["mean_proxy_auroc"]), reverse=True)
    return {"rule": {"low": LOW, "high": HIGH, "alpha": ALPHA, "halvings": halvings, "proxies": list(families)},
            "candidates": table, "ranking": ranked, "recommended": ranked[0] if ranked else None, "noise": noise}


def format_table(result: Mapping[str, Any]) -> str:
    """The rule's table (markdown), candidates that can be recommended first, best worst-case proxy AUROC first."""
    def yes(row: Mapping[str, Any], key: str) -> str:
        return "" if key not in row else "yes" if row[key] else "**no**"

    rows = sorted(result["candidates"].items(), key=lambda kv: (eligible(kv[1]), kv[1]["worst_proxy_auroc"]), reverse=True)
    noise = result.get("noise")
    lines = ["| candidate | flagged at 5% (per run) | calibrated | mean proxy AUROC | informative | worst proxy (AUROC) | worst above noise |",
             "|---|---|---|---|---|---|---|"]
    for c, row in rows:
        lines.append(f"| `{c}` | {' '.join(f'{m:.3f}' for m in row['flagged'])} | {'yes' if row['calibrated'] else 'no'} | "
                     f"{row['mean_proxy_auroc']:.3f} | {yes(row, 'informative')} | {row['worst_proxy']} ({row['worst_proxy_auroc']:.3f}) | "
                     f"{yes(row, 'above_noise')} |")
    if noise:
        lines.append(f"\npure noise (scores independent of the image), {noise['draws']} draws: mean proxy AUROC 95th percentile "
                     f"{noise['mean_upper_95']:.3f} (\"informative\": above it); worst proxy AUROC median {noise['median']:.3f}, "
                     f"95th percentile {noise['upper_95']:.3f} (\"worst above noise\": above it)")
    best = result["recommended"]
    lines.append(f"\nrecommended: {'`' + best + '`' if best else 'none is calibrated and informative'}")
    if best and noise and not result["candidates"][best]["above_noise"]:
        lines.append("(its worst proxy is not above pure noise's: on that family the proxies cannot tell it from noise)")
    return "\n".join(lines)
