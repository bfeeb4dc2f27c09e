"""The OOD metrics fevae reports and which way each is better (a name every layer may read)."""

from __future__ import annotations

__all__ = ["METRICS", "METRIC_DIRECTIONS", "metric_direction"]

METRICS = ("auroc", "auprc", "aupr_out", "fpr95")
#: which way each metric is better: AUROC, AUPRC (AUPR-IN: in-distribution positive) and AUPR-OUT (OOD positive,
#: ranked by the negated score: pytorch-ood's pair) higher, FPR95 (the share of OOD images accepted at the
#: threshold that keeps 95% of the in-distribution images) lower
METRIC_DIRECTIONS = {"auroc": "maximize", "auprc": "maximize", "aupr_out": "maximize", "fpr95": "minimize"}


def metric_direction(key: str | None) -> str:
    """``"maximize"`` or ``"minimize"``: the direction of the metric a name or flattened metrics.json key
    ends in (``ood_val/mnist/APO/fevae/fpr95`` → ``"minimize"``). ``None`` (no metric) → ``"maximize"``;
    any other ending is a :class:`ValueError` naming the known metrics."""
    if key is None:
        return "maximize"
    metric = str(key).rsplit("/", 1)[-1]
    if metric not in METRIC_DIRECTIONS:
        raise ValueError(f"{key!r} does not end in a known metric ({', '.join(METRICS)})")
    return METRIC_DIRECTIONS[metric]
