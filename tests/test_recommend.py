"""The recommended-detector rule (fevae/detectors/recommend.py) reads in-distribution validation scores only."""

from __future__ import annotations

import numpy as np
import pytest

from fevae.detectors import recommend as rec
from fevae.utils.io import save_scores


def _id_val_run(folder, n=400, seed=0):
    """A run folder holding nothing but scores/val/fashionmnist.npz: the only file the rule may read."""
    rng = np.random.default_rng(seed)
    cols = {f"log_p_{t}_{s}": rng.normal(size=n) * (100 if t == "vae" else 10) for s in ("pr", "apo") for t in ("vae", "fe", "fevae")}
    cols.update(iwae=rng.normal(size=n), input_complexity=rng.normal(size=n), likelihood_ratio=rng.normal(size=n))
    save_scores(folder / "scores" / "val" / "fashionmnist.npz", cols)
    return folder


def test_an_unfitted_score_rejects_about_the_target_fraction_of_the_other_half(tmp_path):
    run = _id_val_run(tmp_path / "r")
    from fevae.utils.io import load_scores

    r = rec.rejected_fraction(load_scores(run / "scores" / "val" / "fashionmnist.npz"), "likelihood_ratio", None, halvings=200)
    assert abs(np.median(r) - rec.TARGET) < 0.01 and r.min() >= 0 and r.max() <= 0.15


def test_the_first_candidate_that_passes_on_every_run_is_recommended(tmp_path, monkeypatch):
    runs = [_id_val_run(tmp_path / str(k), seed=k) for k in range(2)]
    fractions = {"dose": [0.15, 0.17], "standardised_fevae_apo": [0.05, 0.11], "likelihood_ratio": [0.06, 0.04], "log_p_fevae_apo": [0.05, 0.05]}
    calls = iter(v for c, _ in rec.CANDIDATES for v in fractions[c])  # candidate by candidate, run by run

    def fake(id_val, column, fitted, seed=0, halvings=rec.HALVINGS):
        assert set(id_val) >= {"log_p_vae_apo", "likelihood_ratio"}  # the ID validation columns, nothing else
        return np.array([next(calls)])

    monkeypatch.setattr(rec, "rejected_fraction", fake)
    result = rec.recommend(runs)
    assert result["recommended"] == "likelihood_ratio"  # dose fails on both runs, standardised_fevae_apo on one
    assert [row["passes"] for row in result["candidates"].values()] == [False, False, True, True]


def test_fitted_candidates_are_fitted_on_half_a_only(tmp_path):
    run = _id_val_run(tmp_path / "r")
    from fevae.utils.io import load_scores

    cols = load_scores(run / "scores" / "val" / "fashionmnist.npz")
    r = rec.rejected_fraction(cols, "standardised_fevae_apo", "standardised_fevae", halvings=50)
    assert 0.02 <= np.median(r) <= 0.09  # an ECDF fitted on A: B's rejections near the target
    with pytest.raises(Exception, match="no likelihood_ratio|scores have no"):
        rec.rejected_fraction({k: v for k, v in cols.items() if k != "likelihood_ratio"}, "likelihood_ratio", None, halvings=1)
