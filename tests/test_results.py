"""Results layer: OOD metrics, metrics schema, score files, figures and the markdown report."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from sklearn.metrics import roc_auc_score

from fevae.errors import FevaeError
from fevae.metrics.ood import (
    compute_metrics,
    compute_split_metrics,
    flatten_metrics,
    load_all_scores,
    load_scores,
    ood_metrics,
    parse_score_name,
    save_scores,
    write_json_atomic,
)
from fevae.outputs.plots import plot_all, plot_fig1
from fevae.outputs.report import NOT_APPLICABLE, NOT_SHOWN, SHOWN, write_report
from fevae.outputs.claims import evaluate_claims

BASE_SCORES = [f"log_p_{s}_{sch}" for s in ("vae", "fe", "fevae") for sch in ("pr", "apo")]


def _set(rng, n=200, shift=0.0, scale=1.0, extra=()):
    return {name: rng.normal(shift, scale, n) for name in (*BASE_SCORES, *extra)}


# ------------------------------------------------------------------------------------------
# ood_metrics
# ------------------------------------------------------------------------------------------
def test_perfect_separation():
    m = ood_metrics(np.arange(10.0, 20.0), np.arange(0.0, 10.0))
    assert m["auroc"] == 1.0 and m["fpr95"] == 0.0
    assert m["auprc"] == pytest.approx(1.0) and m["aupr_out"] == pytest.approx(1.0)


def test_reversed_separation_is_nalisnick_direction():
    m = ood_metrics(np.arange(0.0, 10.0), np.arange(10.0, 20.0))
    assert m["auroc"] == 0.0
    assert m["fpr95"] == 1.0


def test_identical_distributions_near_chance():
    rng = np.random.default_rng(0)
    m = ood_metrics(rng.normal(size=4000), rng.normal(size=4000))
    assert abs(m["auroc"] - 0.5) < 0.03
    assert abs(m["fpr95"] - 0.95) < 0.03


def test_aupr_in_and_out_sit_at_their_class_shares_by_chance():
    # pytorch-ood's AUPR-IN / AUPR-OUT: with no separation each is its positive class's share of the images
    rng = np.random.default_rng(1)
    m = ood_metrics(rng.normal(size=6000), rng.normal(size=2000))
    assert m["auprc"] == pytest.approx(0.75, abs=0.02) and m["aupr_out"] == pytest.approx(0.25, abs=0.02)
    # negating the score swaps the roles: AUPR-OUT of s is AUPR-IN of -s with the classes swapped
    s_in, s_out = rng.normal(1, 1, 300), rng.normal(0, 1, 100)
    assert ood_metrics(s_in, s_out)["aupr_out"] == pytest.approx(ood_metrics(-s_out, -s_in)["auprc"], abs=1e-12)


def test_auroc_matches_sklearn_with_id_positive():
    rng = np.random.default_rng(1)
    s_in, s_out = rng.normal(0.3, 1, 300), rng.normal(0, 1.5, 500)
    y = np.r_[np.ones(300), np.zeros(500)]
    assert ood_metrics(s_in, s_out)["auroc"] == pytest.approx(roc_auc_score(y, np.r_[s_in, s_out]))


def test_fpr95_hand_example():
    # 20 ID scores 1..20: accepting >= 95% of them needs threshold 2 (19/20 accepted).
    # OOD scores accepted at threshold 2: 2.5, 3, 100 -> 3 of 5.
    m = ood_metrics(np.arange(1.0, 21.0), np.array([0.0, 1.5, 2.5, 3.0, 100.0]))
    assert m["fpr95"] == pytest.approx(0.6)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_refused(bad):
    with pytest.raises(FevaeError, match="non-finite"):
        ood_metrics(np.array([1.0, bad, 2.0]), np.array([0.0, 1.0]))


def test_compute_metrics_names_the_bad_set_and_score():
    rng = np.random.default_rng(2)
    scores = {"fashionmnist": _set(rng), "mnist": _set(rng)}
    scores["mnist"]["log_p_fevae_apo"][[3, 7]] = np.nan
    with pytest.raises(FevaeError) as err:
        compute_metrics(scores)
    msg = str(err.value)
    assert "mnist" in msg and "log_p_fevae_apo" in msg and "2 of 200" in msg


# ------------------------------------------------------------------------------------------
# Names and schema
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "name, expected",
    [
        ("log_p_vae_pr", ("PR", "vae")),
        ("log_p_fevae_apo", ("APO", "fevae")),
        ("log_p_fevae_l2_pr", ("PR", "fevae_l2")),
        ("iwae", ("other", "iwae")),
        ("log_p_iwae", ("other", "iwae")),
        ("input_complexity", ("other", "input_complexity")),
        ("likelihood_regret", ("other", "likelihood_regret")),
    ],
)
def test_parse_score_name(name, expected):
    assert parse_score_name(name) == expected


def test_schema_exact():
    rng = np.random.default_rng(3)
    extra = ("iwae",)
    scores = {
        "fashionmnist": _set(rng, 50, extra=extra),
        "mnist": _set(rng, 40, 1.0, extra=extra),
        "mnist_saltpepper": _set(rng, 30, -1.0),  # no iwae here -> no "other" block
    }
    m = compute_metrics(scores)
    assert set(m) == {"in_distribution", "n", "ood"}
    assert m["in_distribution"] == "fashionmnist"
    assert m["n"] == {"fashionmnist": 50, "mnist": 40, "mnist_saltpepper": 30}
    assert list(m["ood"]) == ["mnist", "mnist_saltpepper"]
    assert list(m["ood"]["mnist"]) == ["PR", "APO", "other"]
    assert list(m["ood"]["mnist_saltpepper"]) == ["PR", "APO"]
    for scheme in ("PR", "APO"):
        assert list(m["ood"]["mnist"][scheme]) == ["vae", "fe", "fevae"]
    assert list(m["ood"]["mnist"]["other"]) == ["iwae"]
    leaf = m["ood"]["mnist"]["APO"]["fevae"]
    assert set(leaf) == {"auroc", "auprc", "aupr_out", "fpr95"}
    assert all(type(v) is float for v in leaf.values())
    json.dumps(m, allow_nan=False)  # plain, finite python values

    flat = flatten_metrics(m)
    assert flat["ood/mnist/APO/fevae/auroc"] == leaf["auroc"]
    assert "ood/mnist/other/iwae/fpr95" in flat
    assert flat["n/mnist"] == 40.0
    assert all(isinstance(v, float) for v in flat.values())


def test_compute_metrics_needs_id_and_ood_sets():
    rng = np.random.default_rng(4)
    with pytest.raises(FevaeError, match="in-distribution"):
        compute_metrics({"mnist": _set(rng)})
    with pytest.raises(FevaeError, match="OOD"):
        compute_metrics({"fashionmnist": _set(rng)})


# ------------------------------------------------------------------------------------------
# Files
# ------------------------------------------------------------------------------------------
def test_scores_round_trip(tmp_path):
    rng = np.random.default_rng(5)
    data = {"fashionmnist": _set(rng, 20, extra=("iwae",)), "mnist": _set(rng, 15)}
    for name, d in data.items():
        save_scores(tmp_path / f"{name}.npz", d)
    assert not [p for p in tmp_path.iterdir() if p.suffix == ".tmp"]
    one = load_scores(tmp_path / "mnist.npz")
    assert set(one) == set(data["mnist"])
    np.testing.assert_array_equal(one["log_p_vae_pr"], data["mnist"]["log_p_vae_pr"])
    assert one["log_p_vae_pr"].dtype == np.float64
    every = load_all_scores(tmp_path)
    assert set(every) == {"fashionmnist", "mnist"}
    np.testing.assert_array_equal(every["fashionmnist"]["iwae"], data["fashionmnist"]["iwae"])


def test_scores_missing_or_corrupt(tmp_path):
    with pytest.raises(FevaeError, match="does not exist"):
        load_scores(tmp_path / "nope.npz")
    bad = tmp_path / "mnist.npz"
    bad.write_bytes(b"not a zip file at all")
    with pytest.raises(FevaeError, match="corrupt"):
        load_scores(bad)
    with pytest.raises(FevaeError):
        load_all_scores(tmp_path / "missing_dir")
    with pytest.raises(FevaeError, match="1-D"):
        save_scores(tmp_path / "x.npz", {"a": np.zeros(3), "b": np.zeros((4, 2))})


def test_subset_scores_cover_the_first_examples():
    """A score shorter than its set (likelihood regret on a subset) is evaluated on what it covers
    and reported under n_scored; AUROC equals sklearn's on those examples."""
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    scores = {s: {"log_p_vae_pr": rng.normal(m, 1, 50), "likelihood_regret": rng.normal(m, 1, 20)}
              for s, m in (("fashionmnist", 1.0), ("mnist", 0.0))}
    metrics = compute_metrics(scores)
    assert metrics["n"] == {"fashionmnist": 50, "mnist": 50}
    assert metrics["n_scored"] == {"likelihood_regret": {"fashionmnist": 20, "mnist": 20}}
    y = np.r_[np.ones(20), np.zeros(20)]
    expected = roc_auc_score(y, np.r_[scores["fashionmnist"]["likelihood_regret"], scores["mnist"]["likelihood_regret"]])
    assert metrics["ood"]["mnist"]["other"]["likelihood_regret"]["auroc"] == pytest.approx(expected, abs=1e-12)


def test_write_json_atomic(tmp_path):
    path = write_json_atomic(tmp_path / "sub" / "metrics.json", {"a": 1.5})
    assert json.loads(path.read_text()) == {"a": 1.5}
    with pytest.raises(FevaeError):
        write_json_atomic(tmp_path / "bad.json", {"a": float("nan")})
    assert not (tmp_path / "bad.json").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["sub"]


# ------------------------------------------------------------------------------------------
# Plots
# ------------------------------------------------------------------------------------------
def test_plot_all_writes_png_and_pdf(tmp_path):
    rng = np.random.default_rng(6)
    scores = {
        "fashionmnist": _set(rng, 80, extra=("iwae", "log_p_fevae_l2_pr")),
        "mnist": _set(rng, 60, 2.0, extra=("iwae", "log_p_fevae_l2_pr")),
        "mnist_saltpepper": _set(rng, 50, 0.1),
    }
    scores["mnist"]["log_p_vae_pr"][:2] = -1e6  # extreme values must not break the plot
    paths = plot_all(scores, tmp_path / "figures", "test run", examples=rng.random((3, 28, 28)))
    names = {p.name for p in paths}
    for stem in ("fig1a_log_p_vae", "fig1b_log_p_fevae", "fig2_saltpepper",
                 "hist_fe", "hist_fevae_l2", "hist_iwae"):
        assert {f"{stem}.png", f"{stem}.pdf"} <= names, stem
    for p in paths:
        assert p.is_file() and p.stat().st_size > 1000


def test_plots_skip_absent_sets(tmp_path):
    rng = np.random.default_rng(7)
    scores = {"fashionmnist": {"log_p_vae_pr": rng.normal(size=30)},
              "mnist": {"log_p_vae_pr": rng.normal(size=30)}}
    paths = plot_all(scores, tmp_path)
    assert sorted(p.name for p in paths) == ["fig1a_log_p_vae.pdf", "fig1a_log_p_vae.png"]
    assert plot_fig1(scores, "fevae", tmp_path / "nothing") == []


# ------------------------------------------------------------------------------------------
# Report and claims
# ------------------------------------------------------------------------------------------
def _bernoulli_like_paper(rng, n=400):
    """Synthetic V1 scores where every Bernoulli claim (C1, C2, C4, C5) holds."""
    fm = {
        "log_p_vae_pr": rng.normal(-300, 40, n), "log_p_vae_apo": rng.normal(-250, 10, n),
        "log_p_fevae_pr": rng.normal(-320, 40, n), "log_p_fevae_apo": rng.normal(-260, 10, n),
    }
    mn = {  # MNIST looks *more* likely under PR; p_FEVAE widens it but does not separate
        "log_p_vae_pr": rng.normal(-200, 30, n), "log_p_vae_apo": rng.normal(-180, 10, n),
        "log_p_fevae_pr": rng.normal(-300, 90, n), "log_p_fevae_apo": rng.normal(-280, 30, n),
    }
    sp = {k: rng.normal(v.mean(), v.std(), n) for k, v in fm.items()}  # fused
    return {"fashionmnist": fm, "mnist": mn, "mnist_saltpepper": sp}


def _bernoulli_against_paper(rng, n=400):
    """Synthetic V1 scores where none of the Bernoulli claims holds."""
    fm = {k: rng.normal(0, 1, n) for k in ("log_p_vae_pr", "log_p_fevae_pr")}
    fm["log_p_vae_apo"] = fm["log_p_vae_pr"] + 0.001  # identical spread -> C2 not shown
    fm["log_p_fevae_apo"] = rng.normal(0, 1, n)
    mn = {"log_p_vae_pr": rng.normal(-5, 2, n), "log_p_vae_apo": rng.normal(-5, 2, n),
          "log_p_fevae_pr": rng.normal(-20, 1, n), "log_p_fevae_apo": rng.normal(-20, 1, n)}
    sp = {k: rng.normal(-10, 1, n) for k in fm}
    return {"fashionmnist": fm, "mnist": mn, "mnist_saltpepper": sp}


INFO = {
    "experiment": "v1_bernoulli",
    "likelihood": "bernoulli",
    "preprocess": "binarise",
    "n_samples": 16,
    "fe": {"layer": 1, "n": 10000, "C": 15, "covariance_type": "full"},
    "eval_subset": 400,
    "profile": "test",
    "wall_time_s": {"train_vae": 12.5, "score": 3.0},
    "figures": ["figures/fig1a_log_p_vae.png", "figures/fig1a_log_p_vae.pdf"],
}


def _verdicts(scores, likelihood):
    claims = evaluate_claims(compute_metrics(scores), scores, likelihood)
    return {c.id: c.verdict for c in claims}


def test_claims_bernoulli_shown_and_not_shown():
    rng = np.random.default_rng(8)
    assert _verdicts(_bernoulli_like_paper(rng), "bernoulli") == {
        "C1": SHOWN, "C2": SHOWN, "C3": NOT_APPLICABLE, "C4": SHOWN, "C5": SHOWN}
    assert _verdicts(_bernoulli_against_paper(rng), "bernoulli") == {
        "C1": NOT_SHOWN, "C2": NOT_SHOWN, "C3": NOT_APPLICABLE, "C4": NOT_SHOWN, "C5": NOT_SHOWN}


def test_claims_gaussian():
    rng = np.random.default_rng(9)
    n = 300
    fm = {"log_p_vae_pr": rng.normal(0, 2, n), "log_p_vae_apo": rng.normal(0, 1, n),
          "log_p_fevae_pr": rng.normal(0, 1, n), "log_p_fevae_apo": rng.normal(0, 1, n)}
    mn = {"log_p_vae_pr": rng.normal(0, 2, n), "log_p_vae_apo": rng.normal(0, 1, n),
          "log_p_fevae_pr": rng.normal(-1, 1, n), "log_p_fevae_apo": rng.normal(-10, 1, n)}
    good = {"fashionmnist": fm, "mnist": mn}
    v = _verdicts(good, "gaussian")
    assert v == {"C1": NOT_APPLICABLE, "C2": SHOWN, "C3": SHOWN, "C4": NOT_APPLICABLE,
                 "C5": NOT_APPLICABLE}
    # APO no better than PR -> C3 not shown
    bad = {"fashionmnist": fm, "mnist": {**mn, "log_p_fevae_pr": rng.normal(-20, 1, n)}}
    assert _verdicts(bad, "gaussian")["C3"] == NOT_SHOWN
    cb = evaluate_claims(compute_metrics(good), good, "continuous_bernoulli")
    c3 = next(c for c in cb if c.id == "C3")
    assert c3.verdict == SHOWN and "analogous" in c3.evidence


def test_claims_missing_scores_not_applicable():
    rng = np.random.default_rng(10)
    scores = {"fashionmnist": {"iwae": rng.normal(size=50)}, "mnist": {"iwae": rng.normal(size=50)}}
    v = _verdicts(scores, "bernoulli")
    assert set(v.values()) == {NOT_APPLICABLE}


def test_report_bernoulli(tmp_path):
    rng = np.random.default_rng(11)
    scores = _bernoulli_like_paper(rng)
    for d in scores.values():
        d["iwae"] = rng.normal(size=400)
    metrics = compute_metrics(scores)
    metrics["cost_s_per_image"] = {"PR": {"vae": 0.002, "fevae": 0.0021}, "other": {"iwae": 0.0019}}
    path = write_report(tmp_path, metrics, scores, INFO)
    assert path == tmp_path / "report.md"
    text = path.read_text()
    assert "# fevae report — v1_bernoulli" in text
    assert "| OOD set | scheme | p_VAE | p_FEVAE |" in text
    assert "| mnist | PR |" in text and "| mnist_saltpepper | APO |" in text
    assert "### Every detector, worst set first: AUROC and what it costs" in text
    assert text.index("| detector | worst set |") < text.index("| OOD set | scheme |")  # the report leads with the worst set
    assert "| detector | worst set | conformal FPR | AUROC mnist | AUROC mnist_saltpepper | cost per image |" in text
    iwae_row = next(line for line in text.splitlines() if line.startswith("| iwae |"))
    aucs = {s: metrics["ood"][s]["other"]["iwae"]["auroc"] for s in ("mnist", "mnist_saltpepper")}
    worst = min(aucs, key=aucs.get)
    assert iwae_row.startswith(f"| iwae | {aucs[worst]:.3f} ({worst}) | — | {aucs['mnist']:.3f} |") and iwae_row.endswith("| 1.90 ms |")
    # with validation scores to calibrate against, the conformal FPR of the test part is reported
    val = {name: {k: v[:200] for k, v in cols.items()} for name, cols in scores.items()}
    calibrated = compute_split_metrics(scores, val)
    fpr = calibrated["ood"]["mnist"]["other"]["iwae"]["conformal_fpr"]
    text = write_report(tmp_path, calibrated, scores, INFO).read_text()
    assert next(line for line in text.splitlines() if line.startswith("| iwae |")).startswith(f"| iwae | {aucs[worst]:.3f} ({worst}) | {fpr:.3f} |")
    assert "| p_FEVAE (PR) |" in text and "| p_VAE (APO) |" in text
    assert "![fig1a_log_p_vae](figures/fig1a_log_p_vae.png)" in text
    assert "fig1a_log_p_vae.pdf)" not in text
    assert "**Cost:**" in text
    assert "| C1: " in text and "**shown**" in text and "**not applicable**" in text
    assert "- **C1 — shown.**" in text and "- **C5 — shown.**" in text
    assert "[0.35, 0.65]" in text


def test_report_gaussian_not_shown(tmp_path):
    rng = np.random.default_rng(12)
    scores = _bernoulli_against_paper(rng)
    info = {**INFO, "likelihood": "gaussian", "experiment": "v2_gaussian"}
    del info["wall_time_s"]
    text = write_report(tmp_path, compute_metrics(scores), scores, info).read_text()
    assert "- **C1 — not applicable.**" in text
    assert "- **C3 — not shown.**" in text  # APO AUROC 1.0 but not > PR AUROC 1.0
    assert "**Cost:**" not in text and "Cost: wall time per image" not in text  # no timings given
    assert "Every detector, worst set first" in text and "| p_VAE (PR) |" in text


def test_the_detector_table_leads_with_the_mean_over_runs_of_each_runs_worst_set():
    import importlib.util

    spec = importlib.util.spec_from_file_location("detector_table", Path(__file__).resolve().parents[1] / "scripts" / "detector_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    runs = [{"a": {"other": {"iwae": {"auroc": a, "conformal_fpr": f}}}, "b": {"other": {"iwae": {"auroc": b, "conformal_fpr": f}}}}
            for a, b, f in ((0.9, 0.6, 0.04), (0.5, 0.7, 0.06))]
    row = next(line for line in mod.table(runs) if line.startswith("| IWAE |"))
    worst = np.array([0.6, 0.5])  # per run, not the min of the means (0.65)
    assert row.startswith(f"| IWAE | {worst.mean():.4f} ± {worst.std(ddof=1):.4f} (b) | 0.0500 ± 0.0141 | 0.7000 ± 0.2828 [nan] |")
    assert not any(line.startswith("| DoSE") for line in mod.table(runs))  # a detector no run has is left out
