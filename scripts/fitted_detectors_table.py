"""The in-distribution-fitted detectors (fevae/detectors/) on finished runs' saved scores, over seeds.

    python scripts/fitted_detectors_table.py outputs/seeds_v2/0 outputs/seeds_v2/1 outputs/seeds_v2/2

For each run: fit ``eval.fitted_detectors``' default detectors on the run's in-distribution
*validation* scores (``scores/val/<id>.npz``) exactly as a run does (:func:`fevae.detectors.fit_detectors`),
score every part of every set, and compute the AUROCs with :func:`fevae.metrics.compute_split_metrics`.
Prints test AUROC mean ± sd over the runs (and each run's) for every OOD set, next to the paper's
scores and the other detectors the runs computed; the validation AUROCs of the fitted detectors are
printed for information only (they reuse the very ID images the detectors were fitted on).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from fevae.detectors import build_fitted, fit_detectors
from fevae.metrics import compute_split_metrics, load_scores

ROWS = [("APO", "fevae"), ("PR", "fevae"), ("APO", "vae"), ("APO", "fe"), ("APO", "standardised_fevae"), ("PR", "standardised_fevae"),
        ("other", "dose"), ("other", "iwae"), ("other", "input_complexity")]


def run_metrics(run: Path) -> dict:
    metrics = json.loads((run / "metrics.json").read_text())
    id_set = metrics.get("in_distribution", "fashionmnist")
    scores = {p.stem if p.parent.name != "val" else f"val/{p.stem}": load_scores(p) for p in sorted((run / "scores").rglob("*.npz"))}
    detectors = [d for d in ("iwae", "input_complexity") if d in scores[id_set]]
    fitted = build_fitted(["standardised_fevae", "dose"], ["PR", "APO"], detectors)
    scores = fit_detectors(fitted, scores, f"val/{id_set}")
    test = {k: v for k, v in scores.items() if not k.startswith("val/")}
    val = {k[4:]: v for k, v in scores.items() if k.startswith("val/")}
    out = compute_split_metrics(test, val, in_distribution=id_set)
    out["bandwidth"] = next(d.bandwidth for d in fitted if d.name == "dose")
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    all_metrics = [run_metrics(r) for r in args.runs]
    print("DoSE bandwidths:", [round(m["bandwidth"], 3) for m in all_metrics])
    for block, label in (("ood", "test"), ("ood_val", "val (fitted detectors: optimistic)")):
        sets = list(all_metrics[0][block])
        print(f"\n{label}: AUROC mean ± sd over {len(all_metrics)} runs (each run's in brackets)")
        print("| detector | " + " | ".join(sets) + " |")
        print("|---|" + "---:|" * len(sets))
        for scheme, sid in ROWS:
            cells = []
            for s in sets:
                v = [m[block][s].get(scheme, {}).get(sid, {}).get("auroc") for m in all_metrics]
                if any(x is None for x in v):
                    cells.append("—")
                    continue
                v = np.array(v)
                cells.append(f"{v.mean():.4f} ± {v.std(ddof=1) if len(v) > 1 else 0:.4f} ({'/'.join(f'{x:.4f}' for x in v)})")
            print(f"| {sid} ({scheme}) | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
