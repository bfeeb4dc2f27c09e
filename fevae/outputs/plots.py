"""Figures of the paper (Fig. 1(a), 1(b), 2) and one histogram per extra detector.

All figures are drawn on the Agg canvas (no display, no global pyplot state) and written as
``<out_base>.png`` and ``<out_base>.pdf``. Histograms are normalised per set
(``stat="density"``, each set on its own), share bin edges within a panel, and their x-range is
clipped (union over sets of each set's 0.5–99.5 percentiles, limited to 3 IQR beyond its
quartiles) so that a few extreme OOD values do not squash the plot; the x-axis label says so
and how many values fall outside.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any
from pathlib import Path

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from fevae.errors import FevaeError
from fevae.evaluation.settings import FIGURES
from fevae.metrics.ood import (
    IN_DISTRIBUTION,
    index_scores,
    ood_metrics,
    order_score_ids,
    order_sets,
)

__all__ = ["CLIP_PERCENTILES", "CLIP_IQR_FENCE", "plot_fig1", "plot_fig2", "plot_hist", "plot_all"]

#: Per-set percentiles whose union bounds the x-axis of every histogram...
CLIP_PERCENTILES = (0.5, 99.5)
#: ... further limited to this many inter-quartile ranges beyond each set's quartiles.
CLIP_IQR_FENCE = 3.0
_BINS = 60
_SET_LABELS = {
    "fashionmnist": "FashionMNIST test",
    "mnist": "MNIST test",
    "mnist_saltpepper": "MNIST + salt & pepper",
    "cifar10": "CIFAR-10 test",
    "svhn": "SVHN test",
}
_SET_COLORS = {"mnist": "tab:orange", "mnist_saltpepper": "tab:red"}
#: the OOD sets of the paper's Fig. 1 and Fig. 2
PAPER_FIGURE_SETS = ("mnist", "mnist_saltpepper")
_EXTRA_COLORS = ["tab:green", "tab:purple", "tab:brown", "tab:pink", "tab:olive", "tab:cyan"]
_SCORE_TEX = {"vae": r"p_{\mathrm{VAE}}", "fe": r"p_{\mathrm{FE}}", "fevae": r"p_{\mathrm{FEVAE}}"}
_SCHEME_SUFFIX = {"PR": "_pr", "APO": "_apo"}


def _sns():
    import seaborn as sns  # imported lazily: seaborn pulls in pandas

    return sns


def _set_title(name: str) -> str:
    """``MNIST test``, ``SVHN + salt & pepper`` (a known set with the ``_saltpepper`` suffix), else the name."""
    if name not in _SET_LABELS and name.endswith("_saltpepper") and name[: -len("_saltpepper")] in _SET_LABELS:
        return _SET_LABELS[name[: -len("_saltpepper")]].removesuffix(" test") + " + salt & pepper"
    return _SET_LABELS.get(name, name)


def _set_label(name: str, in_distribution: str = IN_DISTRIBUTION) -> str:
    return f"{_set_title(name)} ({'ID' if name == in_distribution else 'OOD'})"


def _set_color(name: str, i: int, in_distribution: str = IN_DISTRIBUTION) -> str:
    if name == in_distribution:
        return "tab:blue"
    return _SET_COLORS.get(name, _EXTRA_COLORS[i % len(_EXTRA_COLORS)])


def figure_sets(set_names: Sequence[str], in_distribution: str = IN_DISTRIBUTION) -> tuple[str | None, str | None]:
    """The OOD sets of Fig. 1 and Fig. 2: ``mnist`` and ``mnist_saltpepper`` (the paper's), else the
    first OOD set (Fig. 1) and the first whose name holds ``saltpepper`` (Fig. 2); None when absent."""
    ood = [s for s in set_names if s != in_distribution]
    fig1 = PAPER_FIGURE_SETS[0] if PAPER_FIGURE_SETS[0] in ood else next(iter(ood), None)
    fig2 = PAPER_FIGURE_SETS[1] if PAPER_FIGURE_SETS[1] in ood else next((s for s in ood if "saltpepper" in s), None)
    return fig1, fig2


def _score_label(score_id: str, scheme: str) -> str:
    tex = _SCORE_TEX.get(score_id)
    if tex is None:
        base = f"log p_{score_id}" if scheme != "other" else score_id
        return f"{base} ({scheme})" if scheme != "other" else base
    return rf"$\log {tex}^{{\mathrm{{{scheme}}}}}(x)$"


def _score_base(score_id: str) -> str:
    tex = _SCORE_TEX.get(score_id)
    return rf"$\log {tex}(x)$" if tex else score_id


def _new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, out_base: str | Path | None) -> list[Path]:
    if out_base is None:
        raise FevaeError("no output path given for the figure", "pass out_base=<folder>/<name>")
    out_base = Path(out_base)
    if out_base.suffix in (".png", ".pdf"):
        out_base = out_base.with_suffix("")
    out_base.parent.mkdir(parents=True, exist_ok=True)
    paths = []
    for ext in ("png", "pdf"):
        path = out_base.with_name(f"{out_base.name}.{ext}")
        fig.savefig(path, dpi=150 if ext == "png" else None)
        paths.append(path)
    fig.clear()  # free memory; no pyplot registry is involved, so nothing else to close
    return paths


def _auroc_text(in_vals: np.ndarray, out_vals: np.ndarray) -> str:
    n_bad = int((~np.isfinite(in_vals)).sum() + (~np.isfinite(out_vals)).sum())
    if n_bad:
        return f"AUROC n/a ({n_bad} non-finite)"
    return f"AUROC {ood_metrics(in_vals, out_vals)['auroc']:.3f}"


def _clip_range(finite: Sequence[np.ndarray]) -> tuple[float, float]:
    """Union over sets of [p0.5, p99.5] ∩ [q1 - 3 IQR, q3 + 3 IQR] (each set's own values).

    Per-set rather than pooled percentiles so that a small OOD set far from the ID mass is
    never cut away, and the IQR fence so that ~1% of extreme values (e.g. log p = -1e6) do not
    squash the plot.
    """
    los, his = [], []
    for v in finite:
        if v.size == 0:
            continue
        p_lo, q1, q3, p_hi = np.percentile(v, [CLIP_PERCENTILES[0], 25, 75, CLIP_PERCENTILES[1]])
        iqr = q3 - q1
        los.append(max(p_lo, q1 - CLIP_IQR_FENCE * iqr))
        his.append(min(p_hi, q3 + CLIP_IQR_FENCE * iqr))
    lo, hi = float(min(los)), float(max(his))
    if not hi > lo:
        lo, hi = lo - 0.5, hi + 0.5
    return lo, hi


def _hist_panel(ax, series: Sequence[tuple[str, np.ndarray, str]], title: str, xlabel: str):
    """Overlay per-set density histograms on ``ax`` with shared, percentile-clipped bins."""
    sns = _sns()
    finite = [np.asarray(v, dtype=np.float64)[np.isfinite(v)] for _, v, _ in series]
    pooled = np.concatenate(finite) if finite else np.zeros(0)
    if pooled.size == 0:
        ax.text(0.5, 0.5, "no finite values", ha="center", va="center", transform=ax.transAxes)
        ax.set_title(title, fontsize=9)
        return
    lo, hi = _clip_range(finite)
    edges = np.linspace(lo, hi, _BINS + 1)
    n_out = 0
    n_total = 0
    for (label, values, color), vals in zip(series, finite):
        n_total += np.size(values)
        inside = vals[(vals >= lo) & (vals <= hi)]
        n_out += np.size(values) - inside.size
        if inside.size == 0:
            ax.plot([], [], color=color, label=f"{label} (all outside range)")
            continue
        sns.histplot(
            x=inside, bins=edges, stat="density", element="step", fill=True, alpha=0.3,
            color=color, label=f"{label} (n={np.size(values)})", ax=ax,
        )
    ax.set_xlim(lo, hi)
    ax.set_title(title, fontsize=9)
    note = (
        f"x clipped to per-set {CLIP_PERCENTILES[0]:g}–{CLIP_PERCENTILES[1]:g} percentiles "
        f"(≤{CLIP_IQR_FENCE:g} IQR beyond quartiles);\n{n_out} of {n_total} values outside "
        "(incl. non-finite) not shown"
    )
    ax.set_xlabel(f"{xlabel}\n{note}", fontsize=8)
    ax.set_ylabel("density (normalised per set)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.legend(fontsize=7, loc="best")


def _panels(scores, score_id: str, schemes: Sequence[str], sets: Sequence[str], in_distribution):
    """[(scheme, [(set, values)])] for the schemes where the ID set and ≥1 OOD set have the score."""
    panels = []
    for scheme in schemes:
        per_set = []
        for s in sets:
            if s not in scores:
                continue
            name = index_scores(scores[s]).get((scheme, score_id))
            if name is not None:
                per_set.append((s, np.asarray(scores[s][name], dtype=np.float64)))
        if len(per_set) >= 2 and per_set[0][0] == in_distribution:
            panels.append((scheme, per_set))
    return panels


def _draw_panels(axes, panels, score_id: str):
    for ax, (scheme, per_set) in zip(axes, panels):
        id_vals = per_set[0][1]
        aurocs = [f"{s}: {_auroc_text(id_vals, v)}" for s, v in per_set[1:]]
        id_name = per_set[0][0]  # _panels puts the in-distribution set first
        series = [(_set_label(s, id_name), v, _set_color(s, i, id_name)) for i, (s, v) in enumerate(per_set)]
        title = f"{scheme}" if scheme != "other" else "score"
        title += " — " + "; ".join(aurocs)
        if len(aurocs) > 2 or len(title) > 64:  # more OOD sets than the paper's two (data.ood_sets): wrap rather than run into the next panel
            import textwrap

            title = "\n".join(textwrap.wrap(title, 56))
        _hist_panel(ax, series, title, _score_label(score_id, scheme))


def plot_hist(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    score_id: str,
    out_base: str | Path | None = None,
    title: str = "",
    *,
    ood_sets: Sequence[str] | None = None,
    in_distribution: str = IN_DISTRIBUTION,
) -> list[Path]:
    """Histograms of one score id: one panel per scheme present (PR, APO, or a single 'other'),
    ID vs every OOD set (or ``ood_sets``). Returns the written files ([] if nothing to plot)."""
    if ood_sets is None:
        ood_sets = [s for s in order_sets(scores) if s != in_distribution]
    sets = [in_distribution, *ood_sets]
    panels = _panels(scores, score_id, ("PR", "APO", "other"), sets, in_distribution)
    if not panels:
        return []
    fig = _new_figure(5.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    _draw_panels(axes, panels, score_id)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, out_base)


def plot_fig1(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    score: str = "vae",
    out_base: str | Path | None = None,
    title_prefix: str = "",
    *,
    in_distribution: str = IN_DISTRIBUTION,
    ood_set: str = "mnist",
) -> list[Path]:
    """Paper Fig. 1(a) (``score="vae"``) / 1(b) (``score="fevae"``) for one VAE.

    Density histograms of ``log_p_<score>_pr`` (left) and ``_apo`` (right), the in-distribution test
    set (FashionMNIST) vs ``ood_set`` (MNIST test), AUROC in each panel title. Returns [png, pdf] or
    [] if the scores are absent.
    """
    panels = _panels(scores, score, ("PR", "APO"), [in_distribution, ood_set], in_distribution)
    if not panels:
        return []
    fig = _new_figure(5.0 * len(panels), 3.8)
    axes = fig.subplots(1, len(panels), squeeze=False)[0]
    _draw_panels(axes, panels, score)
    which = {"vae": "Fig. 1(a)", "fevae": "Fig. 1(b)"}.get(score, "Fig. 1")
    fig.suptitle(
        f"{title_prefix + ' — ' if title_prefix else ''}{which}: log-likelihood "
        f"{_score_base(score)}, "
        "prior (PR) vs approximate posterior (APO)",
        fontsize=10,
    )
    return _save(fig, out_base)


def plot_fig2(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    out_base: str | Path | None = None,
    examples: np.ndarray | None = None,
    *,
    title_prefix: str = "",
    score: str = "fevae",
    scheme: str = "PR",
    in_distribution: str = IN_DISTRIBUTION,
    ood_set: str = "mnist_saltpepper",
) -> list[Path]:
    """Paper Fig. 2 (App. B): log p_FEVAE (PR) of the in-distribution test set (FashionMNIST) vs
    ``ood_set`` (salt-and-pepper MNIST), with example corrupted images on the left when ``examples``
    (``[k, H, W]``, ``[k, 1, H, W]``, ``[k, 3, H, W]`` or ``[k, H, W, 3]``) is given."""
    panels = _panels(scores, score, (scheme,), [in_distribution, ood_set], in_distribution)
    if not panels:
        return []
    imgs = None
    if examples is not None:
        imgs = np.asarray(examples, dtype=np.float64)
        if imgs.ndim == 4 and imgs.shape[1] == 1:
            imgs = imgs[:, 0]
        elif imgs.ndim == 4 and imgs.shape[1] == 3:
            imgs = imgs.transpose(0, 2, 3, 1)
        if not (imgs.ndim == 3 or (imgs.ndim == 4 and imgs.shape[3] == 3)) or imgs.shape[0] == 0:
            raise FevaeError(
                f"examples must have shape [k, H, W] or [k, 3, H, W], got {np.shape(examples)}",
                "pass a few corrupted images as an array [k, H, W] (grayscale) or [k, 3, H, W] (colour)",
            )
        imgs = imgs[:4]
    if imgs is None:
        fig = _new_figure(5.5, 3.8)
        ax_hist = fig.subplots(1, 1)
    else:
        fig = _new_figure(8.0, 3.8)
        gs = fig.add_gridspec(1, 2, width_ratios=[1, 2.4])
        k = imgs.shape[0]
        cols = 1 if k == 1 else 2
        rows = int(np.ceil(k / cols))
        sub = gs[0, 0].subgridspec(rows, cols)
        for i in range(rows * cols):
            ax = fig.add_subplot(sub[i // cols, i % cols])
            ax.set_axis_off()
            if i < k:
                if imgs.ndim == 4:
                    ax.imshow(np.clip(imgs[i], 0.0, 1.0))
                else:
                    ax.imshow(imgs[i], cmap="gray", vmin=0.0, vmax=max(1.0, float(imgs.max())))
            if i == 0:
                ax.set_title(f"(a) {_set_title(ood_set)}", fontsize=8, loc="left")
        ax_hist = fig.add_subplot(gs[0, 1])
    _draw_panels([ax_hist], panels, score)
    ax_hist.set_title(("(b) " if imgs is not None else "") + ax_hist.get_title(), fontsize=9)
    fig.suptitle(
        f"{title_prefix + ' — ' if title_prefix else ''}Fig. 2: {_set_title(ood_set)} vs "
        f"{_set_title(in_distribution)}, {_score_label(score, scheme)}",
        fontsize=10,
    )
    return _save(fig, out_base)


def _safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", name)


def plot_all(
    scores: Mapping[str, Mapping[str, np.ndarray]],
    figures_dir: str | Path,
    run_label: str = "",
    examples: np.ndarray | None = None,
    *,
    in_distribution: str = IN_DISTRIBUTION,
    which: str = "all",
) -> list[Path]:
    """Write every figure the scores allow into ``figures_dir``; returns all written files
    (``.png`` and ``.pdf`` of each figure, in that order). ``which`` (``eval.figures``, :data:`FIGURES`):
    ``all`` as listed below, ``paper`` only Fig. 1(a), 1(b) and 2, ``none`` nothing.

    * ``fig1a_log_p_vae``   — Fig. 1(a), needs the ID set + mnist (else the first OOD set,
      :func:`figure_sets`) and ``log_p_vae_{pr,apo}``
    * ``fig1b_log_p_fevae`` — Fig. 1(b), same with ``log_p_fevae_{pr,apo}``
    * ``fig2_saltpepper``   — Fig. 2, needs the ID set + mnist_saltpepper (else the first set named
      ``*saltpepper*``) and ``log_p_fevae_pr``
    * ``hist_<score id>``   — every other score id (``fe``, ``fevae_l2``, ``iwae``, ...), ID vs
      all OOD sets, one panel per scheme present.
    * ``hist_vae``, ``hist_fevae`` — the same for p_VAE and p_FEVAE, only when the run has OOD sets
      that Fig. 1/2 do not show (e.g. from ``data.ood_sets``),
      so every OOD set appears in a histogram of every score.

    A figure whose sets/scores are absent is skipped silently.
    """
    if which not in FIGURES:
        raise ValueError(f"which={which!r}: choose one of {FIGURES}")
    figures_dir = Path(figures_dir)
    if in_distribution not in scores or which == "none":
        return []
    fig1_set, fig2_set = figure_sets(order_sets(scores), in_distribution)
    written: list[Path] = []
    if fig1_set is not None:
        written += plot_fig1(scores, "vae", figures_dir / "fig1a_log_p_vae", run_label,
                             in_distribution=in_distribution, ood_set=fig1_set)
        written += plot_fig1(scores, "fevae", figures_dir / "fig1b_log_p_fevae", run_label,
                             in_distribution=in_distribution, ood_set=fig1_set)
    if fig2_set is not None:
        written += plot_fig2(scores, figures_dir / "fig2_saltpepper", examples,
                             title_prefix=run_label, in_distribution=in_distribution, ood_set=fig2_set)
    if which == "paper":
        return written
    score_ids = order_score_ids({sid for _, sid in index_scores(scores[in_distribution])})
    paper_sets = {fig1_set} | ({fig2_set} if any(p.stem == "fig2_saltpepper" for p in written) else set())
    others = [s for s in order_sets(scores) if s != in_distribution and s not in paper_sets]
    for sid in score_ids:
        if sid in ("vae", "fevae") and not others:
            continue
        title = f"{run_label + ' — ' if run_label else ''}score '{sid}'"
        written += plot_hist(scores, sid, figures_dir / f"hist_{_safe(sid)}", title,
                             in_distribution=in_distribution)
    return written


def detector_label(score_id: str, scheme: str) -> str:
    """``p_FEVAE (APO)``, ``fevae_l2 (PR)``, ``iwae``: how reports and figures name a detector."""
    name = {"vae": "p_VAE", "fe": "p_FE", "fevae": "p_FEVAE"}.get(score_id, score_id)
    return name if scheme == "other" else f"{name} ({scheme})"


def plot_detector_aurocs(metrics: Mapping[str, Any], out_base: str | Path, run_label: str = "") -> list[Path]:
    """Every detector's AUROC against each OOD set (horizontal bars, dashed line at chance)."""
    id_set = metrics.get("in_distribution", IN_DISTRIBUTION)
    rows = [
        {"detector": detector_label(sid, scheme), "OOD set": _set_label(ood_set, id_set), "AUROC": m["auroc"]}
        for ood_set, per in metrics.get("ood", {}).items()
        for scheme in ("PR", "APO", "other")
        for sid, m in per.get(scheme, {}).items()
    ]
    if not rows:
        return []
    import pandas as pd

    frame = pd.DataFrame(rows)
    n_detectors = frame["detector"].nunique()
    fig = _new_figure(7.0, 1.2 + 0.45 * n_detectors)
    ax = fig.subplots()
    _sns().barplot(frame, y="detector", x="AUROC", hue="OOD set", ax=ax, orient="h")
    ax.axvline(0.5, color="grey", linestyle="--", linewidth=1)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylabel("")
    ax.set_title(f"{run_label + ' — ' if run_label else ''}AUROC of every detector ({_set_title(id_set)} = in-distribution)", fontsize=9)
    sns_legend = ax.get_legend()
    if sns_legend is not None:
        sns_legend.remove()
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", ncol=2, fontsize=7, frameon=False)
    return _save(fig, out_base)
