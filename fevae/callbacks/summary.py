"""A Hydra callback that summarises a multirun sweep: summary.csv, summary.md and AUROC heatmaps."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
from hydra.experimental.callback import Callback
from omegaconf import DictConfig, OmegaConf

from fevae.metrics import flatten_metrics, write_text_atomic
from fevae.utils.io import atomic_open

log = logging.getLogger(__name__)

ERROR_FILE = "error.txt"
HEATMAP_SCORE = "fevae"


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
        row["wall_time_s"] = round(sum(json.loads(timings.read_text()).values()), 1) if timings.exists() else None
        metrics = job / "metrics.json"
        if metrics.exists():
            row.update(flatten_metrics(json.loads(metrics.read_text())))
        error = job / ERROR_FILE
        row["error"] = error.read_text().strip() if error.exists() else ("" if metrics.exists() else "no metrics.json (job did not finish)")
        rows.append(row)
    return rows


def write_summary(sweep_dir: Path) -> list[Path]:
    import pandas as pd

    rows = collect_jobs(sweep_dir)
    if not rows:
        return []
    frame = pd.DataFrame(rows)
    written = [sweep_dir / "summary.csv", sweep_dir / "summary.md"]
    with atomic_open(written[0], "w", newline="") as handle:
        frame.to_csv(handle, index=False)
    auroc_cols = [c for c in frame.columns if c.endswith("/auroc")]
    shown = ["job", "overrides", *[c for c in auroc_cols if c.startswith("ood/mnist/")], "wall_time_s", "error"]
    lines = [f"# Sweep summary: {sweep_dir}", "", f"{len(frame)} jobs, {int((frame['error'] != '').sum())} failed. "
             "AUROC on FashionMNIST (in-distribution) vs MNIST; every metric is in summary.csv.", ""]
    table = frame[[c for c in shown if c in frame.columns]].copy()
    table.columns = [c.replace("ood/mnist/", "").replace("/auroc", "") for c in table.columns]
    lines += [_markdown_table(table), ""]
    heatmaps = plot_heatmaps(frame, sweep_dir)
    lines += [f"![{p.stem}]({p.name})" for p in heatmaps if p.suffix == ".png"]
    write_text_atomic(written[1], "\n".join(lines) + "\n")
    return written + heatmaps


def _markdown_table(frame) -> str:
    def fmt(v: Any) -> str:
        if isinstance(v, float):
            return "" if np.isnan(v) else f"{v:.3f}"
        return str(v).replace("|", "\\|")

    header = "| " + " | ".join(frame.columns) + " |"
    rule = "|" + "---|" * len(frame.columns)
    body = ["| " + " | ".join(fmt(v) for v in row) + " |" for row in frame.itertuples(index=False)]
    return "\n".join([header, rule, *body])


def plot_heatmaps(frame, sweep_dir: Path) -> list[Path]:
    """AUROC of log p_FEVAE (MNIST) over fe.n x fe.C, one panel per experiment and scheme."""
    if not {"fe.n", "fe.C"} <= set(frame.columns):
        return []
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import seaborn as sns

    group = "+experiment" if "+experiment" in frame.columns else ("experiment" if "experiment" in frame.columns else None)
    groups = sorted(frame[group].dropna().unique()) if group else [None]
    schemes = [s for s in ("PR", "APO") if f"ood/mnist/{s}/{HEATMAP_SCORE}/auroc" in frame.columns]
    if not schemes:
        return []
    fig, axes = plt.subplots(len(groups), len(schemes), figsize=(4.5 * len(schemes), 3.6 * len(groups)), squeeze=False)
    for i, g in enumerate(groups):
        sub = frame if g is None else frame[frame[group] == g]
        for j, scheme in enumerate(schemes):
            col = f"ood/mnist/{scheme}/{HEATMAP_SCORE}/auroc"
            grid = sub.assign(n=sub["fe.n"].astype(int), C=sub["fe.C"].astype(int)).pivot_table(index="n", columns="C", values=col, aggfunc="mean")
            sns.heatmap(grid, annot=True, fmt=".3f", vmin=0.5, vmax=1.0, cmap="viridis", ax=axes[i][j], cbar=j == len(schemes) - 1)
            axes[i][j].set_title(f"{g or ''} {scheme}: AUROC log p_FEVAE (MNIST)".strip())
    fig.tight_layout()
    paths = []
    for suffix in (".png", ".pdf"):
        path = sweep_dir / f"heatmap_auroc_n_C{suffix}"
        fig.savefig(path, dpi=130)
        paths.append(path)
    plt.close(fig)
    return paths


class SweepSummary(Callback):
    """Writes ``<sweep dir>/summary.csv``, ``summary.md`` and the n x C heatmap after a multirun."""

    def on_multirun_end(self, config: DictConfig, **kwargs: Any) -> None:
        sweep_dir = Path(config.hydra.sweep.dir)
        if not sweep_dir.is_dir():
            return
        written = write_summary(sweep_dir)
        if written:
            log.info("sweep summary: %s", ", ".join(str(p) for p in written))
