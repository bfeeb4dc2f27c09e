"""The S curve (fevae.convergence) and per-scheme S: prefixes of one large-S model pass give exactly
what a run at the smaller S gives, and S is chosen from validation AUROCs only."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest

from fevae.pipeline.convergence import choose_s, convergence
from fevae.pipeline.evaluate import evaluate
from fevae.metrics.ood import load_scores
from fevae.pipeline.train import train
from pipeline import save_run_config, train_cfg

pytestmark = pytest.mark.slow

LEAN = ["fe.extra_layers=[]", "eval.detectors=[]"]


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from helpers import make_data_dir

    root = tmp_path_factory.mktemp("convergence")
    run_dir = root / "run"
    cfg = train_cfg(run_dir, make_data_dir(root / "data"), extra=LEAN)
    save_run_config(cfg, run_dir)
    train(cfg)
    return run_dir


def test_the_s_curve_equals_runs_at_each_s(run_dir, tmp_path):
    choice = convergence(run_dir, LEAN, tmp_path / "curve", grid=[3, 6], tolerance=0.0)
    with (tmp_path / "curve" / "s_curve.csv").open() as handle:
        rows = list(csv.DictReader(handle))
    assert (tmp_path / "curve" / "s_curve.png").is_file() and json.loads((tmp_path / "curve" / "s_curve.json").read_text())["chosen"]
    assert set(choice["chosen"]) == {"PR", "APO"}
    for s in (3, 6):
        out = tmp_path / f"s{s}"
        metrics = evaluate(run_dir, [*LEAN, f"eval.n_samples={s}"], out)["metrics"]
        for row in (r for r in rows if int(r["S"]) == s):
            block = metrics["ood" if row["part"] == "test" else "ood_val"]
            assert float(row["auroc"]) == block[row["ood_set"]][row["scheme"]][row["score"]]["auroc"], row
    assert {r["part"] for r in rows} == {"val", "test"}


def test_s_can_differ_per_scheme_and_each_scheme_matches_its_own_run(run_dir, tmp_path):
    both = load_scores(evaluate(run_dir, [*LEAN, "eval.n_samples={PR: 6, APO: 3}"], tmp_path / "mixed")["out_dir"] + "/scores/mnist.npz")
    pr = load_scores(evaluate(run_dir, [*LEAN, "eval.n_samples=6"], tmp_path / "six")["out_dir"] + "/scores/mnist.npz")
    apo = load_scores(evaluate(run_dir, [*LEAN, "eval.n_samples=3"], tmp_path / "three")["out_dir"] + "/scores/mnist.npz")
    for key in both:
        if key == "dose":  # fitted on both schemes' statistics at once: it matches neither single-S run
            continue
        np.testing.assert_array_equal(both[key], (pr if key.endswith("_pr") else apo)[key], err_msg=key)


def test_s_is_chosen_on_validation_only():
    rows = []
    for s, val, test in ((10, 0.90, 0.99), (20, 0.95, 0.90), (50, 0.951, 0.80)):
        for part, auroc in (("val", val), ("test", test)):
            rows.append({"S": s, "part": part, "ood_set": "mnist", "scheme": "APO", "score": "fevae", "auroc": auroc})
    chosen = choose_s(rows, tolerance=0.005)["chosen"]["APO"]
    assert chosen["S"] == 20  # the test column would have said 10
    assert choose_s(rows, tolerance=0.1)["chosen"]["APO"]["S"] == 10
