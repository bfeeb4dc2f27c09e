"""The whole pipeline on the real FashionMNIST / MNIST files, a few batches (CI runs it)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fevae.pipeline.train import train
from pipeline import compose_cfg, save_run_config

pytestmark = [pytest.mark.realdata, pytest.mark.slow]


@pytest.mark.parametrize("experiment", ["v1_bernoulli", "v2_gaussian"])
def test_smoke_run_on_real_data(tmp_path, real_data_dir, experiment):
    run_dir = tmp_path / experiment
    cfg = compose_cfg(
        "train", run_dir, [f"+experiment={experiment}", "profile=smoke", f"paths.data_dir={real_data_dir}",
                           "trainer.enable_progress_bar=false", "data.eval_split.val=100", "data.eval_split.test=200",
                           "eval.figures=paper"],  # (every figure: tests/test_pipeline.py)
    )
    save_run_config(cfg, run_dir)
    train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["n"] == {"fashionmnist": 200, "mnist": 200, "mnist_saltpepper": 200}
    with np.load(run_dir / "scores" / "fashionmnist.npz") as scores:
        assert scores["log_p_fevae_apo"].shape == (200,) and np.isfinite(scores["log_p_fevae_apo"]).all()
        if experiment == "v1_bernoulli":  # a Bernoulli log-likelihood of binary pixels is ≤ 0
            assert (scores["log_p_vae_pr"] <= 0).all()
    assert "## Paper claims" in (run_dir / "report.md").read_text()
