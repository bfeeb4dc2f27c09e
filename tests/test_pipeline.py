"""The train task end to end on tiny synthetic data: outputs, metrics contract, seeds, resume."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from fevae.pipeline.train import train
from fevae.training import load_state_dict
from pipeline import save_run_config, train_cfg
from reference import assert_matches_reference

pytestmark = pytest.mark.slow

SETS = ["fashionmnist", "mnist", "mnist_saltpepper"]
IDS = ("vae", "fe", "fevae", "fevae_l2", "fevae_l3", "fevae_l4")
SCORES = [f"log_p_{s}_{m}" for m in ("pr", "apo") for s in IDS] + ["iwae", "input_complexity", "likelihood_regret", "likelihood_ratio", "jigsaw_loss"]
#: the in-distribution-fitted detectors (of eval.detectors): scored on every part, no Monte-Carlo error of their own
FITTED = [f"standardised_fevae{side}_{m}" for side in ("", "_two_sided") for m in ("pr", "apo")] + ["dose", "fused"]
#: every score but likelihood regret, the likelihood ratio (a difference of two estimates on common noise) and the
#: Jigsaw loss (exact: no sampling) is a Monte-Carlo log-mean-exp with a stored standard error
EXACT = ("likelihood_regret", "likelihood_ratio", "jigsaw_loss")
MCSE = [f"mcse__{k}" for k in SCORES if k not in EXACT]
#: ... and the effective sample size of its S weights
ESS = [f"ess__{k}" for k in SCORES if k not in EXACT]
#: likelihood regret's random subset: the dataset indices of the images it scored
SUBSET = ["likelihood_regret", "index__likelihood_regret"]
#: TINY's split of the 32 synthetic images of each eval set: 12 validation (from the validation pool of 16,
#: data.eval_split.val_pool=0.5) + the 16 of the test pool for test
N_VAL, N_TEST = 12, 16


def run_train(tmp_path: Path, data_dir: Path, name: str, experiment: str = "v2_gaussian", extra=None) -> Path:
    run_dir = tmp_path / name
    cfg = train_cfg(run_dir, data_dir, experiment, extra)
    save_run_config(cfg, run_dir)
    train(cfg)
    return run_dir


#: each experiment's run draws one choice of eval.figures, and the figures it must (not) have
FIGURE_CHOICE = {"v2_gaussian": "all", "v1_bernoulli": "paper", "v3_continuous_bernoulli": "none"}
PAPER_FIGURES = {"fig1a_log_p_vae", "fig1b_log_p_fevae", "fig2_saltpepper", "detectors_auroc"}


@pytest.mark.parametrize("experiment", ["v1_bernoulli", "v2_gaussian", "v3_continuous_bernoulli"])
def test_every_experiment_trains_scores_and_reports(tmp_path, synthetic_data_dir, experiment):
    run_dir = run_train(tmp_path, synthetic_data_dir, "run", experiment, extra=[f"eval.figures={FIGURE_CHOICE[experiment]}"])
    for rel in ["checkpoints/vae/best.ckpt", "checkpoints/vae/last.ckpt", "checkpoints/jigsaw/best.ckpt",
                "checkpoints/jigsaw/last.ckpt", "mixture.npz", "mixture_l2.npz", "mixture_l3.npz", "mixture_l4.npz",
                "metrics.json", "report.md", "timings.json"]:
        assert (run_dir / rel).is_file(), rel
    assert list((run_dir / "tensorboard" / "vae").glob("events.out.tfevents.*"))
    assert list((run_dir / "tensorboard" / "eval").glob("events.out.tfevents.*"))
    pngs, pdfs = ({p.stem for p in (run_dir / "figures").glob(f"*.{ext}")} for ext in ("png", "pdf"))
    assert pngs == pdfs
    if FIGURE_CHOICE[experiment] == "none":
        assert not pngs and "figures/" not in (run_dir / "report.md").read_text()
    elif FIGURE_CHOICE[experiment] == "paper":
        assert pngs == PAPER_FIGURES
    else:  # all: a histogram per score too
        assert pngs > PAPER_FIGURES | {"hist_iwae", "hist_fe", "hist_jigsaw_loss"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["in_distribution"] == "fashionmnist"
    assert set(metrics["ood"]) == {"mnist", "mnist_saltpepper"}
    assert metrics["n"] == {name: N_TEST for name in SETS} and metrics["n_val"] == {name: N_VAL for name in SETS}
    assert metrics["bootstrap"]["n_resamples"] >= 1000
    for block in ("ood", "ood_val"):  # ood_val mirrors ood (validation parts)
        assert set(metrics[block]) == {"mnist", "mnist_saltpepper"}
        for ood in metrics[block].values():
            assert set(ood) >= {"PR", "APO"}
            for scheme in ("PR", "APO"):
                assert set(ood[scheme]) == {*IDS, "standardised_fevae", "standardised_fevae_two_sided"}
            assert set(ood["other"]) == {"iwae", "input_complexity", "likelihood_regret", "likelihood_ratio", "jigsaw_loss", "dose", "fused"}
            for scheme in ("PR", "APO", "other"):
                for m in ood[scheme].values():  # the test parts: also the conformal flags against the validation scores
                    conformal = {"conformal_fpr", "conformal_tpr"} if block == "ood" else set()
                    assert set(m) == {"auroc", "auprc", "aupr_out", "fpr95", "auroc_ci", "auprc_ci", "aupr_out_ci", "fpr95_ci", *conformal}
                    for key in ("auroc", "auprc", "aupr_out", "fpr95"):
                        lo, hi = m[f"{key}_ci"]
                        assert 0.0 <= lo <= hi <= 1.0 and 0.0 <= m[key] <= 1.0
    assert metrics["n_scored"] == {"likelihood_regret": {name: 8 for name in SETS}}  # smoke: eval.regret.subset=8
    assert metrics["n_scored_val"] == {"likelihood_regret": {name: 8 for name in SETS}}
    stages = {key.split("/")[-1] for key in json.loads((run_dir / "timings.json").read_text())}  # models trained alone or side by side
    assert stages - {"train_side_by_side"} == {"train_vae", "train_background", "train_jigsaw", "fit_mixture", "score", "write_outputs"}
    for name in SETS:
        for rel, n in ((f"{name}.npz", N_TEST), (f"val/{name}.npz", N_VAL)):
            with np.load(run_dir / "scores" / rel, allow_pickle=False) as z:
                assert sorted(z.files) == sorted(SCORES + FITTED + MCSE + ESS + SUBSET[1:])
                assert all(z[k].shape == ((8,) if k in SUBSET else (n,)) and np.isfinite(z[k]).all() for k in z.files)
                assert all((z[k] >= 0).all() for k in MCSE) and all(((z[k] >= 1 - 1e-9) & (z[k] <= 4 + 1e-9)).all() for k in ESS)  # S=4
    report = (run_dir / "report.md").read_text()
    assert "Validation vs test" in report and "Monte-Carlo error" in report and "[" in report


def test_same_seed_gives_identical_weights_and_scores(tmp_path, synthetic_data_dir):
    a = run_train(tmp_path, synthetic_data_dir, "a")
    b = run_train(tmp_path, synthetic_data_dir, "b")
    c = run_train(tmp_path, synthetic_data_dir, "c", extra=["seed=7"])
    for name in ("vae", "jigsaw"):
        wa, wb = (load_state_dict(r / "checkpoints" / name / "last.ckpt") for r in (a, b))
        assert all(torch.equal(wa[k], wb[k]) for k in wa)
    for name in SETS:
        sa, sb, sc = (np.load(r / "scores" / f"{name}.npz") for r in (a, b, c))
        for k in SCORES:
            np.testing.assert_array_equal(sa[k], sb[k])
        assert not np.array_equal(sa["log_p_vae_pr"], sc["log_p_vae_pr"])
    # ... and the same as the run recorded before the package was re-laid out (#27: behaviour unchanged)
    assert_matches_reference(a)


def test_interrupted_training_resumes_to_the_same_weights(tmp_path, synthetic_data_dir):
    two = ["budget.vae.trainer.max_epochs=2", "budget.jigsaw.trainer.max_epochs=2"]
    straight = run_train(tmp_path, synthetic_data_dir, "straight", extra=two)
    # "interrupted": the same run folder trained for one epoch, then resumed to two
    resumed = run_train(tmp_path, synthetic_data_dir, "resumed", extra=["budget.vae.trainer.max_epochs=1", "budget.jigsaw.trainer.max_epochs=1"])
    (resumed / "mixture.npz").unlink()
    run_train(tmp_path, synthetic_data_dir, "resumed", extra=[*two, "resume=true"])
    for name in ("vae", "jigsaw"):
        ws, wr = (load_state_dict(r / "checkpoints" / name / "last.ckpt") for r in (straight, resumed))
        for k in ws:
            torch.testing.assert_close(wr[k], ws[k], rtol=0, atol=0, msg=f"{name}.{k}")
    np.testing.assert_array_equal(np.load(straight / "scores/mnist.npz")["log_p_fevae_apo"],
                                  np.load(resumed / "scores/mnist.npz")["log_p_fevae_apo"])
