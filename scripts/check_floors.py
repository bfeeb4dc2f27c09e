"""Check that the dependency floors pyproject.toml declares are true: install every direct dependency at its
floor into a fresh virtual environment and run the smoke pipeline with every detector there.

    python scripts/check_floors.py                       # make check-floors: Python 3.10 (requires-python's floor) if found
    python scripts/check_floors.py --python python3.11 --venv .floors-venv-3.11

Steps, each printed with its command: (1) ``<python> -m venv --clear <venv>`` (isolated: no system packages);
(2) ``pip install`` every ``name>=X`` of ``[project].dependencies`` pinned to ``name==X`` (their own
dependencies resolve as pip chooses), then fevae itself with ``--no-deps``; ``pip check``; (3) in a temporary
folder, ``python -m fevae.train +experiment=v2_gaussian profile=smoke`` (every detector of ``conf/detector/``),
then the score CLI on 4 of its test images, with the real data (``FEVAE_DATA_DIR``). It passes when both exit 0
and ``metrics.json`` holds every detector's numbers. Not part of ``make test`` (it downloads ~3 GB: the PyPI
torch of the floor is a CUDA build); run it after changing a floor or a dependency. The venv is kept (a rerun
reinstalls into it with ``--clear``), ``--keep-run`` keeps the smoke run's folder.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
#: requires-python's floor, the interpreter the check prefers
FLOOR_PYTHON = "python3.10"


def default_python() -> str:
    """:data:`FLOOR_PYTHON` if it runs (a pyenv shim of a version not selected does not), else pyenv's own 3.10
    (``~/.pyenv/versions/3.10.*``), else this interpreter."""
    import glob

    for candidate in [FLOOR_PYTHON, *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.10*/bin/python")))]:
        try:
            if subprocess.run([candidate, "-c", "pass"], capture_output=True, timeout=60).returncode == 0:
                return candidate
        except (OSError, subprocess.TimeoutExpired):
            pass
    print(f"note: {FLOOR_PYTHON} does not run here: the floors are checked with {sys.executable} (--python picks another)", flush=True)
    return sys.executable


def floors(pyproject: Path = ROOT / "pyproject.toml") -> list[str]:
    """``name==X`` for every ``name>=X`` of ``[project].dependencies`` (a dependency without a floor is an error)."""
    import tomllib

    pins = []
    for spec in tomllib.loads(pyproject.read_text())["project"]["dependencies"]:
        match = re.match(r"\s*([A-Za-z0-9_.-]+)\s*(?:\[[^\]]*\])?\s*([^;]*)", spec)
        floor = re.search(r">=\s*([0-9][^,\s]*)", match.group(2))
        if floor is None:
            raise SystemExit(f"error: {spec!r} in pyproject.toml has no floor (>=X) — declare the lowest version fevae works with")
        pins.append(f"{match.group(1)}=={floor.group(1)}")
    return pins


def step(cmd: list[str], **kwargs) -> subprocess.CompletedProcess:
    print("+", " ".join(cmd), flush=True)
    start = time.perf_counter()
    result = subprocess.run(cmd, **kwargs)
    print(f"  ({time.perf_counter() - start:.0f} s, exit status {result.returncode})", flush=True)
    return result


def check(python: str, venv: Path, keep_run: bool) -> int:
    if shutil.which(python) is None and not Path(python).is_file():
        print(f"error: interpreter {python} not found — pass --python <interpreter>", file=sys.stderr)
        return 2
    if step([python, "-m", "venv", "--clear", str(venv)]).returncode:
        return 1
    py = str(venv / "bin" / "python")
    pins = floors()
    for cmd in ([py, "-m", "pip", "install", "-q", "--upgrade", "pip"], [py, "-m", "pip", "install", "-q", *pins],
                [py, "-m", "pip", "install", "-q", "--no-deps", "-e", str(ROOT)], [py, "-m", "pip", "check"]):
        if step(cmd).returncode:
            print(f"check-floors: FAILED installing the floors {pins}", file=sys.stderr)
            return 1
    versions = step([py, "-c", "import sys, importlib.metadata as m; print(sys.version.split()[0], *(f'{n}=={m.version(n)}' for n in sys.argv[1:]))",
                     *(p.split("==")[0] for p in pins)], capture_output=True, text=True)
    print("installed:", versions.stdout.strip())
    work = Path(tempfile.mkdtemp(prefix="fevae-floors-"))
    run_dir = work / "run"
    try:
        train = step([py, "-m", "fevae.train", "+experiment=v2_gaussian", "profile=smoke", f"hydra.run.dir={run_dir}",
                      "trainer.enable_progress_bar=false", "cache.enabled=false"], cwd=work)
        if train.returncode:
            print(f"check-floors: FAILED: the smoke run exits {train.returncode} with the floors (log: {run_dir / 'train.log'})", file=sys.stderr)
            return 1
        missing = missing_detectors(py, run_dir)
        if missing:
            print(f"check-floors: FAILED: metrics.json lacks {missing}", file=sys.stderr)
            return 1
        images = work / "four.npy"
        step([py, "-c", "import numpy as np, sys; np.save(sys.argv[1], np.random.default_rng(0).integers(0, 256, (4, 28, 28), dtype=np.uint8))",
              str(images)], check=True)
        score = step([py, "-m", "fevae.score", f"run_dir={run_dir}", f"input={images}", f"output={work / 'scores.csv'}"], cwd=work)
        if score.returncode:
            print(f"check-floors: FAILED: the score CLI exits {score.returncode} with the floors", file=sys.stderr)
            return 1
        print(f"check-floors: passed with {versions.stdout.strip()}")
        return 0
    finally:
        if keep_run:
            print(f"smoke run kept in {run_dir}")
        else:
            shutil.rmtree(work, ignore_errors=True)


def missing_detectors(py: str, run_dir: Path) -> list[str]:
    """The run's ``eval.detectors`` that have no number in its ``metrics.json``."""
    names = subprocess.run([py, "-c", "import sys; from omegaconf import OmegaConf; "
                            "print(' '.join(OmegaConf.load(sys.argv[1]).eval.detectors))", str(run_dir / ".hydra" / "config.yaml")],
                           capture_output=True, text=True, check=True).stdout.split()
    text = json.dumps(json.loads((run_dir / "metrics.json").read_text()))
    return [n for n in names if f'"{n}' not in text] or ([] if names else ["(no detector in eval.detectors)"])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--python", help=f"interpreter of the floors venv (default {FLOOR_PYTHON} if it runs, else this one)")
    parser.add_argument("--venv", type=Path, default=ROOT / ".floors-venv", help="where to make it (default .floors-venv/)")
    parser.add_argument("--keep-run", action="store_true", help="keep the smoke run's folder")
    args = parser.parse_args(argv)
    if not os.environ.get("FEVAE_DATA_DIR"):
        print("note: FEVAE_DATA_DIR is not set: the smoke run looks for Debian's FashionMNIST", flush=True)
    return check(args.python or default_python(), args.venv, args.keep_run)


if __name__ == "__main__":
    sys.exit(main())
