"""Every detector × every OOD set of finished runs: worst-set AUROC first, then per set, mean ± sd over the runs (seeds).

    python scripts/detector_table.py outputs/seeds_v2/0 outputs/seeds_v2/1 outputs/seeds_v2/2

Reads each run's metrics.json (``ood``: the test parts). Columns, in order:
* **worst set**: per run, the lowest AUROC of the detector over every OOD set of the run; mean ± sd over the
  runs, and (in brackets) the set whose mean AUROC is lowest. A detector is as good as its worst set.
* **conformal FPR**: the share of in-distribution *test* images its conformal p-value flags at 5% against the
  in-distribution validation scores (out-of-fold for fitted detectors); mean ± sd over the runs; ≈ 0.05 when its
  threshold can be set from in-distribution images.
* per set: mean ± sd over the runs, then the mean of the runs' 95% bootstrap intervals' half-widths in
  brackets (the image-sampling error of one run), so both spreads are visible.
``--val`` prints the validation parts instead (no conformal column: the validation parts are the calibration).
``--sets a,b`` keeps only those OOD sets (e.g. the held-out sets of scripts/holdout_sets.py), ``--skip a,b`` drops them.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: (metrics.json scheme block, score id, label), in the order of docs/detectors.md's table; any other detector follows
ROWS = [
    ("APO", "fevae", "p_FEVAE APO (paper)"), ("PR", "fevae", "p_FEVAE PR (paper)"), ("APO", "vae", "p_VAE APO"),
    ("PR", "vae", "p_VAE PR"), ("APO", "fe", "p_FE APO"), ("PR", "fe", "p_FE PR"), ("other", "iwae", "IWAE"),
    ("other", "input_complexity", "input complexity"), ("other", "likelihood_regret", "likelihood regret (random subset)"),
    ("other", "likelihood_ratio", "likelihood ratio"), ("other", "jigsaw_loss", "Jigsaw loss"),
    ("APO", "jigsaw_loss", "Jigsaw loss of x and φ(z), APO"),
    ("APO", "standardised_fevae", "standardised FEVAE APO"), ("PR", "standardised_fevae", "standardised FEVAE PR"),
    ("APO", "standardised_fevae_two_sided", "standardised FEVAE APO, two-sided"),
    ("PR", "standardised_fevae_two_sided", "standardised FEVAE PR, two-sided"),
    ("other", "dose", "DoSE (KDE)"), ("other", "fused", "fused (GMM)"),
]


def _pm(v: np.ndarray) -> str:
    return f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f}"


def table(metrics: list[dict], val: bool = False) -> list[str]:
    sets = list(metrics[0])
    known = {(scheme, sid) for scheme, sid, _ in ROWS}
    extra = sorted({(scheme, sid) for m in metrics for per in m.values() for scheme, block in per.items() for sid in block} - known)
    rows = ROWS + [(scheme, sid, f"{sid} ({scheme})") for scheme, sid in extra]
    lead = "" if val else " conformal FPR |"
    lines = ["| detector | worst set |" + lead + " " + " | ".join(sets) + " |", "|---|---:|" + ("" if val else "---:|") + "---:|" * len(sets)]
    for scheme, sid, label in rows:
        entries = {s: [m[s].get(scheme, {}).get(sid) for m in metrics] for s in sets}
        have = [s for s in sets if all(e is not None for e in entries[s])]
        if not have:
            continue
        auroc = {s: np.array([e["auroc"] for e in entries[s]]) for s in have}
        worst_per_run = np.min(np.stack([auroc[s] for s in have]), axis=0)
        worst_set = min(have, key=lambda s: auroc[s].mean())
        cells = [f"{_pm(worst_per_run)} ({worst_set})"]
        if not val:
            fpr = [e.get("conformal_fpr") for e in entries[have[0]]]
            cells.append(_pm(np.array(fpr)) if all(f is not None for f in fpr) else "—")
        for s in sets:
            if s not in have:
                cells.append("—")
                continue
            half = np.mean([(e["auroc_ci"][1] - e["auroc_ci"][0]) / 2 for e in entries[s] if "auroc_ci" in e] or [np.nan])
            cells.append(f"{_pm(auroc[s])} [{half:.4f}]")
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--val", action="store_true", help="the validation parts instead of the test parts")
    parser.add_argument("--sets", help="comma-separated OOD sets to keep (default: every set of the runs)")
    parser.add_argument("--skip", default="", help="comma-separated OOD sets to leave out")
    args = parser.parse_args()
    block = "ood_val" if args.val else "ood"
    metrics = [json.loads((run / "metrics.json").read_text())[block] for run in args.runs]
    keep = args.sets.split(",") if args.sets else list(metrics[0])
    missing = sorted(set(keep) - set(metrics[0]))
    if missing:
        parser.error(f"--sets {','.join(missing)}: not in {args.runs[0]}/metrics.json (its sets: {', '.join(metrics[0])})")
    keep = [s for s in keep if s not in args.skip.split(",")]
    metrics = [{s: m[s] for s in keep} for m in metrics]
    print(f"{'validation' if args.val else 'test'} AUROC, mean ± sd over {len(metrics)} runs [mean 95% bootstrap half-width]")
    print("\n".join(table(metrics, args.val)))


if __name__ == "__main__":
    main()
