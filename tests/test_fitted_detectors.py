"""Detectors fitted on the in-distribution validation images (fevae/detectors/): numbers against
independent computations, fitted on ID validation only, plain-array state, wired into a run."""

from __future__ import annotations

import json

import numpy as np
import pytest

from fevae.detectors import build_fitted, fit_detectors, load_fitted, save_fitted
from fevae.detectors.dose import BANDWIDTHS, Dose
from fevae.detectors.fisher import StandardisedFevae
from fevae.errors import FevaeError

COLS = ["log_p_vae_pr", "log_p_fe_pr", "log_p_vae_apo", "log_p_fe_apo", "iwae", "input_complexity"]


def _set(n: int, seed: int, shift: float = 0.0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    scales = {"log_p_vae_pr": 300.0, "log_p_fe_pr": 40.0, "log_p_vae_apo": 200.0, "log_p_fe_apo": 30.0, "iwae": 200.0, "input_complexity": 50.0}
    return {c: rng.normal(-shift * s, s, n) for c, s in scales.items()}


def test_standardised_fevae_is_fishers_sum_of_empirical_left_tails():
    val, test = _set(50, 0), _set(30, 1, shift=0.5)
    det = StandardisedFevae(["PR", "APO"])
    det.fit(val)
    out = det.score(test)
    assert sorted(out) == ["standardised_fevae_apo", "standardised_fevae_pr", "standardised_fevae_two_sided_apo", "standardised_fevae_two_sided_pr"]
    for scheme in ("pr", "apo"):
        expected = []
        for i in range(30):
            total = 0.0
            for term in ("vae", "fe"):
                col = f"log_p_{term}_{scheme}"
                below = sum(1 for v in val[col] if v <= test[col][i])  # ties count as "at most"
                total += np.log((1 + below) / (len(val[col]) + 1))
            expected.append(total)
        np.testing.assert_allclose(out[f"standardised_fevae_{scheme}"], expected, rtol=0, atol=1e-12)
    # an image below every validation value gets the floor 1/(n+1) per term; above every one, 1 (log 0)
    low = {c: np.array([-1e9]) for c in COLS}
    high = {c: np.array([1e9]) for c in COLS}
    assert det.score(low)["standardised_fevae_apo"][0] == pytest.approx(2 * np.log(1 / 51))
    assert det.score(high)["standardised_fevae_apo"][0] == pytest.approx(0.0)


def test_the_two_sided_variant_flags_a_likelihood_too_high_as_well_as_too_low():
    val = _set(50, 0)
    det = StandardisedFevae(["APO"])
    det.fit(val)
    low, mid, high = ({c: np.array([-1e9]) for c in COLS}, {c: np.array([np.median(val[c])]) for c in COLS}, {c: np.array([1e9]) for c in COLS})
    one, two = "standardised_fevae_apo", "standardised_fevae_two_sided_apo"
    assert det.score(high)[one][0] == pytest.approx(0.0) and det.score(high)[two][0] == pytest.approx(2 * np.log(2 / 51))
    assert det.score(low)[two][0] == pytest.approx(2 * np.log(2 / 51))
    assert det.score(mid)[two][0] > np.log(0.9) * 2  # the middle of the validation values: p ≈ 1 per term


def test_conformal_p_values_against_a_brute_force_count():
    from fevae.metrics.conformal import flagged_rates, p_values

    rng = np.random.default_rng(3)
    cal, s = np.round(rng.normal(size=40), 1), np.round(rng.normal(size=25) * 1.5, 1)  # ties on purpose
    left = [(1 + sum(c <= v for c in cal)) / 41 for v in s]
    right = [(1 + sum(c >= v for c in cal)) / 41 for v in s]
    np.testing.assert_allclose(p_values(cal, s), left, rtol=1e-12)
    np.testing.assert_allclose(p_values(cal, s, two_sided=True), np.minimum(1, 2 * np.minimum(left, right)), rtol=1e-12)
    rates = flagged_rates(cal, s, s - 3)
    assert rates == {"conformal_fpr": float(np.mean(np.array(left) <= 0.05)),
                     "conformal_tpr": float(np.mean(p_values(cal, s - 3) <= 0.05))}
    # exchangeable scores: P(p <= alpha) <= alpha, and close to it
    flagged = [np.mean(p_values(rng.normal(size=199), rng.normal(size=400)) <= 0.05) for _ in range(200)]
    assert abs(np.mean(flagged) - 0.05) < 0.005


class _Memory:
    """A fitted detector that scores 1 for a value it was fitted on, else 0 (for the cross-fitting tests)."""

    name = "memory"

    def needs(self):
        return ["iwae"]

    def outputs(self):
        return ["memory"]

    def fit(self, id_val):
        self.seen = set(np.asarray(id_val["iwae"]).tolist())

    def score(self, scores):
        return {"memory": np.array([float(v in self.seen) for v in scores["iwae"]])}


def test_cross_fitting_never_scores_an_image_with_a_state_fitted_on_it():
    from fevae.detectors.base import cross_fit

    val, test = _set(23, 1), _set(10, 2)
    det = _Memory()
    oof = cross_fit(det, val, folds=5, seed=0)["memory"]
    assert len(oof) == 23 and (oof == 0).all()  # every image scored by a fit that did not see it
    assert not hasattr(det, "seen")  # the detector itself is left unfitted
    out = fit_detectors([det], {"val/fashionmnist": val, "fashionmnist": {**test, "iwae": val["iwae"][:10]}}, "val/fashionmnist")
    assert (out["val/fashionmnist"]["memory"] == 0).all()  # the validation part: out of fold
    assert (out["fashionmnist"]["memory"] == 1).all()  # other sets: the fit on every validation image
    in_sample = fit_detectors([_Memory()], {"val/fashionmnist": val}, "val/fashionmnist", folds=0)
    assert (in_sample["val/fashionmnist"]["memory"] == 1).all()


class _Centred:
    """A fitted detector whose score is minus the distance of ``iwae`` from its fitted mean (for the p-value tests)."""

    name = "centred"

    def fit(self, id_val):
        self.mean = float(np.mean(id_val["iwae"]))

    def score(self, scores):
        return {"centred": -np.abs(np.asarray(scores["iwae"]) - self.mean)}


def test_cross_conformal_p_values_against_a_brute_force_count():
    from fevae.detectors.base import CrossFit
    from fevae.metrics.conformal import p_values

    val, test = _set(37, 3), _set(15, 4, shift=0.02)
    fit = CrossFit(_Centred(), val, folds=5, seed=0)
    n, expected = 37, np.ones(15)
    for i in range(15):
        for j in range(n):  # image j's held-out score and the test image's, both under the copy fitted without j's fold
            mean = np.mean(val["iwae"][fit.fold_of != fit.fold_of[j]])
            expected[i] += -abs(val["iwae"][j] - mean) <= -abs(test["iwae"][i] - mean)
    np.testing.assert_allclose(fit.p_values(test)["centred"], expected / (n + 1), rtol=0, atol=1e-12)
    # what a run's metrics get: fit_detectors hands each named set's cross-conformal p-values over, the same
    p = {}
    fit_detectors([_Centred()], {"val/fashionmnist": val, "fashionmnist": test, "val/mnist": test}, "val/fashionmnist",
                  p_values=p, p_value_sets=["fashionmnist"])
    assert list(p) == ["fashionmnist"]
    np.testing.assert_array_equal(p["fashionmnist"]["centred"], fit.p_values(test)["centred"])
    # a score that does not depend on the fit: the plain conformal p-value against the validation scores
    plain = CrossFit(_Memory(), {"iwae": val["iwae"]}, folds=5).p_values({"iwae": test["iwae"]})["memory"]
    np.testing.assert_allclose(plain, p_values(np.zeros(n), np.zeros(15)))


def test_fused_flags_five_percent_of_new_in_distribution_images_cross_conformally():
    from fevae.detectors.base import CrossFit, cross_fit
    from fevae.detectors.fused import Fused
    from fevae.metrics.conformal import p_values

    rng = np.random.default_rng(11)
    cols = ["log_p_vae_apo", "log_p_fe_apo", "iwae", "input_complexity", "jigsaw_loss"]

    def draw(n):  # five statistics, a quarter of the images four times as spread (a scale mixture, as real runs have)
        z = rng.normal(size=(n, 5))
        z[np.arange(n) % 4 == 0] *= 4
        return {c: z[:, i] for i, c in enumerate(cols)}

    val, new = draw(500), draw(20000)
    cross = np.mean(CrossFit(Fused(cols), val, seed=0).p_values(new)["fused"] <= 0.05)
    det = Fused(cols)
    oof = cross_fit(det, val)["fused"]
    det.fit(val)
    refit = np.mean(p_values(oof, det.score(new)["fused"]) <= 0.05)
    assert 0.035 <= cross <= 0.065, cross  # what the run and the recommendation rule now use
    assert refit < 0.02, refit  # the full fit against out-of-fold scores (the procedure before) flags far too few


def test_fused_is_sklearns_gaussian_mixture_with_components_by_held_out_likelihood(tmp_path):
    from sklearn.mixture import GaussianMixture
    from sklearn.model_selection import KFold

    from fevae.detectors.fused import COMPONENTS, Fused

    rng = np.random.default_rng(5)
    n = 600  # two clusters in the statistics: more than one component should win
    val = {c: np.where(np.arange(n) % 2, 1.0, -1.0) * 3 + rng.normal(size=n) for c in ("log_p_vae_apo", "log_p_fe_apo")}
    test = {c: rng.normal(size=50) * 4 for c in val}
    det = Fused.for_run(["APO"], [])
    assert det.needs() == ["log_p_vae_apo", "log_p_fe_apo"]  # the defaults this run computes
    det.fit(val)
    x = np.column_stack([val[c] for c in det.needs()])
    z = (x - x.mean(0)) / x.std(0)
    cv = {k: np.mean([GaussianMixture(k, covariance_type="full", reg_covar=1e-4, random_state=0).fit(z[a]).score(z[b])
                      for a, b in KFold(5, shuffle=True, random_state=0).split(z)]) for k in COMPONENTS}
    assert det.n_components == max(cv, key=cv.get) > 1
    ref = GaussianMixture(det.n_components, covariance_type="full", reg_covar=1e-4, random_state=0).fit(z)
    q = (np.column_stack([test[c] for c in det.needs()]) - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(det.score(test)["fused"], ref.score_samples(q), rtol=1e-10)
    # plain-array state, round trip
    save_fitted(tmp_path / "detectors.npz", [det])
    again = Fused.for_run(["APO"], [])
    load_fitted(tmp_path / "detectors.npz", [again])
    np.testing.assert_allclose(again.score(test)["fused"], det.score(test)["fused"], rtol=1e-12)
    # the KDE option is DoSE's KDE over the same statistics
    kde = Fused.for_run(["APO"], [], density="kde")
    kde.fit(val)
    dose = Dose(["log_p_vae_apo", "log_p_fe_apo"])
    dose.fit(val)
    np.testing.assert_allclose(kde.score(test)["fused"], dose.score(test)["dose"], rtol=1e-12)
    with pytest.raises(FevaeError, match=r"detector.fused.stats has statistics the run does not compute: \['jigsaw_loss'\]"):
        Fused.for_run(["APO"], [], stats=["jigsaw_loss"])
    with pytest.raises(FevaeError, match="detector.fused.density='tree' is invalid"):
        Fused.for_run(["APO"], [], density="tree")


def test_dose_is_sklearns_kde_with_the_cross_validated_bandwidth():
    from sklearn.model_selection import KFold
    from sklearn.neighbors import KernelDensity

    val, test = _set(60, 2), _set(20, 3, shift=1.0)
    det = Dose.for_run(["PR", "APO"], ["iwae", "input_complexity"])
    assert det.needs() == COLS
    det.fit(val)
    x = np.column_stack([val[c] for c in COLS])
    z = (x - x.mean(0)) / x.std(0)
    cv = []  # the same 5 folds, scored by hand
    for h in BANDWIDTHS:
        folds = KFold(5, shuffle=True, random_state=0).split(z)
        cv.append(np.mean([KernelDensity(bandwidth=h).fit(z[a]).score(z[b]) for a, b in folds]))
    assert det.bandwidth == pytest.approx(BANDWIDTHS[int(np.argmax(cv))])
    q = (np.column_stack([test[c] for c in COLS]) - x.mean(0)) / x.std(0)
    np.testing.assert_allclose(det.score(test)["dose"], KernelDensity(bandwidth=det.bandwidth).fit(z).score_samples(q), rtol=1e-12)
    assert Dose.for_run(["APO"], []).needs() == ["log_p_vae_apo", "log_p_fe_apo"]


def test_fitted_on_the_id_validation_part_only_and_added_to_every_set(caplog):
    scores = {"fashionmnist": _set(40, 4), "mnist": _set(40, 5, 1.0), "val/fashionmnist": _set(40, 6), "val/mnist": _set(40, 7, 1.0)}
    fitted = build_fitted(["standardised_fevae", "dose"], ["PR", "APO"], ["iwae", "input_complexity"])
    out = fit_detectors(fitted, scores, "val/fashionmnist")
    assert all({"standardised_fevae_pr", "standardised_fevae_apo", "dose"} <= set(cols) for cols in out.values())
    assert "dose" not in scores["mnist"]  # the input is left as it was
    # the same fit whatever the OOD and test images are
    other = {**scores, "mnist": _set(40, 8, 3.0), "fashionmnist": _set(40, 9), "val/mnist": _set(40, 10, 2.0)}
    refit = build_fitted(["standardised_fevae", "dose"], ["PR", "APO"], ["iwae", "input_complexity"])
    again = fit_detectors(refit, other, "val/fashionmnist")
    np.testing.assert_array_equal(again["val/fashionmnist"]["dose"], out["val/fashionmnist"]["dose"])
    np.testing.assert_array_equal(again["val/fashionmnist"]["standardised_fevae_apo"], out["val/fashionmnist"]["standardised_fevae_apo"])
    # no validation part: left out, with a warning
    with caplog.at_level("WARNING"):
        none = fit_detectors(build_fitted(["dose"], ["PR", "APO"], []), {"fashionmnist": _set(5, 1)}, "val/fashionmnist")
    assert "dose" not in none["fashionmnist"] and "left out" in caplog.text


def test_state_is_plain_arrays_and_round_trips(tmp_path):
    val, test = _set(40, 11), _set(15, 12, 0.7)
    fitted = build_fitted(["standardised_fevae", "dose"], ["PR", "APO"], ["iwae", "input_complexity"])
    for det in fitted:
        det.fit(val)
    save_fitted(tmp_path / "detectors.npz", fitted)
    with np.load(tmp_path / "detectors.npz", allow_pickle=False) as archive:
        assert all(archive[k].dtype != object for k in archive.files)
    loaded = build_fitted(["standardised_fevae", "dose"], ["PR", "APO"], ["iwae", "input_complexity"])
    load_fitted(tmp_path / "detectors.npz", loaded)
    for a, b in zip(fitted, loaded):
        for k, v in a.score(test).items():
            np.testing.assert_array_equal(v, b.score(test)[k])
    with pytest.raises(FevaeError, match="detectors.npz is missing"):
        load_fitted(tmp_path / "nope" / "detectors.npz", loaded)
    with pytest.raises(FevaeError, match=r"stored dose state has \(40, 6\) points for 4 statistics"):
        load_fitted(tmp_path / "detectors.npz", build_fitted(["dose"], ["PR", "APO"], []))


def test_bad_names_and_missing_columns_are_one_error():
    with pytest.raises(FevaeError, match=r"eval.detectors has unknown detectors \['lr'\]"):
        build_fitted(["lr"])
    det = build_fitted(["dose"], ["PR", "APO"], ["iwae"])[0]
    with pytest.raises(FevaeError, match=r"dose needs the score columns \['iwae'\]"):
        det.fit({c: v for c, v in _set(20, 0).items() if c != "iwae"})


def test_a_run_reports_them_and_the_score_api_applies_the_stored_fit(tmp_path, synthetic_data_dir):
    from fevae.api import load_run
    from fevae.pipeline.train import train
    from helpers import labelled_images
    from pipeline import save_run_config, train_cfg

    run_dir = tmp_path / "run"
    cfg = train_cfg(run_dir, synthetic_data_dir, extra=["separation.enabled=false"])
    train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    for block in ("ood", "ood_val"):
        assert {"standardised_fevae"} <= set(metrics[block]["mnist"]["APO"]) and "dose" in metrics[block]["mnist"]["other"]
    assert (run_dir / "detectors.npz").is_file()
    save_run_config(cfg, run_dir)
    frame = load_run(run_dir).score(labelled_images(12, seed=9)[0])
    assert {"standardised_fevae_pr", "standardised_fevae_apo", "dose"} <= set(frame.columns)
    det = build_fitted(["standardised_fevae"], ["PR", "APO"], [])[0]
    load_fitted(run_dir / "detectors.npz", [det])
    np.testing.assert_array_equal(det.score({c: frame[c].to_numpy() for c in det.needs()})["standardised_fevae_apo"],
                                  frame["standardised_fevae_apo"].to_numpy())


def test_fitted_costs_add_their_own_time_to_the_dearest_column_they_read_per_scheme():
    from fevae.detectors.base import fitted_costs

    costs = {"PR": {"vae": 1.0, "fe": 2.0, "fevae": 2.0}, "APO": {"vae": 3.0, "fe": 4.0, "fevae": 4.0},
             "other": {"iwae": 5.0, "input_complexity": 6.0}}
    fitted = build_fitted(["standardised_fevae", "dose"], ["PR", "APO"], ["iwae", "input_complexity"])
    seconds = {"score/standardised_fevae": 10.0, "score/dose": 20.0, "fit/dose": 99.0}  # the fit is one-off: not per image
    out = fitted_costs(fitted, seconds, 10, costs)
    assert out["PR"]["standardised_fevae"] == 2.0 + 1.0 and out["APO"]["standardised_fevae"] == 4.0 + 1.0
    assert out["other"]["dose"] == 2.0 + 6.0 + 2.0  # PR's dearest + APO's (other-block columns reuse its draws) + its own
