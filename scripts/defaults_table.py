"""Tabulate scripts/redecide_defaults_v2.sh: each setting's validation and test AUROCs (mean ± sd over
seeds) next to today's default, and apply the decision rule fixed in that script.

    python scripts/defaults_table.py [--out outputs/defaults_v2] [--seeds outputs/seeds_v2]

Rule (selection reads validation only): an alternative replaces the default only if its mean
validation AUROC of APO log p_FEVAE on MNIST beats the default's by more than the larger of the two
seed sds, and its salt-and-pepper validation AUROC (same score) does not drop by more than that.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

SEEDS = (1, 2, 3)
#: (label, folder per seed relative to --out / --seeds, score id)
VARIANTS = [
    ("reg_covar 1e-6 (`fe=literal`)", "{out}/reg_covar_1e-6_s{seed}", "fevae"),
    ("reg_covar 1e-2", "{out}/reg_covar_1e-2_s{seed}", "fevae"),
    ("fe.layer 2", "{out}/layers_s{seed}", "fevae_l2"),
    ("fe.layer 3", "{out}/layers_s{seed}", "fevae_l3"),
    ("fe.layer 4", "{out}/layers_s{seed}", "fevae_l4"),
    ("pre-activation features", "{out}/preact_s{seed}", "fevae"),
    ("Jigsaw 30 epochs", "{out}/jigsaw30/{job}", "fevae"),
    ("VAE batch 512", "{out}/vae_batch512/{job}", "fevae"),
]
DEFAULT = ("**default** (reg_covar 1e-3, layer 1 post-ReLU, Jigsaw 100 ep., VAE batch 128)", "{seeds}/{job}", "fevae")
#: (column title, block, OOD set, scheme)
COLUMNS = [
    ("MNIST APO val", "ood_val", "mnist", "APO"), ("MNIST APO test", "ood", "mnist", "APO"),
    ("MNIST PR val", "ood_val", "mnist", "PR"), ("MNIST PR test", "ood", "mnist", "PR"),
    ("s&p APO val", "ood_val", "mnist_saltpepper", "APO"), ("s&p APO test", "ood", "mnist_saltpepper", "APO"),
]


def aurocs(pattern: str, score: str, out: str, seeds: str) -> dict[str, list[float]] | None:
    """Column title -> AUROC per seed (None when a seed's run is missing)."""
    values: dict[str, list[float]] = {title: [] for title, *_ in COLUMNS}
    for i, seed in enumerate(SEEDS):
        path = Path(pattern.format(out=out, seeds=seeds, seed=seed, job=i)) / "metrics.json"
        if not path.exists():
            return None
        metrics = json.loads(path.read_text())
        for title, block, ood, scheme in COLUMNS:
            values[title].append(float(metrics[block][ood][scheme][score]["auroc"]))
    return values


def cell(v: list[float]) -> str:
    return f"{np.mean(v):.3f} ± {np.std(v, ddof=1):.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="outputs/defaults_v2")
    parser.add_argument("--seeds", default="outputs/seeds_v2")
    args = parser.parse_args()
    base = aurocs(DEFAULT[1], DEFAULT[2], args.out, args.seeds)
    assert base is not None, f"the default's seed runs are missing under {args.seeds}"
    print("| setting (V2, seeds 1-3) | " + " | ".join(t for t, *_ in COLUMNS) + " |")
    print("|---|" + "---:|" * len(COLUMNS))
    print(f"| {DEFAULT[0]} | " + " | ".join(cell(base[t]) for t, *_ in COLUMNS) + " |")
    decisions = []
    for label, pattern, score in VARIANTS:
        alt = aurocs(pattern, score, args.out, args.seeds)
        if alt is None:
            print(f"| {label} | " + " | ".join("not run" for _ in COLUMNS) + " |")
            continue
        print(f"| {label} | " + " | ".join(cell(alt[t]) for t, *_ in COLUMNS) + " |")
        margin = max(np.std(alt["MNIST APO val"], ddof=1), np.std(base["MNIST APO val"], ddof=1))
        gain = np.mean(alt["MNIST APO val"]) - np.mean(base["MNIST APO val"])
        sp_drop = np.mean(base["s&p APO val"]) - np.mean(alt["s&p APO val"])
        change = gain > margin and sp_drop <= margin
        decisions.append(f"- {label}: validation MNIST APO p_FEVAE {gain:+.4f} vs the default (margin {margin:.4f}), "
                         f"salt-and-pepper {-sp_drop:+.4f} → {'**change the default**' if change else 'keep the default'}")
    print()
    print("\n".join(decisions))


if __name__ == "__main__":
    main()
