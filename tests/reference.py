"""A compact, order-independent digest of a finished run, compared with one recorded from an earlier version.

Issue #27 re-laid out the package without changing behaviour: a tiny run's scores, metrics and trained weights
must equal those recorded before the move (``tests/data/tiny_run_reference.json``). The digest keeps, per array,
its length, sum, sum of squares and first and last values (not every value: the file stays small), and every
number of ``metrics.json`` that does not measure time. Regenerate it deliberately, after a change that is meant
to change the numbers, with ``FEVAE_WRITE_REFERENCE=1 pytest tests/test_pipeline.py -k same_seed``.

Training amplifies float rounding: another CPU (vector unit), torch build or thread count gives weights that
differ from the 4th digit on (seen: an AMD EPYC with AVX-512 against the machine #27 recorded on), so a digest
is kept per :func:`machine` and compared on that machine only; elsewhere the comparison is skipped, saying how
to record one. Writing replaces the whole file with this machine's digest: the others are stale once the code
changed the numbers on purpose.
"""

from __future__ import annotations

import json
import os
import platform
from pathlib import Path

import numpy as np
import pytest
import torch

REFERENCE = Path(__file__).parent / "data" / "tiny_run_reference.json"
#: keys of metrics.json whose numbers are timings or environment, not results
UNSTABLE = ("seconds", "time", "cost", "wall", "images_per_s", "memory", "threads", "version")


def _summary(values: np.ndarray) -> list[float]:
    v = np.asarray(values, dtype=np.float64).ravel()
    return [float(v.size), float(v.sum()), float((v * v).sum()), float(v[0]), float(v[-1])] if v.size else [0.0]


def _numbers(node, prefix: str = "") -> dict[str, float]:
    out: dict[str, float] = {}
    if isinstance(node, dict):
        for k, v in node.items():
            out.update(_numbers(v, f"{prefix}/{k}"))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out.update(_numbers(v, f"{prefix}/{i}"))
    elif isinstance(node, (int, float)) and not isinstance(node, bool):
        if not any(u in prefix.lower() for u in UNSTABLE):
            out[prefix] = float(node)
    return out


def digest(run_dir: Path) -> dict[str, object]:
    scores = {}
    for f in sorted((run_dir / "scores").rglob("*.npz")):
        with np.load(f) as z:
            for k in sorted(z.files):
                scores[f"{f.relative_to(run_dir / 'scores')}:{k}"] = _summary(z[k])
    weights = {}
    for ckpt in sorted((run_dir / "checkpoints").rglob("last.ckpt")):
        state = torch.load(ckpt, map_location="cpu", weights_only=True)["state_dict"]
        for k in sorted(state):
            if state[k].is_floating_point():
                weights[f"{ckpt.parent.name}:{k}"] = _summary(state[k].numpy())
    with np.load(run_dir / "mixture.npz") as z:
        mixture = {k: _summary(z[k]) for k in sorted(z.files) if np.issubdtype(z[k].dtype, np.number)}
    metrics = _numbers(json.loads((run_dir / "metrics.json").read_text()))
    return {"scores": scores, "weights": weights, "mixture": mixture, "metrics": metrics}


def machine() -> str:
    """What decides the last bits of a trained weight here: CPU model, torch's vector instruction set, torch
    version, threads (e.g. ``x86_64 AMD EPYC | AVX512 | torch 2.14.1 | 2 threads``)."""
    cpuinfo = Path("/proc/cpuinfo")
    lines = cpuinfo.read_text().splitlines() if cpuinfo.is_file() else []
    model = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")), platform.processor())
    return (f"{platform.machine()} {model} | {torch.backends.cpu.get_cpu_capability()} | "
            f"torch {torch.__version__.split('+')[0]} | {torch.get_num_threads()} threads")


def assert_matches_reference(run_dir: Path) -> None:
    got, here = digest(run_dir), machine()
    if os.environ.get("FEVAE_WRITE_REFERENCE"):
        REFERENCE.parent.mkdir(exist_ok=True)
        REFERENCE.write_text(json.dumps({"machines": {here: got}}, indent=0, sort_keys=True))
    recorded = json.loads(REFERENCE.read_text())["machines"]
    if here not in recorded:
        pytest.skip(f"no reference digest for this machine ({here}; recorded: {sorted(recorded)}): record one with "
                    "FEVAE_WRITE_REFERENCE=1 pytest tests/test_pipeline.py -k same_seed on unchanged code")
    ref = recorded[here]
    for part in ("scores", "weights", "mixture", "metrics"):
        assert sorted(got[part]) == sorted(ref[part]), f"{part}: keys differ from the recorded reference"
        for key, value in ref[part].items():
            # rtol 1e-9: identical on this machine (float64 sums of the same float32 values); a different CPU's
            # vector units may round the last bits differently, which 1e-9 of a sum tolerates and a real change does not
            np.testing.assert_allclose(got[part][key], value, rtol=1e-9, atol=1e-12, err_msg=f"{part} {key}")
