"""TensorBoard dashboards of a scored run: what ``tensorboard --logdir <run or sweep>`` shows.

:func:`write_dashboard` (called by :func:`fevae.outputs.write.write_outputs`) writes, under
``<run>/tensorboard/`` next to the trainings' ``vae/`` and ``jigsaw/`` runs:

* ``eval/`` — one histogram per score × scheme (tags ``PR/log_p_fevae``, ``APO/log_p_vae``, …) and
  per other detector (``other/iwae``, …) with **every evaluation set in one chart**: step k is the
  k-th set (step 0 the in-distribution test set, then the OOD sets in
  :func:`fevae.metrics.ood.order_sets` order), so the Histograms page (OFFSET: one ridge per set,
  OVERLAY: one line per set) shows ID and OOD on one axis. The chart's title names the steps.
  TensorBoard draws one chart per (run, tag): runs cannot be overlaid in a histogram chart, steps
  can.
* ``eval/<set>/`` — the same tags for one set each (step 0), with the same bins: the sets side by
  side, each named and coloured by its run.
* ``summary/`` — the figures (``figures/<name>``: Fig. 1(a), 1(b), 2, the detector AUROCs and every
  other histogram figure, as images), the text summary (``summary/overview``: settings, metrics,
  detectors with their costs, validation vs test, wall time, the feature mixtures' fit;
  ``summary/ranges``: each histogram's range and how many values it leaves out), and the HParams session: the run's settings and overrides
  (:func:`hparams_of`) with every validation and test AUROC as metrics.

Histograms show the **test** parts (as the figures and report.md do); the validation parts'
AUROCs are in the HParams view and the text summary. Bins: :data:`HIST_BINS` equal bins over a
range shared by all sets of a tag: the figures' rule (:func:`fevae.outputs.plots._clip_range`: the union
over sets of each set's 0.5–99.5 percentiles, at most 3 IQR beyond its quartiles), widened by
:data:`RANGE_PAD` of its width on each side. Values outside the range (heavy tails, e.g. log p_FE
down to −5,000 with the mass near 0) are left out of the chart and counted: the chart's title
says how many per set, ``summary/ranges`` lists them all.

No metric is written as a one-point scalar chart, except the HParams metrics, which TensorBoard
reads from scalars: they are under :data:`HPARAMS_PREFIX` (``z_final/ood_val/mnist/APO/fevae/auroc``,
the ``metrics.json`` key behind it), which sorts after the training curves (``epoch``, ``train/``,
``val/``), so the Scalars page opens on those.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from fevae.metrics.ood import IN_DISTRIBUTION, INDEX_PREFIX, flatten_metrics, order_score_ids, order_sets, parse_score_name
from fevae.features.mixture import MixtureArrays
from fevae.outputs.plots import _clip_range
from fevae.outputs.report import _detector_table, _fmt_seconds, _fmt_setting, _metrics_table, _validation_table

__all__ = ["HIST_BINS", "RANGE_PAD", "HPARAMS_PREFIX", "EVAL_RUN", "SUMMARY_RUN", "TEXT_OVERVIEW", "TEXT_RANGES", "histogram_tag", "robust_range",
           "binned", "hparams_of", "job_overrides", "write_dashboard"]

#: equal-width bins of every evaluation histogram (shared by all sets of a tag)
HIST_BINS = 60
#: the shared range is widened by this fraction of its width on each side
RANGE_PAD = 0.02
#: prefix of the scalars behind the HParams metrics (sorts after ``train/`` and ``val/``)
HPARAMS_PREFIX = "z_final"
#: run (folder under ``tensorboard/``) of the all-sets histograms; ``<EVAL_RUN>/<set>`` holds one set each
EVAL_RUN = "eval"
#: run of the figures, the text summary and the HParams session
SUMMARY_RUN = "summary"
#: the text summary's tags (TensorBoard shows them as ``<tag>/text_summary``, in this order)
TEXT_OVERVIEW, TEXT_RANGES = "summary/overview", "summary/ranges"


# ------------------------------------------------------------------------------------------ histograms
def histogram_tag(score_name: str) -> str:
    """``log_p_fevae_apo`` -> ``APO/log_p_fevae``; ``iwae`` -> ``other/iwae``."""
    scheme, sid = parse_score_name(score_name)
    return f"other/{sid}" if scheme == "other" else f"{scheme}/log_p_{sid}"


def robust_range(values: Sequence[np.ndarray], pad: float = RANGE_PAD) -> tuple[float, float]:
    """The range shared by every set of one score: :func:`fevae.outputs.plots._clip_range` of the finite
    values (union over sets of [p0.5, p99.5] ∩ [q1 − 3 IQR, q3 + 3 IQR]), widened by ``pad`` of its
    width on each side. ``(-0.5, 0.5)`` when no value is finite."""

    finite = [v[np.isfinite(v)] for v in (np.asarray(x, dtype=np.float64).ravel() for x in values)]
    finite = [v for v in finite if v.size]
    if not finite:
        return -0.5, 0.5
    lo, hi = _clip_range(finite)
    width = hi - lo
    return float(lo - pad * width), float(hi + pad * width)


def binned(values: np.ndarray, lo: float, hi: float, bins: int = HIST_BINS) -> tuple[np.ndarray, np.ndarray, int]:
    """``(edges, counts, n_outside)``: counts of ``values`` in ``bins`` equal bins over [lo, hi]; values
    outside [lo, hi] (and non-finite ones) are left out and counted in ``n_outside``."""
    v = np.asarray(values, dtype=np.float64).ravel()
    edges = np.linspace(lo, hi, bins + 1)
    inside = v[np.isfinite(v) & (v >= lo) & (v <= hi)]
    counts, _ = np.histogram(inside, bins=edges)
    return edges, counts, int(v.size - inside.size)


def histogram_summary(tag: str, edges: np.ndarray, counts: np.ndarray, display_name: str, description: str):
    """A histogram summary with exactly these buckets (TensorBoard drops nothing, so every set of
    a tag has the same bins; ``add_histogram`` would trim empty end buckets per set)."""
    from tensorboard.compat.proto.summary_pb2 import Summary
    from tensorboard.plugins.histogram import metadata
    from tensorboard.util import tensor_util

    buckets = np.stack([edges[:-1], edges[1:], counts.astype(np.float64)], axis=1)
    meta = metadata.create_summary_metadata(display_name=display_name, description=description)
    return Summary(value=[Summary.Value(tag=tag, metadata=meta, tensor=tensor_util.make_tensor_proto(buckets))])


def set_dir(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def histogram_table(scores: Mapping[str, Mapping[str, np.ndarray]], in_distribution: str) -> list[dict[str, Any]]:
    """One row per histogram tag (PR, APO, then other; known scores first): ``tag``, ``score`` (its name in
    the scores), ``sets`` (those that have it), ``step`` (set -> its step: its position among all sets, the
    in-distribution set first), ``lo``, ``hi`` and ``per_set`` (set -> ``edges``, ``counts``, ``n``,
    ``outside``)."""
    sets = order_sets(scores)
    if in_distribution in sets:
        sets = [in_distribution] + [s for s in sets if s != in_distribution]
    names: dict[str, str] = {}  # tag -> score name
    for s in sets:
        for name in scores[s]:
            if not name.startswith(INDEX_PREFIX):  # a subset detector's image indices are not a score
                names.setdefault(histogram_tag(name), name)
    keys = {tag: parse_score_name(name) for tag, name in names.items()}
    ids = order_score_ids({sid for _, sid in keys.values()})
    schemes = ("PR", "APO", "other")
    rows = []
    for tag in sorted(names, key=lambda t: (schemes.index(keys[t][0]) if keys[t][0] in schemes else len(schemes), ids.index(keys[t][1]))):
        name = names[tag]
        present = [s for s in sets if name in scores[s]]
        lo, hi = robust_range([scores[s][name] for s in present])
        row: dict[str, Any] = {"tag": tag, "score": name, "sets": present, "step": {s: sets.index(s) for s in present},
                               "lo": lo, "hi": hi, "per_set": {}}
        for s in present:
            edges, counts, outside = binned(scores[s][name], lo, hi)
            row["per_set"][s] = {"edges": edges, "counts": counts, "n": int(np.size(scores[s][name])), "outside": outside}
        rows.append(row)
    return rows


def _write_histograms(tb_dir: Path, rows: Sequence[Mapping[str, Any]], in_distribution: str) -> None:
    from torch.utils.tensorboard import SummaryWriter

    sets = [s for s in dict.fromkeys(s for row in rows for s in row["sets"])]
    all_sets = SummaryWriter(log_dir=str(tb_dir / EVAL_RUN))
    one_set = {s: SummaryWriter(log_dir=str(tb_dir / EVAL_RUN / set_dir(s))) for s in sets}
    try:
        for row in rows:
            rng = f"[{row['lo']:.4g}, {row['hi']:.4g}]"
            steps = " · ".join(f"{row['step'][s]} {s}{' (ID)' if s == in_distribution else ''}" for s in row["sets"])
            outside = ", ".join(f"{s} {row['per_set'][s]['outside']}" for s in row["sets"])
            description = (f"`{row['score']}` of the test part of each set, {HIST_BINS} bins over {rng} (shared by all sets: "
                           f"union of each set's 0.5–99.5 percentiles, ≤3 IQR beyond its quartiles, widened {RANGE_PAD:.0%}). "
                           f"Values outside the range are left out: {outside}.")
            for s in row["sets"]:
                b = row["per_set"][s]
                all_sets.file_writer.add_summary(histogram_summary(
                    row["tag"], b["edges"], b["counts"], f"{row['tag']} — step {steps}", description), global_step=row["step"][s])
                one_set[s].file_writer.add_summary(histogram_summary(
                    row["tag"], b["edges"], b["counts"],
                    f"{row['tag']} — {s} (n={b['n']}, {b['outside']} outside {rng})", description), global_step=0)
    finally:
        all_sets.close()
        for w in one_set.values():
            w.close()


# ------------------------------------------------------------------------------------------ hparams
def hparams_of(info: Mapping[str, Any]) -> dict[str, Any]:
    """The settings shown in TensorBoard's HParams view (scalars and strings only)."""
    hp = {k: info.get(k) for k in ("experiment", "likelihood", "preprocess", "n_samples", "eval_split", "profile", "seed")}
    hp.update({f"fe.{k}": v for k, v in dict(info.get("fe") or {}).items() if k != "feature_batch_size"})
    return {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hp.items()}


def job_overrides(info: Mapping[str, Any]) -> list[str]:
    """The command line's overrides of this run or sweep job: ``info["overrides"]`` when given (the
    evaluate task), else the current Hydra job's (``hydra.overrides.task``), else none."""
    if info.get("overrides") is not None:
        return [str(o) for o in info["overrides"]]
    try:
        from hydra.core.hydra_config import HydraConfig

        return [str(o) for o in HydraConfig.get().overrides.task]
    except Exception:  # not inside a Hydra job (the Python API, a test)
        return []


def session_hparams(info: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`hparams_of` plus ``overrides`` (all of them, one string) and one column per overridden
    key that :func:`hparams_of` does not already show (``data.eval_split.val``, ``eval.n_samples``…)."""
    hp = hparams_of(info)
    overrides = job_overrides(info)
    hp["overrides"] = " ".join(overrides) or "(none)"
    for o in overrides:
        key, sep, value = o.lstrip("+~").partition("=")
        if sep and key not in hp and key != "experiment":
            hp[key] = value
    return hp


def hparams_metrics(metrics: Mapping[str, Any]) -> dict[str, float]:
    """Every validation and test AUROC of ``metrics`` as ``{HPARAMS_PREFIX/<metrics.json key>: value}``."""
    flat = flatten_metrics({k: metrics[k] for k in ("ood_val", "ood") if k in metrics})
    return {f"{HPARAMS_PREFIX}/{k}": v for k, v in flat.items() if k.endswith("/auroc")}


# ------------------------------------------------------------------------------------------ summary
def summary_markdown(metrics: Mapping[str, Any], info: Mapping[str, Any], out_dir: Path | None = None) -> str:
    """The run's text summary: settings, the metrics table, detectors with AUROC and cost, validation
    vs test, wall time (the tables of report.md; the claims and figures are in report.md), and the
    feature mixtures' fit when ``out_dir`` has them."""

    overrides = job_overrides(info)
    out = [f"## fevae — {info.get('experiment', 'run')}", "",
           "| setting | value |", "|---|---|",
           *[f"| {k} | {_fmt_setting(v)} |" for k, v in (
               ("likelihood", info.get("likelihood")), ("preprocess", info.get("preprocess")),
               ("samples per estimate (S)", info.get("n_samples")), ("feature likelihood (FE)", info.get("fe")),
               ("evaluation split", info.get("eval_split")), ("profile", info.get("profile")), ("seed", info.get("seed")),
               ("overrides", " ".join(f"`{o}`" for o in overrides) or None),
               ("in-distribution set", metrics.get("in_distribution")),
               ("examples scored (test)", metrics.get("n")), ("examples scored (validation)", metrics.get("n_val")))], ""]
    out += ["### OOD detection metrics (test parts): every detector, worst set first", "", *_detector_table(metrics)]
    out += ["### Per set and scheme: AUROC / AUPRC / FPR95 (test parts)", "", *_metrics_table(metrics)]
    if metrics.get("ood_val"):
        out += ["### Validation vs test (AUROC)", "", *_validation_table(metrics)]
    wall = info.get("wall_time_s")
    if isinstance(wall, Mapping) and wall:
        out += ["### Wall time", "", "| stage | time |", "|---|---:|",
                *[f"| {k} | {_fmt_seconds(v)} |" for k, v in wall.items()], ""]
    if out_dir is not None:
        out += mixtures_markdown(out_dir)
    out += ["Claims C1–C5 with their verdicts: `report.md` in the run folder.", ""]
    return "\n".join(out)


def mixtures_markdown(out_dir: Path) -> list[str]:
    """The feature mixtures' fit (``mixture*.npz`` in ``out_dir``: C, d, convergence, …) as a table."""

    rows = []
    for path in sorted(Path(out_dir).glob("mixture*.npz")):
        try:
            summary = MixtureArrays.load(path).summary()
        except Exception:  # not a mixture of this version: leave it out of the summary
            continue
        rows.append((path.name, summary))
    if not rows:
        return []
    keys = list(rows[0][1])
    return ["### Feature mixtures (p_FE)", "", "| file | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys),
            *[f"| {name} | " + " | ".join(f"{v:.6g}" if isinstance(v, float) else str(v) for v in summary.values()) + " |"
              for name, summary in rows], ""]


def ranges_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """Every histogram's shared range and how many values of each set it leaves out (a markdown table)."""
    steps = {s: k for row in rows for s, k in row["step"].items()}
    sets = sorted(steps, key=steps.get)
    lines = ["Each histogram's range (shared by all sets; values outside it are left out of the charts) and how many "
             "values of each set fall outside it. Step k of the `eval` run's charts is the set in column `step k`.", "",
             "| tag | range | " + " | ".join(f"step {steps[s]}: {s}" for s in sets) + " |",
             "|---|---|" + "---:|" * len(sets)]
    for row in rows:
        cells = [f"{row['per_set'][s]['outside']} of {row['per_set'][s]['n']}" if s in row["per_set"] else "—" for s in sets]
        lines.append(f"| {row['tag']} | [{row['lo']:.4g}, {row['hi']:.4g}] | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _figure_tag(path: Path) -> str:
    return f"figures/{path.stem}"


def _write_summary(tb_dir: Path, metrics: Mapping[str, Any], info: Mapping[str, Any], figures: Sequence[Path],
                   rows: Sequence[Mapping[str, Any]]) -> None:
    from matplotlib.image import imread
    from torch.utils.tensorboard import SummaryWriter
    from torch.utils.tensorboard.summary import hparams

    writer = SummaryWriter(log_dir=str(tb_dir / SUMMARY_RUN))
    try:
        for path in figures:  # the PNGs plot_all wrote: the same pixels as figures/
            image = imread(str(path))
            if image.dtype != np.uint8:
                image = (np.clip(image, 0.0, 1.0) * 255).round().astype(np.uint8)
            writer.add_image(_figure_tag(path), image[..., :3], global_step=0, dataformats="HWC")
        writer.add_text(TEXT_OVERVIEW, summary_markdown(metrics, info, tb_dir.parent), global_step=0)
        if rows:
            writer.add_text(TEXT_RANGES, ranges_markdown(rows), global_step=0)
        # The HParams view: one session (row) per run / sweep job. Only its start and end are written, no
        # experiment summary, so TensorBoard takes the columns from every session of the logdir: jobs of a
        # sweep with different overrides or OOD sets all show theirs.
        _, ssi, sei = hparams(session_hparams(info), {})
        writer.file_writer.add_summary(ssi)
        for tag, value in hparams_metrics(metrics).items():
            writer.add_scalar(tag, value, global_step=0)
        writer.file_writer.add_summary(sei)
    finally:
        writer.close()


def _clear(run_dir: Path) -> None:
    """Remove what an earlier write left in ``run_dir`` (a resumed run, an evaluation written twice)."""
    if run_dir.is_dir():
        shutil.rmtree(run_dir)


def write_dashboard(
    out_dir: str | Path,
    scores: Mapping[str, Mapping[str, np.ndarray]],
    metrics: Mapping[str, Any],
    info: Mapping[str, Any],
    figures: Sequence[str | Path] = (),
) -> Path:
    """Write the run's evaluation dashboards under ``<out_dir>/tensorboard/`` (module docstring);
    ``scores``: the test parts by set, ``figures``: the figure files (the PNGs are shown).
    Returns the ``tensorboard`` folder."""
    tb_dir = Path(out_dir) / "tensorboard"
    in_distribution = metrics.get("in_distribution", IN_DISTRIBUTION)
    _clear(tb_dir / EVAL_RUN)
    _clear(tb_dir / SUMMARY_RUN)
    rows = histogram_table(scores, in_distribution) if scores else []
    if rows:
        _write_histograms(tb_dir, rows, in_distribution)
    pngs = [Path(p) for p in figures if str(p).endswith(".png") and Path(p).is_file()]
    _write_summary(tb_dir, metrics, info, pngs, rows)
    return tb_dir
