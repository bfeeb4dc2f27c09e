"""The paper's claims C1-C5 checked on a run's metrics and scores, each with a verdict that decides only when its interval
lies strictly on one side of the threshold (report.md's first section)."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from fevae.metrics.bootstrap import Resampler, weighted_std
from fevae.metrics.ood import (
    IN_DISTRIBUTION,
    index_scores,
)

SHOWN, NOT_SHOWN, NOT_APPLICABLE, UNDECIDED = "shown", "not shown", "not applicable", "undecided"

#: C1: Nalisnick effect iff AUROC(FashionMNIST vs MNIST, PR, p_VAE) is below this (chance).
C1_AUROC_BELOW = 0.5
#: C2: PR's spread is "wider" than APO's (the paper's direction) iff std(PR)/std(APO) - 1 exceeds this.
C2_MIN_RELATIVE_SPREAD_DIFF = 0.10
#: C3: "clear separation" iff AUROC(mnist, APO, p_FEVAE) is at least this.
C3_MIN_AUROC = 0.95
#: C4: "does not separate" iff AUROC(mnist, PR, p_FEVAE) is below this.
C4_MAX_AUROC = 0.90
#: C5: "fuses" iff AUROC(mnist_saltpepper, PR, p_FEVAE) lies in this closed band around 0.5.
C5_AUROC_BAND = (0.35, 0.65)

_SCORE_NAMES = {"vae": "p_VAE", "fe": "p_FE", "fevae": "p_FEVAE", "standardised_fevae": "standardised p_FEVAE", "dose": "DoSE"}


@dataclass
class Claim:
    """One paper claim with its verdict and the evidence (markdown text) behind it."""


    id: str
    text: str
    verdict: str
    evidence: str
    rule: str = ""
    notes: list[str] = field(default_factory=list)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------
def _auroc(metrics: Mapping, ood_set: str, scheme: str, score: str) -> float | None:
    try:
        return float(metrics["ood"][ood_set][scheme][score]["auroc"])
    except (KeyError, TypeError):
        return None


def _auroc_ci(metrics: Mapping, ood_set: str, scheme: str, score: str) -> list[float] | None:
    try:
        return [float(v) for v in metrics["ood"][ood_set][scheme][score]["auroc_ci"]]
    except (KeyError, TypeError):
        return None


def _resampler(metrics: Mapping) -> Resampler | None:
    """The run's bootstrap settings (``metrics["bootstrap"]``), or None when it made no intervals."""
    boot = metrics.get("bootstrap") or {}
    if not boot.get("n_resamples"):
        return None
    return Resampler(boot["n_resamples"], boot.get("level", 0.95), boot.get("seed", 0))


def _side(value: float, interval: list[float] | None, threshold: float) -> int | None:
    """Where ``value`` lies against ``threshold``, decided by its interval: +1 when the whole interval lies
    strictly above it, -1 strictly below, None when the interval touches or straddles it (an interval whose
    end *is* the threshold decides nothing). Without an interval the value itself decides (equal: None)."""
    lo, hi = (value, value) if interval is None else (interval[0], interval[1])
    if lo > threshold:
        return 1
    if hi < threshold:
        return -1
    return None


def _below(value: float, interval: list[float] | None, threshold: float) -> bool | None:
    """``value < threshold`` decided by its interval (:func:`_side`): True/False when the interval lies strictly
    on one side, else None."""
    side = _side(value, interval, threshold)
    return None if side is None else side < 0


def _above(value: float, interval: list[float] | None, threshold: float) -> bool | None:
    """``value > threshold`` decided by its interval (:func:`_side`): True/False when the interval lies strictly
    on one side, else None (so a lower end exactly at the threshold is undecided, not shown)."""
    side = _side(value, interval, threshold)
    return None if side is None else side > 0


def _verdict(*conditions: bool | None) -> str:
    """All conditions met → shown; any clearly unmet → not shown; otherwise undecided."""
    if any(c is False for c in conditions):
        return NOT_SHOWN
    return SHOWN if all(c is True for c in conditions) else UNDECIDED


def _ci_text(interval: list[float] | None, digits: int = 3) -> str:
    return "" if interval is None else f" [{interval[0]:.{digits}f}, {interval[1]:.{digits}f}]"


def _values(scores: Mapping, set_name: str, scheme: str, score: str) -> np.ndarray | None:
    if set_name not in scores:
        return None
    name = index_scores(scores[set_name]).get((scheme, score))
    if name is None:
        return None
    v = np.asarray(scores[set_name][name], dtype=np.float64)
    v = v[np.isfinite(v)]
    return v if v.size else None


def _std(v: np.ndarray) -> float:
    return float(np.std(v, ddof=1)) if v.size > 1 else 0.0


def _iqr(v: np.ndarray) -> float:
    q1, q3 = np.percentile(v, [25, 75])
    return float(q3 - q1)


def _g(x: float | None) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "n/a"
    return f"{x:.4g}"


def _f3(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.3f}"


def _missing(what: str) -> str:
    return f"required scores/metrics absent ({what}); cannot be checked in this run"


# --------------------------------------------------------------------------------------------
# Claims
# --------------------------------------------------------------------------------------------
def _c1(metrics, scores, lik, id_set) -> Claim:
    text = "V1 (Bernoulli) under PR rates MNIST more likely than FashionMNIST (Nalisnick effect)"
    rule = (f"shown iff AUROC(FashionMNIST vs MNIST, PR, p_VAE) < {C1_AUROC_BELOW} "
            "(ID is the positive class, so AUROC < 0.5 means MNIST gets the higher likelihoods); "
            "applicable only to a Bernoulli likelihood")
    auc = _auroc(metrics, "mnist", "PR", "vae")
    v_id, v_ood = _values(scores, id_set, "PR", "vae"), _values(scores, "mnist", "PR", "vae")
    nums = f"AUROC = {_f3(auc)}"
    if v_id is not None and v_ood is not None:
        nums += (f"; median log p_VAE (PR): FashionMNIST {_g(float(np.median(v_id)))}, "
                 f"MNIST {_g(float(np.median(v_ood)))}")
    if lik != "bernoulli":
        return Claim("C1", text, NOT_APPLICABLE,
                     f"likelihood is {lik!r}, the claim is about the Bernoulli V1"
                     + (f" (for reference: {nums})" if auc is not None else ""), rule)
    if auc is None:
        return Claim("C1", text, NOT_APPLICABLE, _missing("mnist / PR / vae"), rule)
    ci = _auroc_ci(metrics, "mnist", "PR", "vae")
    nums = nums.replace(f"AUROC = {_f3(auc)}", f"AUROC = {_f3(auc)}{_ci_text(ci)}", 1)
    return Claim("C1", text, _verdict(_below(auc, ci, C1_AUROC_BELOW)), nums, rule)


def _c2(metrics, scores, lik, id_set) -> Claim:
    text = ("PR spreads the log p_VAE estimates of the in-distribution test set wider than APO (paper: PR "
            "decodes more diverse parameters, APO more homogeneous ones per test point)")
    rule = (f"shown iff std(log p_VAE, PR) / std(log p_VAE, APO) on the in-distribution test part exceeds "
            f"1 + {C2_MIN_RELATIVE_SPREAD_DIFF:.2f}, decided by the paired bootstrap interval of that signed ratio "
            "(the whole interval above: shown; below: not shown; touching or straddling: undecided); APO wider is "
            "the opposite of the claim. The IQR is reported as a robust cross-check but does not decide")
    pr, apo = _values(scores, id_set, "PR", "vae"), _values(scores, id_set, "APO", "vae")
    if pr is None or apo is None:
        return Claim("C2", text, NOT_APPLICABLE, _missing(f"{id_set} / log_p_vae_pr+apo"), rule)
    s_pr, s_apo = _std(pr), _std(apo)
    i_pr, i_apo = _iqr(pr), _iqr(apo)
    ratio = s_pr / s_apo if s_apo > 0 else (math.inf if s_pr > 0 else 1.0)
    wider = "PR" if s_pr > s_apo else ("APO" if s_apo > s_pr else "neither")
    evidence = (f"std PR = {_g(s_pr)}, std APO = {_g(s_apo)}, ratio PR/APO = "
                f"{_g(ratio)} ({wider} is wider); IQR PR = {_g(i_pr)}, IQR APO = {_g(i_apo)}")
    if lik not in ("bernoulli", "gaussian"):
        evidence += f" (likelihood {lik!r}: analogous to the paper's V1/V2)"
    interval = None
    resampler = _resampler(metrics)
    if resampler is not None and len(pr) == len(apo):  # the same images under both schemes: paired resamples


        def ratio_of(_, w):
            return weighted_std(pr, w) / np.maximum(weighted_std(apo, w), 1e-300)


        interval = resampler.statistic(pr, ratio_of, id_set, "C2")
        evidence += f"; ratio interval{_ci_text(interval)}"
    verdict = _verdict(_above(ratio, interval, 1.0 + C2_MIN_RELATIVE_SPREAD_DIFF))
    return Claim("C2", text, verdict, evidence, rule)


def _c3(metrics, scores, lik, id_set) -> Claim:
    text = "V2 (Gaussian) with p_FEVAE separates MNIST clearly, APO more than PR"
    rule = (f"shown iff AUROC(mnist, APO, p_FEVAE) > {C3_MIN_AUROC} and "
            "AUROC(mnist, APO, p_FEVAE) > AUROC(mnist, PR, p_FEVAE); applicable to a Gaussian "
            "likelihood (reported as the analogous check for a continuous Bernoulli)")
    apo, pr = _auroc(metrics, "mnist", "APO", "fevae"), _auroc(metrics, "mnist", "PR", "fevae")
    nums = f"AUROC APO = {_f3(apo)}, AUROC PR = {_f3(pr)}"
    v_apo = _auroc(metrics, "mnist", "APO", "vae")
    if v_apo is not None:
        nums += f"; p_VAE APO for comparison: {_f3(v_apo)}"
    if lik not in ("gaussian", "continuous_bernoulli"):
        return Claim("C3", text, NOT_APPLICABLE,
                     f"likelihood is {lik!r}, the claim is about the Gaussian V2"
                     + (f" (for reference: {nums})" if apo is not None else ""), rule)
    if apo is None or pr is None:
        return Claim("C3", text, NOT_APPLICABLE, _missing("mnist / PR+APO / fevae"), rule)
    ci = _auroc_ci(metrics, "mnist", "APO", "fevae")
    nums = nums.replace(f"AUROC APO = {_f3(apo)}", f"AUROC APO = {_f3(apo)}{_ci_text(ci)}", 1)
    better = apo > pr
    resampler = _resampler(metrics)
    pair = {s: {"in": _values(scores, id_set, s, "fevae"), "out": _values(scores, "mnist", s, "fevae")} for s in ("APO", "PR")}
    if resampler is not None and all(v is not None for p in pair.values() for v in p.values()):
        diff = resampler.difference(pair["APO"], pair["PR"], id_set, "mnist")
        nums += f"; APO − PR = {apo - pr:+.3f}{_ci_text(diff)} (paired)"
        better = _above(apo - pr, diff, 0.0)
    if lik == "continuous_bernoulli":
        nums += " — analogous check: the paper only ran a Gaussian V2"
    return Claim("C3", text, _verdict(_above(apo, ci, C3_MIN_AUROC), better), nums, rule)


def _c4(metrics, scores, lik, id_set) -> Claim:
    text = "V1 (Bernoulli) with p_FEVAE widens the MNIST estimates but does not separate them"
    rule = ("'widens' = std of MNIST log p_FEVAE (PR) > std of MNIST log p_VAE (PR); "
            f"'does not separate' = AUROC(mnist, PR, p_FEVAE) < {C4_MAX_AUROC}; shown iff both; "
            "applicable only to a Bernoulli likelihood")
    auc = _auroc(metrics, "mnist", "PR", "fevae")
    fe, va = _values(scores, "mnist", "PR", "fevae"), _values(scores, "mnist", "PR", "vae")
    if lik != "bernoulli":
        ref = f" (for reference: AUROC PR = {_f3(auc)})" if auc is not None else ""
        return Claim("C4", text, NOT_APPLICABLE,
                     f"likelihood is {lik!r}, the claim is about the Bernoulli V1{ref}", rule)
    if auc is None or fe is None or va is None:
        return Claim("C4", text, NOT_APPLICABLE, _missing("mnist / PR / vae+fevae"), rule)
    s_fe, s_va = _std(fe), _std(va)
    ci = _auroc_ci(metrics, "mnist", "PR", "fevae")
    resampler = _resampler(metrics)
    widens: bool | None = s_fe > s_va
    diff = None
    if resampler is not None and len(fe) == len(va):
        diff = resampler.statistic(fe, lambda _, w: weighted_std(fe, w) - weighted_std(va, w), "mnist", "C4")
        widens = _above(s_fe - s_va, diff, 0.0) if s_fe != s_va else None
    no_sep = _below(auc, ci, C4_MAX_AUROC)
    word = {True: "yes", False: "no", None: "undecided"}
    evidence = (f"std MNIST log p_FEVAE (PR) = {_g(s_fe)} vs log p_VAE (PR) = {_g(s_va)}"
                f"{'; difference interval' + _ci_text(diff, 4) if diff is not None else ''} "
                f"(widens: {word[widens]}); AUROC(mnist, PR, p_FEVAE) = {_f3(auc)}{_ci_text(ci)} "
                f"(does not separate: {word[no_sep]})")
    return Claim("C4", text, _verdict(widens, no_sep), evidence, rule)


def _c5(metrics, scores, lik, id_set) -> Claim:
    text = "salt-and-pepper MNIST fuses with FashionMNIST under V1 (p_FEVAE, PR) (App. B, Fig. 2)"
    lo, hi = C5_AUROC_BAND
    rule = (f"shown iff AUROC(mnist_saltpepper, PR, p_FEVAE) ∈ ({lo}, {hi}) (its interval strictly inside). AUROC = 0.5 means "
            "the score ranks a random FashionMNIST image above a random corrupted MNIST image "
            "exactly half the time (indistinguishable); the band allows the ranking to be off "
            f"chance by at most {hi - 0.5:.2f} either way, i.e. neither separated (high AUROC) "
            "nor inverted (low AUROC) — 'fused' histograms. Applicable only to a Bernoulli "
            "likelihood")
    auc = _auroc(metrics, "mnist_saltpepper", "PR", "fevae")
    if lik != "bernoulli":
        ref = f" (for reference: AUROC = {_f3(auc)})" if auc is not None else ""
        return Claim("C5", text, NOT_APPLICABLE,
                     f"likelihood is {lik!r}, the claim is about the Bernoulli V1{ref}", rule)
    if auc is None:
        return Claim("C5", text, NOT_APPLICABLE, _missing("mnist_saltpepper / PR / fevae"), rule)
    ci = _auroc_ci(metrics, "mnist_saltpepper", "PR", "fevae") or [auc, auc]
    if lo < ci[0] and ci[1] < hi:  # strictly inside: an end on the band's edge decides nothing
        inside, where = True, "inside"
    elif ci[1] < lo or ci[0] > hi:
        inside, where = False, "outside"
    else:
        inside, where = None, "straddling the edge of"
    return Claim("C5", text, _verdict(inside),
                 f"AUROC = {_f3(auc)}{_ci_text(_auroc_ci(metrics, 'mnist_saltpepper', 'PR', 'fevae'))} ({where} [{lo}, {hi}])", rule)


def evaluate_claims(
    metrics: Mapping[str, Any], scores: Mapping[str, Mapping[str, np.ndarray]], likelihood: str
) -> list[Claim]:
    """Verdicts for claims C1–C5 (see module constants for the rules)."""
    id_set = metrics.get("in_distribution", IN_DISTRIBUTION)
    return [f(metrics, scores, likelihood, id_set) for f in (_c1, _c2, _c3, _c4, _c5)]
