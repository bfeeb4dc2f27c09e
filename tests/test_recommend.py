"""The recommended-detector rule (fevae/detectors/recommend.py): in-distribution data only, calibration, proxy outliers."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fevae.data.corruptions import CORRUPTIONS
from fevae.data.proxies import PROXIES, make_proxies
from fevae.detectors import recommend as rec
from fevae.detectors.registry import build_fitted


def _id_val(n=400, seed=0):
    rng = np.random.default_rng(seed)
    cols = {f"log_p_{t}_{s}": rng.normal(size=n) * (100 if t == "vae" else 10) for s in ("pr", "apo") for t in ("vae", "fe", "fevae")}
    cols.update(iwae=rng.normal(size=n), input_complexity=rng.normal(size=n), likelihood_ratio=rng.normal(size=n))
    return cols


def test_candidates_are_the_full_columns():
    cols = {**_id_val(), "likelihood_regret": np.zeros(10), "index__likelihood_regret": np.arange(10), "mcse__iwae": np.ones(400)}
    assert set(rec.candidates(cols)) == set(_id_val())


def test_an_exchangeable_score_flags_about_five_percent_of_the_other_half():
    r = rec.flagged_fraction(_id_val(), "likelihood_ratio", halvings=100)
    assert abs(np.median(r) - 0.05) < 0.012 and r.max() < 0.2  # (a half of 200: one halving's fraction spreads widely)
    with pytest.raises(Exception, match="scores have no"):
        rec.flagged_fraction({"iwae": np.zeros(10)}, "likelihood_ratio", halvings=1)


def test_a_fitted_candidate_is_calibrated_cross_conformally_on_half_a():
    det = build_fitted(["standardised_fevae"], ["PR", "APO"])[0]
    r = rec.flagged_fraction(_id_val(), "standardised_fevae_apo", det, halvings=10)
    assert 0.02 <= np.median(r) <= 0.09
    with pytest.raises(KeyError):
        det.score(_id_val())  # never fitted: flagged_fraction fits copies only


def test_a_fitted_detectors_columns_share_one_refit_per_halving(monkeypatch):
    det = build_fitted(["standardised_fevae"], ["PR", "APO"])[0]
    columns = ["standardised_fevae_pr", "standardised_fevae_apo"]
    apart = {c: rec.flagged_fraction(_id_val(), c, det, halvings=4) for c in columns}
    fits = []
    real_fit = type(det).fit
    monkeypatch.setattr(type(det), "fit", lambda self, v: (fits.append(1), real_fit(self, v))[1])
    together = rec.flagged_fractions(_id_val(), columns, det, halvings=4)
    for c in columns:
        np.testing.assert_array_equal(together[c], apart[c])
    assert len(fits) == 4 * 5  # per halving: the 5 cross-fitting copies on half A (cross-conformal p-values), for both columns


def test_the_calibrated_candidate_with_the_best_worst_case_proxy_auroc_is_recommended(monkeypatch):
    rng = np.random.default_rng(1)
    n = 300
    id_val = {"a": rng.normal(size=n), "b": rng.normal(size=n), "c": rng.normal(size=n), "short": rng.normal(size=10)}
    # a: strong on every family but blur (its worst); b: good everywhere; c: perfect but miscalibrated
    shift = {"a": {f: (3.0 if f != "blur" else 0.35) for f in PROXIES}, "b": {f: 1.2 for f in PROXIES}, "c": {f: 9.0 for f in PROXIES}}
    proxies = {f: {c: rng.normal(size=100) - shift[c][f] for c in shift} for f in PROXIES}
    real = rec.flagged_fractions
    monkeypatch.setattr(rec, "flagged_fractions", lambda v, cols, f, halvings: {
        c: np.array([0.2]) if c == "c" else real(v, [c], f, halvings=halvings)[c] for c in cols})
    result = rec.decide([{"id_val": id_val, "fitted": {}, "proxies": proxies}], list(PROXIES), halvings=10)
    assert set(result["candidates"]) == {"a", "b", "c"}  # "short" covers 10 of 300 images: not a candidate
    assert result["recommended"] == "b" and result["ranking"] == ["b", "a"]
    assert not result["candidates"]["c"]["calibrated"] and result["candidates"]["a"]["worst_proxy"] == "blur"
    assert result["candidates"]["b"]["worst_proxy_auroc"] == pytest.approx(
        min(roc_auc_score(np.r_[np.ones(n), np.zeros(100)], np.r_[id_val["b"], proxies[f]["b"]]) for f in PROXIES))
    assert "| `b` |" in rec.format_table(result) and "recommended: `b`" in rec.format_table(result)


def test_the_noise_reference_is_the_null_distribution_of_a_worst_case_auroc():
    # one run, one family: the AUROC of independent scores is ~ N(0.5, (n1 + n2 + 1) / (12 n1 n2)) (Mann-Whitney)
    ref = rec.noise_reference([(1000, {"f": 300})], draws=4000)
    sd = np.sqrt((1000 + 300 + 1) / (12 * 1000 * 300))
    assert ref["median"] == pytest.approx(0.5, abs=0.1 * sd) and ref["upper_95"] == pytest.approx(0.5 + 1.645 * sd, abs=0.15 * sd)
    # three runs, seven families sharing each run's validation scores: against sklearn on normal scores
    sizes = [(400, {f: 100 for f in PROXIES})] * 3
    rng = np.random.default_rng(5)
    brute = []
    for _ in range(400):
        per_family = np.zeros(len(PROXIES))
        for _run in range(3):
            val = rng.normal(size=400)
            per_family += [roc_auc_score(np.r_[np.ones(400), np.zeros(100)], np.r_[val, rng.normal(size=100)]) for _f in PROXIES]
        brute.append(per_family.min() / 3)
    ref = rec.noise_reference(sizes, draws=2000, seed=1)
    assert ref["median"] == pytest.approx(np.median(brute), abs=0.004)
    assert ref["upper_95"] == pytest.approx(np.quantile(brute, 0.95), abs=0.006)
    assert ref["median"] < 0.49  # the lowest of seven is below 0.5 for pure noise: the reason for the reference


def test_a_detector_of_pure_noise_cannot_be_recommended_even_with_the_best_worst_case(monkeypatch):
    """Pure noise is calibrated and its worst proxy sits near 0.49; candidates that are reversed on one family each
    have a lower worst case. Before the informativeness condition noise won; now the best informative one does."""
    monkeypatch.setattr(rec, "flagged_fractions", lambda v, cols, f, halvings: {c: np.array([0.05]) for c in cols})  # calibrated
    rng = np.random.default_rng(2)
    n, families = 1000, list(PROXIES)
    id_val = {"noise": rng.normal(size=n), "a": rng.normal(size=n), "b": rng.normal(size=n)}
    shift = {"a": {f: (-0.3 if f == "blur" else 1.5) for f in families}, "b": {f: (-0.5 if f == "mixup" else 2.0) for f in families}}
    proxies = {f: {"noise": rng.normal(size=300), **{c: rng.normal(size=300) - shift[c][f] for c in shift}} for f in families}
    result = rec.decide([{"id_val": id_val, "fitted": {}, "proxies": proxies}], families, halvings=4)
    rows = result["candidates"]
    assert rows["noise"]["worst_proxy_auroc"] > max(rows["a"]["worst_proxy_auroc"], rows["b"]["worst_proxy_auroc"])
    assert not rows["noise"]["informative"] and rows["a"]["informative"] and rows["b"]["informative"]
    assert result["recommended"] == "a" and result["ranking"] == ["a", "b"]
    assert not rows["a"]["above_noise"] and rows["a"]["worst_proxy"] == "blur"
    assert result["noise"]["mean_upper_95"] < rows["a"]["mean_proxy_auroc"] and result["noise"]["mean_median"] == pytest.approx(0.5, abs=0.005)
    table = rec.format_table(result)
    assert "| informative |" in table and "| `noise` |" in table and "recommended: `a`" in table
    # noise alone: nothing to recommend, and said so
    alone = rec.decide([{"id_val": {"noise": id_val["noise"]}, "fitted": {}, "proxies": {f: {"noise": p["noise"]} for f, p in proxies.items()}}],
                       families, halvings=4)
    assert alone["recommended"] is None and "none is calibrated and informative" in rec.format_table(alone)


def test_proxy_families_are_disjoint_from_the_shipped_corruptions_and_deterministic():
    assert not set(PROXIES) & set(CORRUPTIONS)
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, size=(40, 28, 28), dtype=np.uint8)
    one, two = make_proxies(images, 10, seed=3), make_proxies(images, 10, seed=3)
    assert list(one) == list(PROXIES)
    for family, out in one.items():
        assert out.shape == (10, 28, 28) and out.dtype == np.uint8, family
        np.testing.assert_array_equal(out, two[family])
    # the pixel permutations keep each image's pixel multiset; the tile shuffle keeps its 7x7 tiles
    src = images[np.sort(np.random.default_rng([3, 1000]).choice(40, 10, replace=False))]
    np.testing.assert_array_equal(np.sort(one["pixel_shuffle"].reshape(10, -1), 1), np.sort(src.reshape(10, -1), 1))
    tiles = lambda x: sorted(x[i:i + 7, j:j + 7].tobytes() for i in range(0, 28, 7) for j in range(0, 28, 7))
    src = images[np.sort(np.random.default_rng([3, 1001]).choice(40, 10, replace=False))]
    assert all(tiles(a) == tiles(b) for a, b in zip(one["tile_shuffle"], src))
