"""The validation/test protocol: split of the evaluation sets, bootstrap intervals, Monte-Carlo
errors, seeds aggregated over a sweep, and that nothing that selects reads a test metric."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf
from sklearn.metrics import average_precision_score, roc_auc_score, roc_curve

from fevae.metrics.bootstrap import Resampler, resample_weights, weighted_ood_metrics, weighted_std
from fevae.outputs.sweep import aggregate_seeds, best_job, plot_heatmaps, write_summary
from fevae.data.datamodule import EVAL_SETS, FevaeDataModule, split_eval_indices
from fevae.errors import FevaeError
from fevae.evaluation.settings import check_optimized_metric, selectable_metrics
from fevae.metrics.ood import compute_split_metrics, load_scores, ood_metrics, save_scores
from fevae.outputs.report import NOT_SHOWN, SHOWN, UNDECIDED
from fevae.outputs.claims import evaluate_claims
from fevae.scoring.estimators import RunningLogMeanExp, log_mean_exp, log_mean_exp_se
from pipeline import compose_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"


# ------------------------------------------------------------------------------------ split
def test_split_is_disjoint_sorted_deterministic_and_independent_of_the_run_seed(synthetic_data_dir):
    val, test = split_eval_indices(100, 30, 50, seed=0)
    assert len(val) == 30 and len(test) == 50 and not set(val) & set(test)
    assert np.all(np.diff(val) > 0) and np.all(np.diff(test) > 0)
    np.testing.assert_array_equal(split_eval_indices(100, 30, 50, seed=0)[1], test)
    assert not np.array_equal(split_eval_indices(100, 30, 50, seed=1)[1], test)
    rest = split_eval_indices(100, 30, None, seed=0)
    assert sorted([*rest[0], *rest[1]]) == list(range(100))
    np.testing.assert_array_equal(rest[0], val)  # the validation part does not depend on the test size
    with pytest.raises(FevaeError, match="eval_split"):
        split_eval_indices(100, 60, 50, seed=0)

    def dm(seed: int) -> FevaeDataModule:
        d = FevaeDataModule(synthetic_data_dir, val_size=8, seed=seed, eval_split={"val": 10, "test": 15, "seed": 3})
        d.setup()
        return d

    a, b = dm(0), dm(99)  # the run's seed changes training, not which images are validation / test
    for name in EVAL_SETS:
        va, ta = a.eval_val_sets[name].tensors[2], a.eval_sets[name].tensors[2]
        assert len(va) == 10 and len(ta) == 15 and not set(va.tolist()) & set(ta.tolist())
        assert torch.equal(ta, b.eval_sets[name].tensors[2]) and torch.equal(va, b.eval_val_sets[name].tensors[2])
    # salt-and-pepper MNIST is split like MNIST: a corrupted validation digit is never a test digit
    assert torch.equal(a.eval_val_sets["mnist"].tensors[2], a.eval_val_sets["mnist_saltpepper"].tensors[2])
    # items carry their position in the whole set, and the pixels match that position
    full = FevaeDataModule(synthetic_data_dir, val_size=8, eval_split={"val": 0, "test": None, "seed": 3})
    full.setup()
    x, _, i = a.eval_sets["fashionmnist"][4]
    assert torch.equal(x, full.eval_sets["fashionmnist"][int(i)][0])
    assert list(a.eval_loaders()) == [*EVAL_SETS, *(f"val/{n}" for n in EVAL_SETS)]


def test_the_shipped_profiles_split_every_set():
    for profile, (val, test) in {"cpu": (1000, 2000), "paper": (2000, None), "smoke": (32, 64)}.items():
        cfg = OmegaConf.load(CONF / "profile" / f"{profile}.yaml")
        assert (cfg.data.eval_split.val, cfg.data.eval_split.test) == (val, test)


# ------------------------------------------------------------------------------- bootstrap
@pytest.fixture
def two_sets():
    rng = np.random.default_rng(0)
    s_in, s_out = rng.normal(1.0, 1.0, 300), rng.normal(0.0, 1.0, 200)
    s_in[:10] = np.round(s_in[:10])  # ties inside and across the classes
    s_out[:10] = np.round(s_out[:10])
    return s_in, s_out


def test_weighted_metrics_equal_sklearn_with_sample_weights(two_sets):
    s_in, s_out = two_sets
    ones = weighted_ood_metrics(s_in, s_out, np.ones((1, 300)), np.ones((1, 200)))
    plain = ood_metrics(s_in, s_out)
    for key in ("auroc", "auprc", "aupr_out", "fpr95"):
        assert ones[key][0] == pytest.approx(plain[key], abs=1e-12)
    rng = np.random.default_rng(1)
    w_in, w_out = resample_weights(300, 5, rng), resample_weights(200, 5, rng)
    assert (w_in.sum(1) == 300).all() and (w_out.sum(1) == 200).all()  # stratified: class sizes kept
    got = weighted_ood_metrics(s_in, s_out, w_in, w_out)
    y, s = np.r_[np.ones(300), np.zeros(200)], np.r_[s_in, s_out]
    for r in range(5):
        sw = np.r_[w_in[r], w_out[r]]
        fpr, tpr, _ = roc_curve(y, s, sample_weight=sw, drop_intermediate=False)
        assert got["auroc"][r] == pytest.approx(roc_auc_score(y, s, sample_weight=sw), abs=1e-12)
        assert got["auprc"][r] == pytest.approx(average_precision_score(y, s, sample_weight=sw), abs=1e-12)
        # AUPR-OUT (pytorch-ood's): OOD positive, ranked by the negated score
        assert got["aupr_out"][r] == pytest.approx(average_precision_score(1 - y, -s, sample_weight=sw), abs=1e-12)
        assert got["fpr95"][r] == pytest.approx(fpr[np.argmax(tpr >= 0.95 - 1e-12)], abs=1e-12)


def test_bootstrap_intervals_are_seeded_cover_the_estimate_and_shrink_with_n():
    rng = np.random.default_rng(2)
    small = rng.normal(0.8, 1, 200), rng.normal(0, 1, 200)
    large = rng.normal(0.8, 1, 3000), rng.normal(0, 1, 3000)
    r = Resampler(1000, 0.95, seed=5)
    ci = r.intervals(*small, "a", "b")
    assert ci == Resampler(1000, 0.95, seed=5).intervals(*small, "a", "b")
    assert ci != Resampler(1000, 0.95, seed=6).intervals(*small, "a", "b")
    point = ood_metrics(*small)
    for key in ("auroc", "auprc", "aupr_out", "fpr95"):
        lo, hi = ci[f"{key}_ci"]
        assert lo < point[key] < hi
    width = lambda c: c["auroc_ci"][1] - c["auroc_ci"][0]  # noqa: E731
    assert width(r.intervals(*large, "a", "b")) < 0.5 * width(ci)  # ~1/sqrt(n)
    # a paired difference of a score with itself is exactly zero; with an independent one it is not
    pair = {"in": small[0], "out": small[1]}
    assert r.difference(pair, pair, "a", "b") == [0.0, 0.0]
    other = {"in": small[0] + rng.normal(0, 1, 200), "out": small[1] + rng.normal(0, 1, 200)}
    lo, hi = r.difference(pair, other, "a", "b")
    assert lo < hi


def test_weighted_std_matches_numpy_on_materialised_resamples():
    rng = np.random.default_rng(3)
    values = rng.normal(size=50)
    w = resample_weights(50, 4, rng)
    for row, expected in zip(w, weighted_std(values, w)):
        assert expected == pytest.approx(np.std(np.repeat(values, row.astype(int)), ddof=1), rel=1e-10)


def test_split_metrics_mirror_test_and_validation(two_sets):
    s_in, s_out = two_sets
    test = {"fashionmnist": {"log_p_vae_apo": s_in, "iwae": s_in}, "mnist": {"log_p_vae_apo": s_out, "iwae": s_out}}
    val = {"fashionmnist": {"log_p_vae_apo": s_in[:100], "iwae": s_in[:100]},
           "mnist": {"log_p_vae_apo": s_out[:80], "iwae": s_out[:80]}}
    m = compute_split_metrics(test, val, resampler=Resampler(200, 0.9, 0))
    assert m["n"] == {"fashionmnist": 300, "mnist": 200} and m["n_val"] == {"fashionmnist": 100, "mnist": 80}
    assert m["ood"]["mnist"]["APO"]["vae"]["auroc"] == pytest.approx(ood_metrics(s_in, s_out)["auroc"])
    assert m["ood_val"]["mnist"]["APO"]["vae"]["auroc"] == pytest.approx(ood_metrics(s_in[:100], s_out[:80])["auroc"])
    assert set(m["ood_val"]["mnist"]["other"]["iwae"]) == {"auroc", "auprc", "aupr_out", "fpr95", "auroc_ci", "auprc_ci", "aupr_out_ci",
                                                           "fpr95_ci"}
    assert m["bootstrap"]["n_resamples"] == 200 and m["bootstrap"]["level"] == 0.9
    json.dumps(m, allow_nan=False)
    assert "auroc_ci" not in compute_split_metrics(test, val)["ood"]["mnist"]["APO"]["vae"]
    # each test block: the conformal flags at 5% against the in-distribution validation scores, nothing on ood_val
    block = m["ood"]["mnist"]["APO"]["vae"]
    p_in = (1 + np.searchsorted(np.sort(s_in[:100]), s_in, side="right")) / 101
    p_out = (1 + np.searchsorted(np.sort(s_in[:100]), s_out, side="right")) / 101
    assert block["conformal_fpr"] == pytest.approx(np.mean(p_in <= 0.05)) and block["conformal_tpr"] == pytest.approx(np.mean(p_out <= 0.05))
    assert m["conformal"]["alpha"] == 0.05 and m["conformal"]["n"] == 100 and "cross-conformal" in m["conformal"]["calibration"]
    assert "conformal_fpr" not in m["ood_val"]["mnist"]["APO"]["vae"]
    # a fitted detector's column: its cross-conformal p-values, when given for both sets, decide (not the validation scores)
    given = {"fashionmnist": {"log_p_vae_apo": np.linspace(0, 1, len(s_in))}, "mnist": {"log_p_vae_apo": np.full(len(s_out), 0.01)}}
    block = compute_split_metrics(test, val, p_values=given)["ood"]["mnist"]["APO"]["vae"]
    assert block["conformal_fpr"] == pytest.approx(np.mean(given["fashionmnist"]["log_p_vae_apo"] <= 0.05)) and block["conformal_tpr"] == 1.0


# ----------------------------------------------------------------------- Monte-Carlo error
def test_mc_standard_error_is_the_delta_method_and_streams():
    torch.manual_seed(0)
    x = torch.randn(40, 7, dtype=torch.float64) * 3 + 100.0  # log-weights far from 0: needs log space
    w = torch.exp(x - x.max(0).values)
    ref = w.std(0, unbiased=True) / (math.sqrt(40) * w.mean(0))  # sd(w) / (sqrt(S) mean(w)), scale-free
    torch.testing.assert_close(log_mean_exp_se(x, 0), ref)
    acc = RunningLogMeanExp()
    for chunk in x.split(6):
        acc.update(chunk)
    torch.testing.assert_close(acc.compute(), log_mean_exp(x, 0))
    torch.testing.assert_close(acc.compute_se(), ref)
    assert torch.all(log_mean_exp_se(torch.zeros(10, 3, dtype=torch.float64), 0) == 0)  # equal weights: no error
    assert log_mean_exp_se(torch.tensor([[0.0], [-1e4]], dtype=torch.float64), 0).item() == pytest.approx(1.0)


def test_score_files_keep_mc_errors_apart(tmp_path):
    path = save_scores(tmp_path / "s.npz", {"log_p_vae_pr": np.arange(3.0)}, {"log_p_vae_pr": np.full(3, 0.5)})
    assert list(load_scores(path)) == ["log_p_vae_pr"]
    np.testing.assert_array_equal(load_scores(path, mc_se=True)["log_p_vae_pr"], np.full(3, 0.5))


# ------------------------------------------------------------- selection reads validation
def _cfg(tmp_path, *extra):
    return compose_cfg("train", tmp_path / "run", ["+experiment=v2_gaussian", *extra])


def test_optimized_metric_defaults_to_validation_and_test_metrics_are_refused(tmp_path):
    cfg = _cfg(tmp_path)
    assert cfg.optimized_metric == "ood_val/mnist/APO/fevae/auroc"  # the data config's first OOD set
    assert _cfg(tmp_path, "data=cifar10").optimized_metric == "ood_val/svhn/APO/fevae/auroc"
    assert "optimized_metric" not in OmegaConf.load(CONF / "hparams_search" / "optuna.yaml")  # Optuna maximises train.yaml's
    check_optimized_metric(cfg)
    assert cfg.optimized_metric in selectable_metrics(cfg)
    assert all(k.startswith("ood_val/") for k in selectable_metrics(cfg))
    with pytest.raises(FevaeError, match="reads the test images"):
        check_optimized_metric(_cfg(tmp_path, "optimized_metric=ood/mnist/APO/fevae/auroc"))
    with pytest.raises(FevaeError, match="not a metric this run writes.*ood_val/mnist/APO/fevae/auroc"):
        check_optimized_metric(_cfg(tmp_path, "optimized_metric=ood_val/mnist/APO/fevea/auroc"))
    with pytest.raises(FevaeError, match="needs validation images"):
        check_optimized_metric(_cfg(tmp_path, "data.eval_split.val=0"))
    check_optimized_metric(_cfg(tmp_path, "optimized_metric=ood_val/mnist_saltpepper/other/iwae/fpr95"))


def _sweep(tmp_path: Path, jobs: list[dict]) -> Path:
    """Job folders with overrides and metrics.json files, as a multirun leaves them."""
    sweep = tmp_path / "sweep"
    for i, job in enumerate(jobs):
        folder = sweep / str(i)
        (folder / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create(job["overrides"]), folder / ".hydra" / "overrides.yaml")
        metric = lambda a: {"auroc": a, "auprc": a, "fpr95": 1 - a}  # noqa: E731
        blocks = {sch: {"fevae": metric(job[sch])} for sch in ("PR", "APO")}
        test_blocks = {sch: {"fevae": metric(job["test_" + sch])} for sch in ("PR", "APO")}
        (folder / "metrics.json").write_text(json.dumps({"ood": {"mnist": test_blocks}, "ood_val": {"mnist": blocks}}))
    return sweep


def test_sweep_best_row_and_heatmap_read_validation_only(tmp_path):
    jobs = [  # job 0 wins on validation, job 1 on test: the summary must pick job 0
        {"overrides": ["fe.n=1", "fe.C=2"], "PR": 0.7, "APO": 0.9, "test_PR": 0.6, "test_APO": 0.80},
        {"overrides": ["fe.n=1", "fe.C=3"], "PR": 0.6, "APO": 0.8, "test_PR": 0.9, "test_APO": 0.99},
    ]
    sweep = _sweep(tmp_path, jobs)
    written = write_summary(sweep, "ood_val/mnist/APO/fevae/auroc")
    text = (sweep / "summary.md").read_text()
    assert "Best job by ood_val/mnist/APO/fevae/auroc (validation, higher is better): job 0" in text
    import pandas as pd

    frame = pd.read_csv(sweep / "summary.csv").fillna({"error": ""})
    row, _ = best_job(frame, "ood/mnist/APO/fevae/auroc")  # a test metric never selects
    assert row is None
    assert (sweep / "heatmap_auroc_n_C.png") in written
    # the heatmap's cells are the validation AUROCs
    import matplotlib.pyplot as plt

    captured = {}
    real = plt.Figure.savefig

    def grab(fig, *args, **kwargs):
        captured["cells"] = sorted(float(t.get_text()) for ax in fig.axes for t in ax.texts)
        return real(fig, *args, **kwargs)

    plt.Figure.savefig = grab
    try:
        plot_heatmaps(frame, sweep)
    finally:
        plt.Figure.savefig = real
    assert captured["cells"] == [0.6, 0.7, 0.8, 0.9]


def test_seed_sweep_is_aggregated_per_group(tmp_path):
    jobs = []
    for C, base in (("2", 0.8), ("3", 0.9)):
        for seed, delta in (("1", -0.01), ("2", 0.0), ("3", 0.01)):
            jobs.append({"overrides": [f"fe.C={C}", f"seed={seed}"], "PR": base + delta, "APO": base + delta,
                         "test_PR": base + 2 * delta, "test_APO": base + 2 * delta})
    sweep = _sweep(tmp_path, jobs)
    write_summary(sweep, "ood_val/mnist/APO/fevae/auroc")
    import pandas as pd

    seeds = pd.read_csv(sweep / "summary_seeds.csv")
    row = seeds[(seeds["group"] == "fe.C=3") & (seeds["metric"] == "ood/mnist/APO/fevae/auroc")].iloc[0]
    assert row["n"] == 3 and row["mean"] == pytest.approx(0.9) and row["sd"] == pytest.approx(0.02)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, df=2)
    assert (row["ci_lo"], row["ci_hi"]) == (pytest.approx(0.9 - half), pytest.approx(0.9 + half))
    assert set(seeds["group"]) == {"fe.C=2", "fe.C=3"} and row["seeds"] == "1 2 3"
    assert "Over seeds" in (sweep / "summary.md").read_text()
    frame = pd.read_csv(sweep / "summary.csv").fillna({"error": ""})
    assert aggregate_seeds(frame.drop(columns=["seed"])) is None


# ------------------------------------------------------------------------- verdicts
def _claims(auroc: float, ci: list[float], lik: str = "bernoulli"):
    metric = {"auroc": auroc, "auprc": 0.5, "fpr95": 0.5, "auroc_ci": ci}
    metrics = {"in_distribution": "fashionmnist", "ood": {"mnist": {"PR": {"vae": metric, "fevae": metric}}}}
    return {c.id: c for c in evaluate_claims(metrics, {}, lik)}


def test_a_verdict_is_undecided_when_its_interval_straddles_the_threshold():
    assert _claims(0.42, [0.40, 0.44])["C1"].verdict == SHOWN
    assert _claims(0.48, [0.45, 0.52])["C1"].verdict == UNDECIDED
    assert _claims(0.55, [0.52, 0.58])["C1"].verdict == NOT_SHOWN
    assert "[0.450, 0.520]" in _claims(0.48, [0.45, 0.52])["C1"].evidence


def test_the_band_claim_is_undecided_when_its_interval_crosses_an_edge():
    def c5(auroc, ci):
        metric = {"auroc": auroc, "auprc": 0.5, "fpr95": 0.5, "auroc_ci": ci}
        metrics = {"in_distribution": "fashionmnist", "ood": {"mnist_saltpepper": {"PR": {"fevae": metric}}}}
        return {c.id: c for c in evaluate_claims(metrics, {}, "bernoulli")}["C5"].verdict

    assert c5(0.50, [0.45, 0.55]) == SHOWN
    assert c5(0.64, [0.60, 0.68]) == UNDECIDED
    assert c5(0.84, [0.82, 0.86]) == NOT_SHOWN
