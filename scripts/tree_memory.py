"""Peak memory of a process tree: ``python scripts/tree_memory.py -- CMD ...`` runs CMD and samples, every
0.5 s, the sum of the proportional set size (PSS, /proc/<pid>/smaps_rollup; shared pages split among the
processes that share them) of CMD and all its descendants; prints the peak at the end (Linux only).
GNU time's "maximum resident set size" is one process's peak, which undercounts forked workers."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from benchmarks.training import tree_pss_kb  # noqa: E402


def main() -> int:
    cmd = sys.argv[sys.argv.index("--") + 1:] if "--" in sys.argv else sys.argv[1:]
    proc = subprocess.Popen(cmd)
    peak = 0
    while proc.poll() is None:
        peak = max(peak, tree_pss_kb(proc.pid))
        time.sleep(0.5)
    print(f"peak memory of the process tree (PSS): {peak / 1024**2:.2f} GiB", file=sys.stderr)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
