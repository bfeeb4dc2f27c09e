"""README's headline table from finished runs (one per seed): AUROC mean ± sd over the runs, test and validation parts.

    python scripts/headline_table.py outputs/seeds_v2/0 outputs/seeds_v2/1 outputs/seeds_v2/2

Rows: each OOD set of the first run (MNIST, salt-and-pepper MNIST, ...), its test part in bold and its
validation part below; columns: PR and APO p_VAE, p_FE, p_FEVAE, IWAE, input complexity (each run's
``metrics.json``, ``ood`` = test parts, ``ood_val`` = validation parts). Then each run's p_FEVAE MNIST
test AUROC with its 95% bootstrap interval, and the runs' paper-claim verdicts (``report.md``).
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path

import numpy as np

COLUMNS = [("PR", "vae"), ("PR", "fe"), ("PR", "fevae"), ("APO", "vae"), ("APO", "fe"), ("APO", "fevae"),
           ("other", "iwae"), ("other", "input_complexity")]
NAMES = {"mnist": "MNIST", "mnist_saltpepper": "salt-and-pepper MNIST"}


def cell(entries: list[dict | None], bold: bool = False) -> str:
    if any(e is None for e in entries):
        return "—"
    v = np.array([e["auroc"] for e in entries])
    text = f"{v.mean():.3f} ± {v.std(ddof=1) if len(v) > 1 else 0.0:.3f}"
    return f"**{text}**" if bold else text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path)
    args = parser.parse_args()
    metrics = [json.loads((run / "metrics.json").read_text()) for run in args.runs]
    head = ["PR p_VAE", "PR p_FE", "PR p_FEVAE", "APO p_VAE", "APO p_FE", "APO p_FEVAE", "IWAE", "input complexity"]
    print("| OOD set | part | " + " | ".join(head) + " |")
    print("|---|---|" + "---:|" * len(head))
    for name in metrics[0]["ood"]:
        for block, part in (("ood", "**test**"), ("ood_val", "val")):
            cells = [cell([m[block].get(name, {}).get(s, {}).get(k) for m in metrics], bold=(block == "ood" and (s, k) == ("APO", "fevae")))
                     for s, k in COLUMNS]
            print(f"| {NAMES.get(name, name)} | {part} | " + " | ".join(cells) + " |")
    print()
    for run, m in zip(args.runs, metrics):
        parts = []
        for scheme in ("PR", "APO"):
            e = m["ood"]["mnist"][scheme]["fevae"]
            lo, hi = e["auroc_ci"]
            parts.append(f"{scheme} {e['auroc']:.3f} [{lo:.3f}, {hi:.3f}]")
        report = (run / "report.md").read_text() if (run / "report.md").exists() else ""
        verdicts = re.findall(r"^- \*\*(C\d) — ([a-z ]+)\.\*\*", report, flags=re.M)
        print(f"{run}: p_FEVAE MNIST test " + ", ".join(parts) + ("; verdicts " + ", ".join(f"{c} {v}" for c, v in verdicts) if verdicts else ""))


if __name__ == "__main__":
    main()
