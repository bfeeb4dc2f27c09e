"""Hydra multirun through the CLI: a 2x2 n x C sweep reuses trained models and writes its summary."""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import pytest

from pipeline import TINY

pytestmark = pytest.mark.slow


def test_smoke_sweep_reuses_models_summarises_and_survives_a_failed_job(tmp_path, synthetic_data_dir):
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fevae.train", "-m", "+experiment=v2_gaussian", *TINY,
           f"paths.data_dir={synthetic_data_dir}", f"paths.cache_dir={tmp_path / 'cache'}", f"hydra.sweep.dir={sweep}",
           "fe.n=16,4000", "fe.C=2,3"]  # fe.n=4000 is larger than the training set: those jobs fail
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    log = result.stdout + result.stderr
    assert all(log.count(f"{m}: training (hash") == 1 for m in ("vae", "background", "jigsaw"))
    assert log.count("reused trained model") == 3  # every model in the second good job (bad fe.n fails before)
    with (sweep / "summary.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == 4
    ok = [r for r in rows if not r["error"]]
    failed = [r for r in rows if r["error"]]
    assert {(r["fe.n"], r["fe.C"]) for r in ok} == {("16", "2"), ("16", "3")}
    assert all("fe.n=4000 is larger than the training set" in r["error"] for r in failed) and len(failed) == 2
    assert all(0 <= float(r["ood/mnist/APO/fevae/auroc"]) <= 1 for r in ok)
    assert (sweep / "summary.md").exists() and (sweep / "heatmap_auroc_n_C.png").exists()
    cost = json.loads((sweep / "sweep_cost.json").read_text())  # the sweep's own cost against its first job
    times = {r["job"]: float(r["wall_time_s"]) for r in ok}
    assert cost["first_job"] == 0 and cost["first_job_s"] == times["0"] and cost["jobs"] == 4 and cost["jobs_timed"] == 2
    assert cost["ratio"] == pytest.approx(sum(times.values()) / times["0"], abs=1e-3)
    assert f"{cost['ratio']:.2f}×" in (sweep / "summary.md").read_text()
