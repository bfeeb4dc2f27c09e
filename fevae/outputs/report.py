"""Markdown report of one run: settings, metrics tables, figures and the paper's claims.

Each claim of Poklukar et al. that one run can check gets a verdict — **shown**, **not shown**,
**undecided** or **not applicable** — with the numbers behind it. The decision rules and their
thresholds are the module-level constants below and are repeated verbatim in the report text.
A rule's condition counts as met (or not) only when the 95% bootstrap interval of the number it
tests lies *strictly* on one side of its threshold; an interval that straddles it, or whose end is
exactly the threshold, makes the verdict **undecided**. Comparisons of two scores on the same images use paired resamples.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fevae.metrics.ood import (
    ESS_PREFIX,
    IN_DISTRIBUTION,
    SCHEMES,
    index_scores,
    order_score_ids,
    order_sets,
    parse_score_name,
    write_text_atomic,
)
from fevae.outputs.claims import (  # noqa: F401  (re-exported: the claims' thresholds and verdicts)
    _SCORE_NAMES,
    C1_AUROC_BELOW,
    C2_MIN_RELATIVE_SPREAD_DIFF,
    C3_MIN_AUROC,
    C4_MAX_AUROC,
    C5_AUROC_BAND,
    NOT_APPLICABLE,
    NOT_SHOWN,
    SHOWN,
    UNDECIDED,
    Claim,
    _auroc,
    _auroc_ci,
    _ci_text,
    _f3,
    _g,
    evaluate_claims,
)
from fevae.outputs.plots import detector_label
from fevae.scoring.estimators import ESS_FLAG
from fevae.utils.timing import total_seconds

__all__ = [
    "SHOWN",
    "NOT_SHOWN",
    "NOT_APPLICABLE",
    "UNDECIDED",
    "C1_AUROC_BELOW",
    "C2_MIN_RELATIVE_SPREAD_DIFF",
    "C3_MIN_AUROC",
    "C4_MAX_AUROC",
    "C5_AUROC_BAND",
    "Claim",
    "evaluate_claims",
    "render_report",
    "write_report",
]

# --------------------------------------------------------------------------------------------
# Markdown
# --------------------------------------------------------------------------------------------
def _score_title(sid: str) -> str:
    return _SCORE_NAMES.get(sid, sid)


def _metrics_table(metrics: Mapping) -> list[str]:
    """Rows = OOD set × scheme (PR/APO), columns = score, cells 'AUROC / AUPRC / FPR95'."""
    ood = metrics.get("ood", {})
    sids = order_score_ids({sid for per in ood.values() for sch in ("PR", "APO")
                            for sid in per.get(sch, {})})
    if not sids:
        return ["_No PR/APO scores were evaluated._", ""]
    lines = [
        "| OOD set | scheme | " + " | ".join(_score_title(s) for s in sids) + " |",
        "|---|---|" + "---:|" * len(sids),
    ]
    for ood_set, per in ood.items():
        for scheme in ("PR", "APO"):
            block = per.get(scheme, {})
            if not block:
                continue
            cells = []
            for sid in sids:
                m = block.get(sid)
                if m is None:
                    cells.append("—")
                    continue
                auroc = f"{m['auroc']:.3f}"
                if m["auroc"] < 0.5:
                    auroc = f"**{auroc}**↓"
                cells.append(" / ".join(f"{v}{_ci_text(m.get(k + '_ci'))}" for k, v in
                                        (("auroc", auroc), ("auprc", f"{m['auprc']:.3f}"), ("fpr95", f"{m['fpr95']:.3f}"))))
            lines.append(f"| {ood_set} | {scheme} | " + " | ".join(cells) + " |")
    lines += [
        "",
        "Cells: AUROC / AUPRC / FPR95 (in-distribution = positive class; higher score = more "
        "in-distribution). AUROC 1 = perfect separation, 0.5 = chance; **bold↓** marks AUROC < 0.5, "
        "i.e. the OOD set is judged *more* likely than the in-distribution test set (Nalisnick "
        "effect). FPR95 = fraction of OOD images accepted at the threshold that accepts 95% of "
        "the in-distribution test images (lower is better). "
        + (f"[lo, hi]: {metrics['bootstrap']['level']:.0%} interval of a stratified bootstrap over the "
           f"images ({metrics['bootstrap']['n_resamples']} resamples)." if metrics.get("bootstrap") else ""),
        "",
    ]
    return lines


def _validation_table(metrics: Mapping) -> list[str]:
    """AUROC of every score on the validation parts next to the test parts (what selection may read)."""
    val, test = metrics.get("ood_val") or {}, metrics.get("ood") or {}
    if not val:
        return []
    sets = list(val)
    lines = ["| detector | " + " | ".join(f"{s} val | {s} test" for s in sets) + " |",
             "|---|" + "---:|---:|" * len(sets)]

    for scheme in SCHEMES:
        for sid in order_score_ids({sid for per in val.values() for sid in per.get(scheme, {})}):
            cells = []
            for s in sets:
                for block in (val, test):
                    m = block.get(s, {}).get(scheme, {}).get(sid)
                    cells.append(_f3(m["auroc"]) if m else "—")
            lines.append(f"| {detector_label(sid, scheme)} | " + " | ".join(cells) + " |")
    sizes = ", ".join(f"{k}: {v}" for k, v in (metrics.get("n_val") or {}).items())
    return lines + ["", f"Validation parts ({sizes}) are disjoint from the test parts; anything that selects "
                    "(optimized_metric, Optuna, a sweep's best row) reads them, reports show test.", ""]


def _mc_error_table(mc_se: Mapping[str, Mapping[str, np.ndarray]]) -> list[str]:
    """Median per-image Monte-Carlo standard error (nats) per set × scheme × score, and the share of images
    whose S weights have an effective sample size below :data:`fevae.scoring.estimators.ESS_FLAG`."""

    se = {s: {k: v for k, v in per.items() if not k.startswith(ESS_PREFIX)} for s, per in (mc_se or {}).items()}
    ess = {s: {k[len(ESS_PREFIX):]: v for k, v in per.items() if k.startswith(ESS_PREFIX)} for s, per in (mc_se or {}).items()}
    if not any(se.values()):
        return []
    keys = sorted({parse_score_name(n) for per in se.values() for n in per},
                  key=lambda k: (SCHEMES.index(k[0]), order_score_ids([k[1], "vae", "fe", "fevae"]).index(k[1])))
    sets = order_sets(se)

    def table(values: Mapping[str, Mapping[str, np.ndarray]], cell) -> list[str]:
        lines = ["| score | " + " | ".join(sets) + " |", "|---|" + "---:|" * len(sets)]
        for scheme, sid in keys:
            cells = []
            for s in sets:
                name = index_scores(values.get(s, {})).get((scheme, sid))
                cells.append(cell(np.asarray(values[s][name], dtype=np.float64)) if name is not None else "—")
            lines.append(f"| {_score_title(sid)} ({scheme}) | " + " | ".join(cells) + " |")
        return lines

    out = table(se, lambda v: _g(float(np.median(v)))) + [
        "", "Median over each test set of the per-image Monte-Carlo standard error of the log-mean-exp "
        "estimate (delta method from the S sample weights, in nats; `mcse__<score>` in scores/<set>.npz). "
        "The delta method can never give more than 1 nat, and gives exactly 1 when one of the S samples "
        "carries all the weight: there it understates the error (it cannot see how far the best of S draws "
        "is from the integral), so read it with the effective sample size below.", ""]
    if any(ess.values()):
        out += table(ess, lambda v: f"{float(np.mean(v < ESS_FLAG)):.1%}") + [
            "", f"Share of each test set's images whose S weights have an effective sample size "
            f"(Σw)²/Σw² below {ESS_FLAG:g} (`ess__<score>` in scores/<set>.npz): for these images the score "
            "is set by a handful of draws and its standard error above is not trustworthy; more samples "
            "(`eval.n_samples`) or `python -m fevae.convergence run_dir=<run>` show how far it still moves.", ""]
    return out


def _detector_table(metrics: Mapping) -> list[str]:
    """Detector (score id × scheme) × OOD-set AUROC table with each detector's cost per image."""

    ood = metrics.get("ood", {})
    sets = list(ood)
    costs = metrics.get("cost_s_per_image", {})
    subsets = metrics.get("n_scored", {})
    rows = []
    for scheme in SCHEMES:
        sids = order_score_ids({sid for per in ood.values() for sid in per.get(scheme, {})})
        rows += [(sid, scheme) for sid in sids]
    lines = [
        "| detector | worst set | conformal FPR | " + " | ".join(f"AUROC {s}" for s in sets) + " | cost per image |",
        "|---|---:|---:|" + "---:|" * (len(sets) + 1),
    ]
    for sid, scheme in rows:
        cells, aucs = [], {}
        for s in sets:
            auc = _auroc(metrics, s, scheme, sid)
            if auc is not None:
                aucs[s] = auc
            cells.append(_f3(auc) + _ci_text(_auroc_ci(metrics, s, scheme, sid)) if auc is not None else "—")
        worst = min(aucs, key=aucs.get) if aucs else None
        fpr = next((b["conformal_fpr"] for s in sets if "conformal_fpr" in (b := ood[s].get(scheme, {}).get(sid) or {})), None)
        lead = [f"{_f3(aucs[worst])} ({worst})" if worst else "—", _f3(fpr) if fpr is not None else "—"]
        cost = costs.get(scheme, {}).get(sid)
        label = detector_label(sid, scheme)
        if sid in subsets:
            label += " †"
        lines.append(f"| {label} | " + " | ".join(lead + cells) + f" | {_fmt_cost(cost)} |")
    lines.append("")
    lines.append("Worst set: the lowest AUROC over every OOD set of the run (read this first: a detector is as good as "
                 "its worst set). Conformal FPR: the share of in-distribution *test* images flagged at 5% by the "
                 "detector's conformal p-value against the in-distribution validation scores (out-of-fold for fitted "
                 "detectors); ≈ 0.05 for a detector whose threshold can be set from in-distribution images.")
    if costs:
        lines.append(
            "Cost: wall time per image of everything the detector needs (encoder, S decodes, features, "
            "mixture densities, PNG coding, encoder refits) on this run's device; the PR/APO "
            "decodes are shared, so detectors in one run cost less together than their sum."
        )
    for sid, per_set in subsets.items():
        sizes = ", ".join(f"{k}: {v}" for k, v in per_set.items())
        lines.append(f"† {sid}: scored on a seeded random subset of each set only ({sizes}; `eval.regret.subset`).")
    return lines + [""]


def _fmt_cost(seconds: float | None) -> str:
    if seconds is None:
        return "—"
    return f"{seconds * 1e3:.2f} ms" if seconds < 1 else f"{seconds:.2f} s"


def _fmt_setting(v: Any) -> str:
    if isinstance(v, Mapping):
        return ", ".join(f"{k}={_fmt_setting(x)}" for k, x in v.items()) or "—"
    if v is None or v == "":
        return "—"
    return str(v)


def _fmt_seconds(s: float) -> str:
    s = float(s)
    if s >= 3600:
        return f"{s / 3600:.2f} h"
    if s >= 60:
        return f"{s / 60:.1f} min"
    return f"{s:.1f} s"


def render_report(
    metrics: Mapping[str, Any],
    scores: Mapping[str, Mapping[str, np.ndarray]],
    info: Mapping[str, Any],
    mc_se: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> str:
    """The report as markdown text (see :func:`write_report`)."""
    experiment = info.get("experiment", "run")
    lik = str(info.get("likelihood", "unknown"))
    id_set = metrics.get("in_distribution", IN_DISTRIBUTION)
    out: list[str] = [f"# fevae report — {experiment}", ""]
    out += [
        "Reimplementation of Poklukar, Bütepage & Kragic, *Self-supervised likelihood learning "
        "for deep generative models*: VAE log-likelihoods p_VAE, feature likelihood p_FE "
        "(BGM on Jigsaw features) and their product p_FEVAE under the prior-predictive (PR) and "
        "approximate-posterior-predictive (APO) evaluation schemes.",
        "",
        "## Settings",
        "",
        "| setting | value |",
        "|---|---|",
        f"| experiment | {_fmt_setting(experiment)} |",
        f"| likelihood | {_fmt_setting(lik)} |",
        f"| preprocess | {_fmt_setting(info.get('preprocess'))} |",
        f"| samples per estimate (S) | {_fmt_setting(info.get('n_samples'))} |",
        f"| feature likelihood (FE) | {_fmt_setting(info.get('fe'))} |",
        f"| evaluation split (validation / test images per set, split seed) | {_fmt_setting(info.get('eval_split'))} |",
        f"| profile | {_fmt_setting(info.get('profile'))} |",
        f"| in-distribution set | {id_set} |",
        *([f"| OOD sets (`data.ood_sets`) | {'; '.join(f'{k}: {v}' for k, v in info['ood_sets'].items())} |"]
          if isinstance(info.get("ood_sets"), Mapping) and info["ood_sets"] else []),
        "| examples scored | "
        + (", ".join(f"{k}: {v}" for k, v in metrics.get("n", {}).items()) or "—") + " (test); "
        + (", ".join(f"{k}: {v}" for k, v in (metrics.get("n_val") or {}).items()) or "—") + " (validation) |",
        "",
    ]
    wall = info.get("wall_time_s")
    if isinstance(wall, Mapping) and wall:
        total = total_seconds(wall)
        parts = ", ".join(f"{k} {_fmt_seconds(v)}" for k, v in wall.items())
        out += [f"**Cost:** {parts} (total {_fmt_seconds(total)} wall time).", ""]

    out += ["## OOD detection metrics (test parts)", ""]
    out += ["### Every detector, worst set first: AUROC and what it costs", ""]  # a detector is as good as its worst set
    out += _detector_table(metrics)
    out += ["### Per set and scheme: AUROC / AUPRC / FPR95", ""]
    out += _metrics_table(metrics)
    if metrics.get("ood_val"):
        out += ["### Validation vs test (AUROC)", ""]
        out += _validation_table(metrics)
    if mc_se:
        out += ["### Monte-Carlo error of the estimates", ""]
        out += _mc_error_table(mc_se)

    figures = [f for f in info.get("figures", []) or [] if str(f).lower().endswith(".png")]
    if figures:
        out += ["## Figures", ""]
        for f in figures:
            rel = Path(f).as_posix()
            out += [f"![{Path(rel).stem}]({rel})", ""]
        out += [
            "Histograms are normalised per set; the x-range is clipped to each set's 0.5–99.5 "
            "percentiles (at most 3 IQR beyond its quartiles); the axis label says how many "
            "values are not shown. PDF versions sit next to the PNGs.",
            "",
        ]

    if id_set != IN_DISTRIBUTION:  # the claims are about FashionMNIST vs MNIST
        out += ["## Paper claims", "",
                f"The paper's claims C1–C5 are about FashionMNIST (in-distribution) vs MNIST; this run's "
                f"in-distribution set is {id_set}, so they are not evaluated.", ""]
        return "\n".join(out)
    claims = evaluate_claims(metrics, scores, lik)
    out += [
        "## Paper claims",
        "",
        "Each claim is checked on this run's test parts only, with the rule stated; verdicts are "
        "**shown**, **not shown**, **undecided** (the 95% bootstrap interval of a number the rule "
        "tests straddles its threshold or ends exactly on it) or **not applicable** (wrong likelihood for the claim, or the "
        "scores it needs were not computed). A 'not shown' is a result, not an error.",
        "",
        "| claim | verdict |",
        "|---|---|",
    ]
    out += [f"| {c.id}: {c.text} | **{c.verdict}** |" for c in claims]
    out.append("")
    for c in claims:
        out += [
            f"- **{c.id} — {c.verdict}.** {c.text}.",
            f"  - Numbers: {c.evidence}.",
            f"  - Rule: {c.rule}.",
        ]
    out += [
        "",
        "Thresholds (module constants in `fevae/report.py`): "
        f"C1 AUROC < {C1_AUROC_BELOW}; C2 std(PR)/std(APO) > 1 + "
        f"{C2_MIN_RELATIVE_SPREAD_DIFF:.2f}; C3 AUROC > {C3_MIN_AUROC}; C4 AUROC < {C4_MAX_AUROC}; "
        f"C5 AUROC ∈ ({C5_AUROC_BAND[0]}, {C5_AUROC_BAND[1]}); each decided by the whole interval lying strictly on one side.",
        "",
    ]
    return "\n".join(out)


def write_report(
    run_dir: str | Path,
    metrics: Mapping[str, Any],
    scores: Mapping[str, Mapping[str, np.ndarray]],
    info: Mapping[str, Any],
    mc_se: Mapping[str, Mapping[str, np.ndarray]] | None = None,
) -> Path:
    """Write ``<run_dir>/report.md`` atomically and return its path.

    ``info`` keys (all optional): ``experiment``, ``likelihood`` (bernoulli | gaussian |
    continuous_bernoulli), ``preprocess``, ``n_samples``, ``fe`` (dict: layer, n, C,
    covariance_type), ``eval_split``, ``profile``, ``ood_sets`` (set → where its images come from,
    :func:`fevae.data.evalsets.describe_ood_sets`), ``wall_time_s`` (stage → seconds) and
    ``figures`` (paths relative to ``run_dir``; the ``.png`` ones are embedded). ``mc_se``: the
    test sets' per-image Monte-Carlo standard errors (their medians are tabulated).
    """
    path = Path(run_dir) / "report.md"
    return write_text_atomic(path, render_report(metrics, scores, info, mc_se))

