"""A run's result files: ``scores/``, ``metrics.json``, ``eval_split.json``, ``detectors.npz``, ``figures/``,
the TensorBoard dashboards and ``report.md``."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from joblib import Parallel, delayed

from fevae.data.datamodule import part_name, split_part
from fevae.detectors import fit_detectors, save_fitted
from fevae.detectors.base import STATE_FILE, fitted_costs
from fevae.metrics.bootstrap import Resampler
from fevae.metrics.ood import (
    IN_DISTRIBUTION,
    check_split_scores,
    compute_split_metrics,
    save_scores,
    write_json_atomic,
)
from fevae.outputs.dashboard import write_dashboard
from fevae.outputs.plots import figure_sets, plot_all, plot_detector_aurocs
from fevae.outputs.report import write_report
from fevae.utils.log import stage
from fevae.utils.parallel import pool_args, usable_cores

log = logging.getLogger(__name__)

def example_images(datamodule: Any, name: str | None = None, k: int = 8) -> np.ndarray | None:
    """The first ``k`` preprocessed images ``[k, H, W]`` (one channel) or ``[k, C, H, W]`` of eval set
    ``name`` (default: Fig. 2's set, :func:`fevae.outputs.plots.figure_sets`), or None when the run has no
    such set (``data.ood_sets`` without it: Fig. 2 is then not drawn)."""

    sets = getattr(datamodule, "eval_sets", {})
    if name is None:
        name = figure_sets(list(sets), getattr(datamodule, "id_name", IN_DISTRIBUTION))[1]
    if name not in sets:
        return None
    dataset = sets[name]
    x = torch.stack([dataset[i][0] for i in range(min(k, len(dataset)))])
    return (x[:, 0] if x.shape[1] == 1 else x).numpy()


def write_outputs(
    out_dir: Path,
    scores: dict[str, dict[str, np.ndarray]],
    info: dict[str, Any],
    examples: np.ndarray | None = None,
    costs: Mapping[str, Any] | None = None,
    mc_se: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    bootstrap: Mapping[str, Any] | None = None,
    split: Mapping[str, Any] | None = None,
    in_distribution: str = IN_DISTRIBUTION,
    fitted: Sequence[Any] = (),
    figures: str = "all",
) -> dict[str, Any]:
    """Write ``scores/<set>.npz`` (test parts) and ``scores/val/<set>.npz`` (validation parts), each
    with the scores' Monte-Carlo standard errors, ``metrics.json`` (with bootstrap intervals per
    ``bootstrap`` = ``eval.bootstrap``), ``eval_split.json`` (``split``: which image of each set is
    in which part, :meth:`~fevae.data.datamodule.FevaeDataModule.split_record`), ``figures/``,
    the TensorBoard dashboards (:func:`fevae.outputs.dashboard.write_dashboard`: histograms of the test parts,
    every set in one chart; the figures, a text summary and the HParams session), ``report.md``.

    ``scores`` is keyed by loader name (``"mnist"``, ``"val/mnist"``; :func:`fevae.data.datamodule.part_name`);
    ``in_distribution`` names the in-distribution set (the data module's ``id_name``). ``fitted``
    (:func:`fevae.detectors.build_fitted`) are fitted on the in-distribution set's validation part,
    add their columns to every part of every set, and store their state in ``detectors.npz``.
    ``figures`` (``eval.figures``): which figures to draw (:data:`fevae.outputs.plots.FIGURES`; ``none``: no
    ``figures/``, and report.md and the dashboards show none). Returns the metrics dict (the ``metrics.json`` contract).
    """

    p_values: dict[str, dict[str, np.ndarray]] = {}  # the fitted detectors' cross-conformal p-values, by loader name
    if fitted:
        with stage(f"in-distribution-fitted detectors {[d.name for d in fitted]}", logger=log):
            fit_seconds: dict[str, float] = {}
            scores = fit_detectors(fitted, scores, part_name(in_distribution, "val"), fit_seconds, p_values=p_values,
                                   p_value_sets=[k for k in scores if split_part(k)[1] == "test"])  # (the metrics' test parts)
        if costs and fit_seconds:  # (none when the run has no validation part to fit on)
            n_images = sum(max(len(v) for v in cols.values()) for cols in scores.values() if cols)
            extra = fitted_costs(fitted, fit_seconds, n_images, costs)
            costs = {k: {**dict(costs.get(k, {})), **extra.get(k, {})} for k in [*costs, *[k for k in extra if k not in costs]]}
    parts: dict[str, dict[str, dict[str, np.ndarray]]] = {"test": {}, "val": {}}
    for key, set_scores in scores.items():
        name, part = split_part(key)
        parts[part][name] = set_scores
    boot = dict(bootstrap or {})
    resampler = Resampler(boot.get("n_resamples", 0), boot.get("level", 0.95), int(info.get("seed") or 0))
    check_split_scores(parts["test"], parts["val"], in_distribution)  # every error the metrics would raise, before any file is written
    # The figures are drawn in a worker process (joblib's loky, the one the mixture fits started and left
    # running) while the metrics run here: matplotlib holds the GIL, so a thread would stall the metrics.
    # (`joblib.parallel_config(backend=...)` moves it: the backend is joblib's default, not fixed here.)
    # Only `all` (a histogram per score, ~10-25 s) is worth a worker; `paper`'s three figures (~3 s) take less than
    # starting one (~4 s of imports), so they are drawn here, after the metrics.
    drawing = Parallel(n_jobs=min(2, usable_cores()) if figures == "all" else 1, return_as="generator", **pool_args())(
        [delayed(plot_all)(parts["test"], out_dir / "figures", run_label=info.get("experiment", ""), examples=examples,
                           in_distribution=in_distribution, which=figures)])  # (its worker dies with this process)
    try:
        with stage(f"metrics with {resampler.n_resamples} bootstrap resamples", logger=log):
            metrics = compute_split_metrics(parts["test"], parts["val"], in_distribution=in_distribution, resampler=resampler,
                                            p_values=p_values)
        if costs:
            metrics["cost_s_per_image"] = dict(costs)
        for key, set_scores in scores.items():
            save_scores(out_dir / "scores" / f"{key}.npz", set_scores, (mc_se or {}).get(key))
        write_json_atomic(out_dir / "metrics.json", metrics)
        if fitted and part_name(in_distribution, "val") in scores:
            save_fitted(out_dir / STATE_FILE, fitted)
        if split:
            write_json_atomic(out_dir / "eval_split.json", split)
        scores = parts["test"]  # figures and the report show the test parts; metrics.json has both
        with stage("figures (drawn beside the metrics)", logger=log):
            drawn = next(drawing)
            if figures != "none":
                drawn += plot_detector_aurocs(metrics, out_dir / "figures" / "detectors_auroc", run_label=info.get("experiment", ""))
    finally:
        for _ in drawing:  # (on an error above: wait for the drawing, never leave it writing behind us)
            pass
    with stage("TensorBoard dashboards", logger=log):
        write_dashboard(out_dir, scores, metrics, info, drawn)
    info = {**info, "figures": [str(Path(p).relative_to(out_dir)) for p in drawn if str(p).endswith(".png")]}
    test_se = {k: v for k, v in (mc_se or {}).items() if split_part(k)[1] == "test"}
    write_report(out_dir, metrics, scores, info, mc_se=test_se)
    return metrics
