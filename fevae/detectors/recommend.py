"""Which detector docs/detectors.md recommends: a rule fixed in advance that reads in-distribution validation data only.

    python -m fevae.detectors.recommend outputs/detectors_v2/0 outputs/detectors_v2/1 outputs/detectors_v2/2

The rule (written down before any likelihood-ratio or corrupted-set result existed; docs/detectors.md quotes it):

1. **Candidates, in a fixed order of preference** (:data:`CANDIDATES`): the detectors that combine the
   most of what the model pass yields come first, since a detector that must hold on OOD sets nobody
   tuned for should not rest on one statistic: ``dose`` (all statistics), ``standardised_fevae_apo``
   (both terms of p_FEVAE on one scale), ``likelihood_ratio`` (likelihood minus background),
   ``log_p_fevae_apo`` (the paper's score).
2. **An in-distribution calibration check** each candidate must pass on every run: its OOD threshold
   must be settable from in-distribution images alone. The run's in-distribution *validation* images
   (``scores/val/<id>.npz``; never a test or OOD image) are split at random into halves A and B
   (:data:`HALVINGS` times); a fitted detector is fitted on A only; the threshold is the 5th percentile
   of its scores on A (a 5% false-rejection target); the check measures the fraction of B it rejects.
   It passes when the median over the halvings lies in [:data:`LOW`, :data:`HIGH`] on every run.
3. The recommended detector is the **first candidate that passes**; none passing is reported as such.

Nothing else is read: the function opens ``scores/val/<id>.npz`` of each run and no other file.
"""

from __future__ import annotations

import argparse
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from fevae.detectors.registry import build_fitted
from fevae.errors import FevaeError
from fevae.utils.io import load_scores

#: (score column, fitted detector that writes it or None), most preferred first
CANDIDATES: tuple[tuple[str, str | None], ...] = (
    ("dose", "dose"),
    ("standardised_fevae_apo", "standardised_fevae"),
    ("likelihood_ratio", None),
    ("log_p_fevae_apo", None),
)
TARGET, LOW, HIGH = 0.05, 0.025, 0.10
HALVINGS = 50


def rejected_fraction(id_val: Mapping[str, np.ndarray], column: str, fitted: str | None, seed: int = 0,
                      halvings: int = HALVINGS) -> np.ndarray:
    """Per random halving of the ID validation images: the fraction of half B below the 5th percentile of half A."""
    n = len(next(iter(id_val.values())))
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(halvings):
        perm = rng.permutation(n)
        a, b = perm[: n // 2], perm[n // 2 :]
        part_a = {k: v[a] for k, v in id_val.items() if len(v) == n}
        part_b = {k: v[b] for k, v in id_val.items() if len(v) == n}
        if fitted is None:
            if column not in part_a:
                raise FevaeError(f"the in-distribution validation scores have no {column}", "score the run with that detector")
            score_a, score_b = part_a[column], part_b[column]
        else:
            schemes = ["PR", "APO"] if "log_p_vae_pr" in part_a else ["APO"]
            extra = [d for d in ("iwae", "input_complexity") if d in part_a]
            det = build_fitted([fitted], schemes, extra)[0]
            det.fit(part_a)
            score_a, score_b = det.score(part_a)[column], det.score(part_b)[column]
        out.append(float(np.mean(score_b < np.quantile(score_a, TARGET))))
    return np.asarray(out)


def recommend(runs: Sequence[Path], id_set: str = "fashionmnist") -> dict:
    """The rule of the module doc over ``runs``: each candidate's median rejected fraction per run, and the choice."""
    table = {}
    for column, fitted in CANDIDATES:
        medians = []
        for run in runs:
            id_val = load_scores(Path(run) / "scores" / "val" / f"{id_set}.npz")
            medians.append(float(np.median(rejected_fraction(id_val, column, fitted))))
        table[column] = {"median_rejected": medians, "passes": all(LOW <= m <= HIGH for m in medians)}
    chosen = next((c for c, row in table.items() if row["passes"]), None)
    return {"candidates": table, "recommended": chosen}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    parser.add_argument("--id-set", default="fashionmnist")
    args = parser.parse_args()
    result = recommend(args.runs, args.id_set)
    print(f"ID-validation calibration check (target {TARGET:.0%} rejected; passes in [{LOW:.1%}, {HIGH:.0%}]), median of {HALVINGS} halvings per run:")
    for column, row in result["candidates"].items():
        print(f"  {column:24s} " + " ".join(f"{m:.3f}" for m in row["median_rejected"]) + ("  passes" if row["passes"] else "  fails"))
    print(f"recommended: {result['recommended'] or 'none passes'}")


if __name__ == "__main__":
    main()
