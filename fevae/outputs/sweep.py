"""A Hydra callback that summarises a multirun sweep: summary.csv, summary.md, AUROC heatmaps and the sweep's
TensorBoard view (:mod:`fevae.outputs.sweep_board`).

What selects reads validation only: the best row is the job with the best ``optimized_metric``
(an ``ood_val/...`` key) in that metric's direction (highest AUROC/AUPRC, lowest FPR95:
:data:`fevae.utils.metric_names.METRIC_DIRECTIONS`) and the heatmap shows that validation metric. Sweeps over ``seed`` are
aggregated (``summary_seeds.csv``): per group of jobs that differ only in their seed, every
metric's mean, standard deviation and 95% t-interval of the mean.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fevae.utils.metric_names import metric_direction
from fevae.errors import FevaeError
from fevae.metrics.ood import flatten_metrics, order_sets, write_text_atomic
from fevae.outputs.sweep_board import write_sweep_board
from fevae.utils.io import atomic_open
from fevae.utils.cli import SWEEP, one_line
from fevae.utils.log import stage
from fevae.utils.timing import total_seconds

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
HEATMAP_SCORE = "fevae"
#: the metrics.json block that selection may read (validation parts)
SELECT_PREFIX = "ood_val/"
#: per-seed aggregation: mean, sd and this two-sided t-interval of the mean
SEED_LEVEL = 0.95
#: AUROC columns shown in summary.md's seed table, per OOD set (of the default sets: :data:`HEADLINE`)
HEADLINE_BLOCKS = [(sch, sid) for sch in ("PR", "APO") for sid in ("vae", "fe", "fevae")]


def headline(metric_names) -> list[str]:
    """The seed table's AUROC rows for every OOD set among ``metric_names`` (flattened metrics.json keys):
    validation then test, sets in :func:`fevae.metrics.ood.order_sets` order (the sets follow ``data.ood_sets``)."""

    names = set(metric_names)
    sets = order_sets({m.split("/")[1] for m in names if m.startswith(("ood_val/", "ood/")) and m.count("/") == 4})
    rows = [f"{block}/{s}/{sch}/{sid}/auroc" for block in ("ood_val", "ood") for s in sets for sch, sid in HEADLINE_BLOCKS]
    return [m for m in rows if m in names]


HEADLINE = headline(f"{block}/{s}/{sch}/{sid}/auroc" for block in ("ood_val", "ood") for s in ("mnist", "mnist_saltpepper")
                    for sch, sid in HEADLINE_BLOCKS)


def headline_set(columns: Any) -> str:
    """The OOD set the job table and the heatmaps show: ``mnist`` when the jobs have it, else the first
    OOD set (:func:`fevae.metrics.ood.order_sets`) of the flattened metric columns (``ood_val/<set>/...``)."""
    sets = order_sets({c.split("/")[1] for c in columns if str(c).startswith(("ood_val/", "ood/")) and str(c).count("/") == 4})
    return "mnist" if "mnist" in sets or not sets else sets[0]


def collect_jobs(sweep_dir: Path) -> list[dict[str, Any]]:
    """One row per job folder: its overrides, flattened metrics, wall time, and error if it failed."""
    rows = []
    jobs = sorted((p for p in sweep_dir.iterdir() if p.is_dir() and p.name.isdigit()), key=lambda p: int(p.name))
    for job in jobs:
        row: dict[str, Any] = {"job": int(job.name)}
        overrides_file = job / ".hydra" / "overrides.yaml"
        overrides = OmegaConf.to_container(OmegaConf.load(overrides_file)) if overrides_file.exists() else []
        row["overrides"] = " ".join(overrides)
        for override in overrides:
            key, _, value = override.lstrip("+~").partition("=")
            row[key] = value
        timings = job / "timings.json"
        row["wall_time_s"] = round(total_seconds(json.loads(timings.read_text())), 1) if timings.exists() else None
        metrics = job / "metrics.json"
        if metrics.exists():
            row.update(flatten_metrics(json.loads(metrics.read_text())))
        error = job / ERROR_FILE
        row["error"] = error.read_text().strip() if error.exists() else ("" if metrics.exists() else "no metrics.json (job did not finish)")
        rows.append(row)
    return rows


def best_job(frame, optimized_metric: str | None) -> tuple[Any, str]:
    """The row with the best ``optimized_metric`` among finished jobs — the highest, or the lowest for a
    metric where lower is better (``fpr95``, :func:`fevae.utils.metric_names.metric_direction`) — and a sentence
    saying so. Only a validation metric (``ood_val/...``) may select; any other key selects nothing.
    """
    if not optimized_metric:
        return None, "No optimized_metric: no best job chosen."
    if not str(optimized_metric).startswith(SELECT_PREFIX):
        return None, f"optimized_metric={optimized_metric} is not a validation metric: no best job chosen (selection reads {SELECT_PREFIX}... only)."
    if optimized_metric not in frame.columns or frame[optimized_metric].isna().all():
        return None, f"No job reported {optimized_metric}: no best job chosen."
    try:
        direction = metric_direction(optimized_metric)
    except ValueError:
        return None, f"optimized_metric={optimized_metric} is not a metric: no best job chosen."
    values = frame[optimized_metric]
    row = frame.loc[values.idxmin() if direction == "minimize" else values.idxmax()]
    test_key = "ood/" + optimized_metric[len(SELECT_PREFIX):]
    test = f"; its test value {row[test_key]:.3f}" if test_key in frame.columns else ""
    better = "lower" if direction == "minimize" else "higher"
    return row, (f"Best job by {optimized_metric} (validation, {better} is better): job {int(row['job'])} ({row['overrides']}), "
                 f"{row[optimized_metric]:.3f}{test} (reported, not used to choose).")


def aggregate_seeds(frame):
    """Per group of finished jobs that differ only in ``seed``: n, mean, sd and t-interval of every metric.

    Long format: one row per (group, metric). None when the sweep does not vary ``seed``.
    """
    import pandas as pd
    from scipy import stats

    if "seed" not in frame.columns:
        return None
    done = frame[frame["error"] == ""]
    override_keys = sorted({o.lstrip("+~").partition("=")[0] for row in done["overrides"] for o in row.split()} - {"seed"})
    metrics = [c for c in done.columns if "/" in c and pd.api.types.is_numeric_dtype(done[c])] + ["wall_time_s"]
    groups = done.groupby(override_keys, dropna=False) if override_keys else [((), done)]
    rows = []
    for key, sub in groups:
        key = key if isinstance(key, tuple) else (key,)
        label = " ".join(f"{k}={v}" for k, v in zip(override_keys, key)) or "(all)"
        for metric in metrics:
            values = sub[metric].dropna().to_numpy(dtype=float)
            n = len(values)
            if not n:
                continue
            mean = float(values.mean())
            sd = float(values.std(ddof=1)) if n > 1 else float("nan")
            half = float(stats.t.ppf(0.5 + SEED_LEVEL / 2, n - 1) * sd / n**0.5) if n > 1 else float("nan")
            rows.append({"group": label, "seeds": " ".join(sorted(map(str, sub["seed"]))), "metric": metric, "n": n,
                         "mean": mean, "sd": sd, "ci_lo": mean - half, "ci_hi": mean + half})
    return pd.DataFrame(rows)


#: what a job's ``wall_time_s`` is (the sweep cost record says so)
COST_MEASURE = "each job's timed stages (timings.json: training, feature mixtures, scoring, outputs), summed"


def sweep_cost(frame) -> dict[str, Any] | None:
    """The sweep's cost against its first job (the one that trains the models the others reuse):
    ``first_job_s``, each other job's seconds, their total, and ``ratio`` = all jobs / the first job
    (a serial sweep's cost relative to one run). None when no job has timings."""
    rows = frame.sort_values("job")
    times = [None if t is None or t != t else float(t) for t in rows["wall_time_s"]] if "wall_time_s" in rows else []
    if not times or times[0] is None:
        return None
    others = {str(int(j)): t for j, t in zip(rows["job"].iloc[1:], times[1:]) if t is not None}
    total = times[0] + sum(others.values())
    return {"jobs": len(times), "jobs_timed": 1 + len(others), "first_job": int(rows["job"].iloc[0]), "first_job_s": times[0],
            "other_jobs_s": others, "other_jobs_total_s": round(sum(others.values()), 1), "total_s": round(total, 1),
            "ratio": round(total / times[0], 3) if times[0] > 0 else None, "measure": COST_MEASURE}


def write_summary(sweep_dir: Path, optimized_metric: str | None = None) -> list[Path]:
    import pandas as pd

    jobs = collect_jobs(sweep_dir)
    if not jobs:
        return []
    frame = pd.DataFrame(jobs)
    written = [sweep_dir / "summary.csv", sweep_dir / "summary.md"]
    with atomic_open(written[0], "w", newline="") as handle:
        frame.to_csv(handle, index=False)
    auroc_cols = [c for c in frame.columns if c.endswith("/auroc")]
    ood = headline_set(frame.columns)
    shown = ["job", "overrides", *[c for c in auroc_cols if c.startswith((f"ood_val/{ood}/", f"ood/{ood}/"))], "wall_time_s", "error"]
    lines = [f"# Sweep summary: {sweep_dir}", "", f"{len(frame)} jobs, {int((frame['error'] != '').sum())} failed. "
             f"AUROC of the in-distribution set vs {ood}, validation part (`val …`) and test part; "
             "every metric is in summary.csv.", ""]
    _, sentence = best_job(frame, optimized_metric)
    lines += [sentence, ""]
    cost = sweep_cost(frame)
    if cost is not None:
        path = sweep_dir / "sweep_cost.json"
        write_text_atomic(path, json.dumps(cost, indent=2) + "\n")
        written.append(path)
        others = list(cost["other_jobs_s"].values())
        lines += [f"Cost: job {cost['first_job']} took {cost['first_job_s']:.0f} s, the other {len(others)} timed jobs "
                  f"{cost['other_jobs_total_s']:.0f} s together"
                  + (f" ({min(others):.0f}–{max(others):.0f} s each)" if others else "")
                  + f": the sweep cost **{cost['ratio']:.2f}×** its first job ({COST_MEASURE}; sweep_cost.json).", ""]
    table = frame[[c for c in shown if c in frame.columns]].copy()
    table.columns = [c.replace(f"ood_val/{ood}/", "val ").replace(f"ood/{ood}/", "").replace("/auroc", "") for c in table.columns]
    lines += [_markdown_table(table), ""]
    seeds = aggregate_seeds(frame)
    if seeds is not None and len(seeds):
        path = sweep_dir / "summary_seeds.csv"
        with atomic_open(path, "w", newline="") as handle:
            seeds.to_csv(handle, index=False)
        written.append(path)
        lines += [f"## Over seeds (mean ± sd [{SEED_LEVEL:.0%} t-interval of the mean]; every metric in summary_seeds.csv)", ""]
        rows = headline(seeds["metric"])
        head = seeds[seeds["metric"].isin(rows)]
        if len(head):
            head = head.assign(value=[f"{m:.3f} ± {s:.3f} [{lo:.3f}, {hi:.3f}]" if n > 1 else f"{m:.3f}"
                                      for m, s, lo, hi, n in zip(head["mean"], head["sd"], head["ci_lo"], head["ci_hi"], head["n"])])
            table = head.pivot_table(index="metric", columns="group", values="value", aggfunc="first").reindex(
                [m for m in rows if m in set(head["metric"])])
            lines += [_markdown_table(table.reset_index()), ""]
    heatmaps = plot_heatmaps(frame, sweep_dir, heatmap_metric(optimized_metric))
    lines += [f"![{p.stem}]({p.name})" for p in heatmaps if p.suffix == ".png"]
    board = write_sweep_board(sweep_dir, jobs)
    if board is not None:
        lines += ["", f"TensorBoard view of the sweep (one run per OOD set, the job as the step): "
                      f"`tensorboard --logdir {board}`."]
    write_text_atomic(written[1], "\n".join(lines) + "\n")
    return written + heatmaps + ([board] if board is not None else [])


def _markdown_table(frame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.3f}"
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def heatmap_metric(optimized_metric: str | None) -> str:
    """The metric the n x C heatmap shows: the one ``optimized_metric`` ends in (``auroc``, ``auprc``,
    ``fpr95``), so a reader picks a cell by what selects; ``auroc`` when it names none."""
    metric = str(optimized_metric or "").rsplit("/", 1)[-1]
    try:
        metric_direction(metric)
    except ValueError:
        return "auroc"
    return metric


def plot_heatmaps(frame, sweep_dir: Path, metric: str = "auroc") -> list[Path]:
    """Validation ``metric`` (AUROC by default) of log p_FEVAE (against :func:`headline_set`: MNIST by default)
    over fe.n x fe.C, one panel per experiment and scheme (what a reader picks a cell from, so it shows
    validation, never test). The colour scale follows the metric's direction (the better, the brighter)
    and each panel's best cell is outlined."""
    if not {"fe.n", "fe.C"} <= set(frame.columns):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    group = "+experiment" if "+experiment" in frame.columns else ("experiment" if "experiment" in frame.columns else None)
    groups = sorted(frame[group].dropna().unique()) if group else [None]
    ood = headline_set(frame.columns)
    schemes = [s for s in ("PR", "APO") if f"{SELECT_PREFIX}{ood}/{s}/{HEATMAP_SCORE}/{metric}" in frame.columns]
    if not schemes:
        return []
    minimize = metric_direction(metric) == "minimize"
    better = "lower" if minimize else "higher"
    fig, axes = plt.subplots(len(groups), len(schemes), figsize=(4.5 * len(schemes), 3.6 * len(groups)), squeeze=False)
    for i, g in enumerate(groups):
        sub = frame if g is None else frame[frame[group] == g]
        for j, scheme in enumerate(schemes):
            col = f"{SELECT_PREFIX}{ood}/{scheme}/{HEATMAP_SCORE}/{metric}"
            grid = sub.assign(n=sub["fe.n"].astype(int), C=sub["fe.C"].astype(int)).pivot_table(index="n", columns="C", values=col, aggfunc="mean")
            low, high = (0.0, 1.0) if metric in ("fpr95", "aupr_out") else (0.5, 1.0)  # AUPR-OUT: chance = the OOD share
            ax = axes[i][j]
            sns.heatmap(grid, annot=True, fmt=".3f", vmin=low, vmax=high, cmap="viridis_r" if minimize else "viridis", ax=ax,
                        cbar=j == len(schemes) - 1)
            if grid.notna().to_numpy().any():
                values = grid.to_numpy(dtype=float)
                r, c = np.unravel_index(np.nanargmin(values) if minimize else np.nanargmax(values), values.shape)
                ax.add_patch(plt.Rectangle((c, r), 1, 1, fill=False, edgecolor="red", linewidth=2))
            ax.set_title(f"{g or ''} {scheme}: validation {metric.upper()} log p_FEVAE ({ood}; {better} is better)".strip(), fontsize=9)
    fig.tight_layout()
    paths = []
    for suffix in (".png", ".pdf"):
        path = sweep_dir / f"heatmap_{metric}_n_C{suffix}"
        fig.savefig(path, dpi=130)
        paths.append(path)
    plt.close(fig)
    return paths


def search_space_bounds(params: Any) -> dict[str, tuple[float, float]]:
    """``{key: (lowest, highest)}`` of the numeric sweeper parameters (``hydra.sweeper.params``: ``choice(…)``,
    ``interval(…)``, ``range(…)``, ``int(…)``/``tag(…)`` of them, or a plain value), parsed by Hydra's own override
    parser; a key whose values are not all numbers is left out."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.core.override_parser.types import ChoiceSweep, IntervalSweep, RangeSweep

    parser = OverridesParser.create()
    out = {}
    for key, spec in dict(params or {}).items():
        value = parser.parse_override(f"{key}={spec}").value()
        if isinstance(value, IntervalSweep):
            lo, hi = value.start, value.end
        elif isinstance(value, RangeSweep):
            items = list(value)
            lo, hi = (min(items), max(items)) if items else (None, None)
        elif isinstance(value, ChoiceSweep):
            items = value.list
            lo, hi = (min(items), max(items)) if items and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items) else (None, None)
        else:
            lo = hi = value if isinstance(value, (int, float)) and not isinstance(value, bool) else None
        if lo is not None:
            out[str(key)] = (float(lo), float(hi))
    return out


def check_search_space(config: DictConfig) -> None:
    """Refuse, before the first trial, a search space no trial can run with: ``fe.n`` (the images the feature
    mixture is fitted on) above the training images the run keeps (``data.train_subset``, less nothing: the
    subset is drawn after the ``val_size`` hold-out)."""
    sweeper = OmegaConf.select(config, "hydra.sweeper", default=None)
    params = OmegaConf.select(config, "hydra.sweeper.params", default=None) if sweeper is not None else None
    if not params:
        return
    bounds = search_space_bounds(OmegaConf.to_container(params, resolve=True))
    subset = OmegaConf.select(config, "data.train_subset", default=None)
    if "fe.n" in bounds and subset is not None and bounds["fe.n"][1] > int(subset):
        lo, hi = bounds["fe.n"]
        raise FevaeError(f"the search space of hydra.sweeper.params has fe.n up to {hi:g} but the run trains on "
                         f"data.train_subset={subset} images, so those trials cannot fit their mixture",
                         f"search fe.n within the data, e.g. hydra.sweeper.params.fe.n='choice({max(2, int(subset) // 4)},{max(2, int(subset) // 2)},{int(subset)})', "
                         "or use a profile with more training images (profile=cpu)")


class SweepSummary(Callback):
    """Checks the search space before the first job (:func:`check_search_space`); writes
    ``<sweep dir>/summary.csv``, ``summary.md`` and the n x C heatmap after a multirun."""

    def on_multirun_start(self, config: DictConfig, **kwargs: Any) -> None:
        SWEEP["dir"] = str(config.hydra.sweep.dir)  # for the error line of a sweep whose every trial failed
        try:
            check_search_space(config)
        except FevaeError as err:  # Hydra turns a callback's exception into a warning: leave with one line instead
            print(f"error: {one_line(str(err))}", file=sys.stderr, flush=True)
            raise SystemExit(FevaeError.exit_code) from err

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        with stage(f"sweep summary of {sweep_dir}", logger=log):
            written = write_summary(sweep_dir, config.get("optimized_metric"))
        if written:
            log.info("sweep summary: %s", ", ".join(str(p) for p in written))
