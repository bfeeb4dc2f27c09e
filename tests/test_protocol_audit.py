"""The seven defects an independent audit found in what the numbers are *used* for (issue #25): each test
fails on the code before the fix and passes after."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fevae.metrics.bootstrap import Resampler, metric_direction
from fevae.outputs.sweep import best_job, check_search_space, search_space_bounds, write_summary
from fevae.data.datamodule import split_eval_indices
from fevae.errors import FevaeError
from fevae.evaluation.settings import check_optimized_metric, random_subset
from fevae.metrics.ood import compute_metrics
from fevae.outputs.report import NOT_SHOWN, SHOWN, UNDECIDED, render_report
from fevae.outputs.claims import _above, _below, evaluate_claims
from fevae.scoring.estimators import ESS_FLAG, RunningLogMeanExp, log_mean_exp, log_mean_exp_ess, log_mean_exp_se
from fevae.utils.cli import failed_sweep_error
from pipeline import compose_cfg

CONF = Path(__file__).resolve().parents[1] / "conf"


# ----------------------------------------------------------- 1. every metric knows its direction
def _sweep(tmp_path: Path, fpr: list[float], auroc: list[float]) -> Path:
    sweep = tmp_path / "sweep"
    for i, (f, a) in enumerate(zip(fpr, auroc)):
        folder = sweep / str(i)
        (folder / ".hydra").mkdir(parents=True)
        OmegaConf.save(OmegaConf.create([f"fe.n=1", f"fe.C={i + 2}"]), folder / ".hydra" / "overrides.yaml")
        block = {"mnist": {"APO": {"fevae": {"auroc": a, "auprc": a, "fpr95": f}}, "PR": {"fevae": {"auroc": a, "auprc": a, "fpr95": f}}}}
        (folder / "metrics.json").write_text(json.dumps({"ood": block, "ood_val": block}))
    return sweep


def test_fpr95_selects_the_lowest_job_and_optuna_minimises_it(tmp_path):
    assert [metric_direction(m) for m in ("auroc", "ood_val/mnist/APO/fevae/auprc", "ood_val/mnist/APO/fevae/fpr95")] == [
        "maximize", "maximize", "minimize"]
    # FPR95 and AUROC disagree: job 0 has the better AUROC, job 1 the better (lower) FPR95
    sweep = _sweep(tmp_path, fpr=[0.60, 0.05], auroc=[0.95, 0.90])
    import pandas as pd

    written = write_summary(sweep, "ood_val/mnist/APO/fevae/fpr95")
    frame = pd.read_csv(sweep / "summary.csv").fillna({"error": ""})
    row, sentence = best_job(frame, "ood_val/mnist/APO/fevae/fpr95")
    assert int(row["job"]) == 1 and "lower is better" in sentence
    assert int(best_job(frame, "ood_val/mnist/APO/fevae/auroc")[0]["job"]) == 0
    assert "job 1" in (sweep / "summary.md").read_text().split("Best job by", 1)[1].split("\n")[0]
    assert (sweep / "heatmap_fpr95_n_C.png") in written  # the heatmap shows the metric that selects
    cfg = compose_cfg("train", tmp_path / "run", ["+experiment=v2_gaussian", "hparams_search=optuna",
                                                  "optimized_metric=ood_val/mnist/APO/fevae/fpr95"])
    assert cfg.hydra.sweeper.direction == "minimize"
    assert compose_cfg("train", tmp_path / "run", ["+experiment=v2_gaussian", "hparams_search=optuna"]).hydra.sweeper.direction == "maximize"


# ------------------------------------------------------------------- 2. verdict boundaries
def test_an_interval_ending_on_the_threshold_decides_nothing():
    assert _above(0.003, [0.0, 0.006], 0.0) is None  # lower end exactly at the threshold: undecided, not shown
    assert _above(0.003, [0.001, 0.006], 0.0) is True and _above(-0.003, [-0.006, -0.001], 0.0) is False
    assert _below(0.45, [0.40, 0.50], 0.5) is None and _below(0.45, [0.40, 0.49], 0.5) is True
    assert _above(0.5, None, 0.5) is None  # no interval: equal is not above


def test_c3_with_a_difference_interval_starting_at_zero_is_undecided():
    n = 200
    rng = np.random.default_rng(0)
    fm = {"log_p_fevae_apo": rng.normal(10, 1, n), "log_p_fevae_pr": rng.normal(10, 1, n)}
    mn = {"log_p_fevae_apo": rng.normal(-10, 1, n), "log_p_fevae_pr": rng.normal(-10, 1, n)}
    fm["log_p_fevae_pr"][0] = -100.0  # one in-distribution image below every MNIST image under PR only: PR 0.995, APO 1.000
    scores = {"fashionmnist": fm, "mnist": mn}
    boot = {"n_resamples": 200, "level": 0.95, "seed": 1}
    metrics = compute_metrics(scores, resampler=Resampler(**boot))
    metrics["bootstrap"] = boot
    c3 = {c.id: c for c in evaluate_claims(metrics, scores, "gaussian")}["C3"]
    assert "[0.000," in c3.evidence  # APO - PR: some resamples leave the one image out (difference exactly 0)
    assert c3.verdict == UNDECIDED


def test_c5_band_edges_decide_nothing():
    def c5(ci):
        metrics = {"ood": {"mnist_saltpepper": {"PR": {"fevae": {"auroc": sum(ci) / 2, "auroc_ci": ci}}}}}
        return {c.id: c for c in evaluate_claims(metrics, {}, "bernoulli")}["C5"].verdict

    assert c5([0.55, 0.65]) == UNDECIDED  # the upper end on the band's edge (a closed band said shown)
    assert c5([0.50, 0.60]) == SHOWN and c5([0.70, 0.80]) == NOT_SHOWN and c5([0.60, 0.70]) == UNDECIDED


def _c2(pr_sd: float, apo_sd: float) -> str:
    rng = np.random.default_rng(3)
    scores = {"fashionmnist": {"log_p_vae_pr": rng.normal(0, pr_sd, 500), "log_p_vae_apo": rng.normal(0, apo_sd, 500)}}
    metrics = {"bootstrap": {"n_resamples": 200, "level": 0.95, "seed": 0}, "ood": {}}
    return {c.id: c for c in evaluate_claims(metrics, scores, "gaussian")}["C2"].verdict


def test_c2_tests_the_papers_direction():
    assert _c2(pr_sd=2.0, apo_sd=1.0) == SHOWN  # PR wider: the paper's claim
    assert _c2(pr_sd=1.0, apo_sd=2.0) == NOT_SHOWN  # APO wider: the opposite (a folded max/min ratio said shown)
    assert _c2(pr_sd=1.1, apo_sd=1.0) in (UNDECIDED, NOT_SHOWN)


# ------------------------------------------------------------- 3. splits that do not depend on sizes
def test_no_profile_test_image_is_in_any_profile_validation_part():
    pool = OmegaConf.load(CONF / "data" / "base" / "images.yaml").eval_split.val_pool
    sizes = {name: OmegaConf.load(CONF / "profile" / f"{name}.yaml").data.eval_split for name in ("smoke", "cpu", "paper")}
    parts = {name: split_eval_indices(10_000, s.val, s.test, seed=0, val_pool=pool) for name, s in sizes.items()}
    for a, (val_a, _) in parts.items():
        for b, (_, test_b) in parts.items():
            assert not set(val_a) & set(test_b), (a, b)
    # the smaller profiles' parts are parts of the larger ones' (the same ranks, taken further)
    assert set(parts["smoke"][0]) <= set(parts["cpu"][0]) <= set(parts["paper"][0])
    assert set(parts["smoke"][1]) <= set(parts["cpu"][1]) <= set(parts["paper"][1])
    with pytest.raises(FevaeError, match="validation pool"):
        split_eval_indices(10_000, 2_001, None, seed=0, val_pool=pool)
    # without the pool (runs made before it) the parts are the old prefix split, so old runs re-score the same images
    old_val, old_test = split_eval_indices(100, 10, 20, seed=0)
    perm = np.random.default_rng(0).permutation(100)
    assert set(old_val) == set(perm[:10]) and set(old_test) == set(perm[10:30])


def test_the_run_records_the_pool(synthetic_data_dir, tmp_path):
    from fevae.pipeline.stages import make_datamodule
    from pipeline import train_cfg

    data = make_datamodule(train_cfg(tmp_path / "run", synthetic_data_dir), 16)
    record = data.split_record()
    assert record["settings"]["val_pool"] == 0.5 and record["pools"]["mnist"] == {"n": 32, "val_pool": 16}


# ------------------------------------------------- 4. fitted detectors' validation numbers are in-sample
def test_a_fitted_detector_cannot_select(tmp_path):
    for key in ("ood_val/mnist/other/dose/auroc", "ood_val/mnist/APO/standardised_fevae/auroc"):
        cfg = compose_cfg("train", tmp_path / "run", ["+experiment=v2_gaussian", f"optimized_metric={key}"])
        with pytest.raises(FevaeError, match="in-sample"):
            check_optimized_metric(cfg)
    check_optimized_metric(compose_cfg("train", tmp_path / "run", ["+experiment=v2_gaussian", "optimized_metric=ood_val/mnist/other/iwae/auroc"]))


# ------------------------------------------------------ 5. Monte-Carlo error that does not saturate
def test_heavy_tailed_weights_are_flagged_by_their_effective_sample_size():
    torch.manual_seed(0)
    S, repeats, sigma = 20, 400, 10.0
    draws = sigma * torch.randn(repeats, S, dtype=torch.float64)  # log-weights: log-normal weights with sigma = 10 nats
    estimates = log_mean_exp(draws, 1)
    se, ess = log_mean_exp_se(draws, 1), log_mean_exp_ess(draws, 1)
    true_sd = float(estimates.std())
    assert float(se.max()) <= 1.0 + 1e-12 < true_sd / 3  # the delta method saturates at 1 nat, the truth is ~5
    assert float((ess < ESS_FLAG).double().mean()) > 0.9  # and the effective sample size flags it
    even = torch.zeros(1, S, dtype=torch.float64)
    assert float(log_mean_exp_ess(even, 1)) == pytest.approx(S)
    acc = RunningLogMeanExp()
    for chunk in draws.T.split(7):
        acc.update(chunk)
    torch.testing.assert_close(acc.compute_ess(), ess)


def test_report_gives_the_share_of_flagged_images():
    scores = {"fashionmnist": {"log_p_vae_pr": np.zeros(4)}, "mnist": {"log_p_vae_pr": np.ones(4)}}
    mc_se = {s: {"log_p_vae_pr": np.full(4, 1.0), "ess__log_p_vae_pr": np.array([1.0, 2.0, 10.0, 20.0])} for s in scores}
    text = render_report(compute_metrics(scores), scores, {}, mc_se)
    assert "effective sample size" in text and "| 50.0% | 50.0% |" in text


# ------------------------------------------------------------ 6. likelihood regret on a random subset
def test_the_regret_subset_is_random_and_the_same_for_every_seed():
    index = np.arange(5_000, 8_000)
    chosen = random_subset(index, 300, "mnist")
    assert len(chosen) == 300 and np.all(np.diff(chosen) > 0) and set(chosen) <= set(index)
    assert chosen.max() > index[299] + 1000  # not the first 300 by dataset index
    np.testing.assert_array_equal(chosen, random_subset(index, 300, "mnist"))  # depends on no run seed
    assert not np.array_equal(chosen, random_subset(index, 300, "val/mnist"))
    np.testing.assert_array_equal(random_subset(index[:10], 300, "mnist"), index[:10])


def test_a_subset_column_is_compared_on_its_own_images_with_its_own_interval():
    rng = np.random.default_rng(0)
    full = {s: rng.normal(m, 1, 2000) for s, m in (("fashionmnist", 1.0), ("mnist", 0.0))}
    scores = {s: {"iwae": v, "likelihood_regret": v[::20], "index__likelihood_regret": np.arange(0, 2000, 20.0)} for s, v in full.items()}
    metrics = compute_metrics(scores, resampler=Resampler(300, 0.95, 0))
    other = metrics["ood"]["mnist"]["other"]
    assert "index__likelihood_regret" not in other and metrics["n_scored"] == {"likelihood_regret": {"fashionmnist": 100, "mnist": 100}}
    width = lambda m: m["auroc_ci"][1] - m["auroc_ci"][0]  # noqa: E731
    assert width(other["likelihood_regret"]) > 2.5 * width(other["iwae"])  # ~sqrt(20) wider: n = 100, not 2,000


# ------------------------------------------------------------- 7. an Optuna space clamped to the data
def test_a_search_space_beyond_the_data_is_refused_before_the_first_trial(tmp_path):
    assert search_space_bounds({"fe.n": "choice(2000, 5000, 10000)", "fe.C": "int(interval(2, 30))", "fe.pre_activation": "choice(false, true)"}) == {
        "fe.n": (2000.0, 10000.0), "fe.C": (2.0, 30.0)}
    cfg = compose_cfg("train", tmp_path / "run", ["+experiment=v2_gaussian", "hparams_search=optuna", "profile=smoke"])
    with pytest.raises(FevaeError, match="fe.n up to 10000.*data.train_subset=1024"):
        check_search_space(cfg)
    check_search_space(compose_cfg("train", tmp_path / "run", ["+experiment=v2_gaussian", "hparams_search=optuna"]))
    result = subprocess.run([sys.executable, "-m", "fevae.train", "+experiment=v2_gaussian", "hparams_search=optuna", "profile=smoke",
                             f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True, timeout=300)
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == 2 and len(lines) == 1 and lines[0].startswith("error: ") and "fe.n" in lines[0], result.stderr[-2000:]
    assert not any((tmp_path / "sweep").glob("*/metrics.json"))  # no trial ran


def test_a_sweep_whose_every_trial_failed_is_one_error_line():
    err = failed_sweep_error(ValueError("No trials are completed yet."))
    assert isinstance(err, FevaeError) and "every trial of the sweep failed" in str(err)
    assert failed_sweep_error(ValueError("something else")) is None


def test_an_optuna_sweep_whose_every_trial_fails_ends_in_one_error_line(tmp_path, synthetic_data_dir):
    from pipeline import TINY

    tiny = [o for o in TINY if not o.startswith("fe.C=")]
    sweep = tmp_path / "sweep"
    cmd = [sys.executable, "-m", "fevae.train", "-m", "+experiment=v2_gaussian", "hparams_search=optuna", *tiny,
           f"paths.data_dir={synthetic_data_dir}", f"hydra.sweep.dir={sweep}", "hydra.sweeper.n_trials=2", "fe.layer=1",
           "fe.pre_activation=false", "fe.reg_covar=0.001", "fe.n=choice(32)", "fe.C=choice(40,41)", "cache.enabled=false"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    error = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert result.returncode == 2 and len(error) == 1 and "Traceback" not in result.stderr, result.stderr[-3000:]
    assert "every trial of the sweep failed" in error[0] and "fe.n=32 is smaller than fe.C=4" in error[0]


def test_a_subset_record_is_no_histogram():
    from fevae.outputs.dashboard import histogram_table

    scores = {"fashionmnist": {"iwae": np.arange(5.0), "likelihood_regret": np.ones(2), "index__likelihood_regret": np.array([0.0, 3.0])},
              "mnist": {"iwae": np.arange(5.0) + 1}}
    assert [row["score"] for row in histogram_table(scores, "fashionmnist")] == ["iwae", "likelihood_regret"]
