"""Every detector × every OOD set of finished runs: test AUROC mean ± sd over the runs (seeds).

    python scripts/detector_table.py outputs/detectors_v2/0 outputs/detectors_v2/1 outputs/detectors_v2/2

Reads each run's metrics.json (``ood``: the test parts). Each cell: mean ± sd over the runs, then the
mean of the runs' 95% bootstrap intervals' half-widths in brackets (the image-sampling error of one
run), so both spreads are visible. ``--val`` prints the validation parts instead (the fitted detectors
were fitted on the in-distribution validation images, so theirs are optimistic there).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

#: (metrics.json scheme block, score id, label), in the order of docs/detectors.md's table
ROWS = [
    ("APO", "fevae", "p_FEVAE APO (paper)"), ("PR", "fevae", "p_FEVAE PR (paper)"), ("APO", "vae", "p_VAE APO"),
    ("APO", "fe", "p_FE APO"), ("other", "iwae", "IWAE"), ("other", "input_complexity", "input complexity"),
    ("other", "likelihood_regret", "likelihood regret (random subset)"), ("other", "likelihood_ratio", "likelihood ratio"),
    ("APO", "standardised_fevae", "standardised FEVAE APO"), ("PR", "standardised_fevae", "standardised FEVAE PR"),
    ("other", "dose", "DoSE (KDE)"),
]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--val", action="store_true", help="the validation parts instead of the test parts")
    args = parser.parse_args()
    block = "ood_val" if args.val else "ood"
    metrics = [json.loads((run / "metrics.json").read_text())[block] for run in args.runs]
    sets = list(metrics[0])
    print(f"{'validation' if args.val else 'test'} AUROC, mean ± sd over {len(metrics)} runs [mean 95% bootstrap half-width]")
    print("| detector | " + " | ".join(sets) + " |")
    print("|---|" + "---:|" * len(sets))
    for scheme, sid, label in ROWS:
        cells = []
        for s in sets:
            entries = [m[s].get(scheme, {}).get(sid) for m in metrics]
            if any(e is None for e in entries):
                cells.append("—")
                continue
            v = np.array([e["auroc"] for e in entries])
            half = np.mean([(e["auroc_ci"][1] - e["auroc_ci"][0]) / 2 for e in entries if "auroc_ci" in e] or [np.nan])
            cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f} [{half:.4f}]")
        print(f"| {label} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
