"""Trained-model reuse: the hash covers what determines the weights, and reuse gives the same run."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import fevae.training as training
from fevae.cache import ModelCache, model_hash
from fevae.pipeline.train import train
from fevae.training import load_state_dict
from pipeline import save_run_config, train_cfg

pytestmark = pytest.mark.slow


def test_hash_covers_what_determines_the_weights_and_nothing_else(tmp_path, synthetic_data_dir):
    base = train_cfg(tmp_path / "a", synthetic_data_dir)
    same = train_cfg(tmp_path / "b", synthetic_data_dir, extra=["fe.C=3", "fe.n=16", "eval.n_samples=7", "data.eval_split.test=8",
                                                                 "trainer.enable_progress_bar=true", "paths.data_dir=/elsewhere"])
    for name in ("vae", "jigsaw"):
        assert model_hash(base, name) == model_hash(same, name)
    bern = train_cfg(tmp_path / "c", synthetic_data_dir, "v1_bernoulli")
    assert model_hash(base, "vae") != model_hash(bern, "vae")  # likelihood and preprocessing
    assert model_hash(base, "jigsaw") != model_hash(bern, "jigsaw")  # binarised training images
    other = train_cfg(tmp_path / "d", synthetic_data_dir, extra=["seed=1"])
    assert model_hash(base, "vae") != model_hash(other, "vae")
    longer = train_cfg(tmp_path / "e", synthetic_data_dir, extra=["budget.jigsaw.trainer.max_epochs=3"])
    assert model_hash(base, "vae") == model_hash(longer, "vae") and model_hash(base, "jigsaw") != model_hash(longer, "jigsaw")


def test_a_sweep_over_fe_trains_each_model_once_and_matches_fresh_training(tmp_path, synthetic_data_dir, monkeypatch, caplog):
    trained = []
    real_fit = training._fit
    monkeypatch.setattr(training, "_fit", lambda name, *a, **k: trained.append(name) or real_fit(name, *a, **k))
    cache = [f"paths.cache_dir={tmp_path / 'cache'}", "cache.enabled=true"]
    runs = []
    for i, c in enumerate((2, 3)):
        run_dir = tmp_path / f"job{i}"
        # one after another, in this process: the patched _fit sees every training (side by side, forked children train)
        cfg = train_cfg(run_dir, synthetic_data_dir, extra=[*cache, f"fe.C={c}", "training.side_by_side=false"])
        save_run_config(cfg, run_dir)
        with caplog.at_level("INFO", logger="fevae.training"):
            train(cfg)
        runs.append(run_dir)
    assert trained == ["vae", "background", "jigsaw"]  # the second job reused all three (background: the likelihood ratio's)
    assert "reused trained model" in caplog.text
    fresh = tmp_path / "fresh"
    cfg = train_cfg(fresh, synthetic_data_dir, extra=["fe.C=3", "cache.enabled=false", "training.side_by_side=false"])
    train(cfg)
    for name in ("vae", "jigsaw"):
        a, b = load_state_dict(runs[1] / "checkpoints" / name / "best.ckpt"), load_state_dict(fresh / "checkpoints" / name / "best.ckpt")
        assert all(torch.equal(a[k], b[k]) for k in a)
    np.testing.assert_array_equal(np.load(runs[1] / "scores/mnist.npz")["log_p_fevae_apo"], np.load(fresh / "scores/mnist.npz")["log_p_fevae_apo"])


def test_a_failed_store_leaves_no_entry(tmp_path, synthetic_data_dir):
    cfg = train_cfg(tmp_path / "a", synthetic_data_dir)
    cache = ModelCache(tmp_path / "cache", cfg, "vae")
    (tmp_path / "ckpt").mkdir()
    (tmp_path / "ckpt" / "best.ckpt").write_bytes(b"x")  # last.ckpt missing: the copy fails midway
    cache.root.mkdir(parents=True)
    with pytest.raises(FileNotFoundError):
        cache.store(tmp_path / "ckpt")
    assert not cache.has() and list(cache.root.iterdir()) == []
