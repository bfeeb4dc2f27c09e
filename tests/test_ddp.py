"""Scoring under DDP (2 CPU processes, gloo) equals single-process scoring, sample by sample."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch.distributed as dist

from fevae.errors import FevaeError
from fevae.pipeline.train import train
from fevae.utils.cli import user_errors
from pipeline import save_run_config, train_cfg


def evaluate_cli(run_dir, out_dir, *extra):
    cmd = [sys.executable, "-m", "fevae.evaluate", f"run_dir={run_dir}", f"hydra.run.dir={out_dir}",
           "trainer.enable_progress_bar=false", "eval.batch_size=7", *extra]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    return result


@pytest.mark.parametrize("fails", [False, True])
def test_an_entry_point_leaves_without_a_live_process_group(tmp_path, fails):
    """A rank that exits with a live gloo group can abort at shutdown (SIGABRT) after its work is done."""
    seen = {}

    @user_errors
    def task():
        dist.init_process_group("gloo", init_method=f"file://{tmp_path / 'rendezvous'}", rank=0, world_size=1)
        seen["initialized"] = dist.is_initialized()
        if fails:
            raise FevaeError("bad input")
        return 7

    if fails:
        with pytest.raises(SystemExit) as exit_info:
            task()
        assert exit_info.value.code == FevaeError.exit_code
    else:
        assert task() == 7
    assert seen["initialized"] and not dist.is_initialized()


@pytest.mark.slow
def test_two_process_scores_equal_one_process_scores(tmp_path, synthetic_data_dir):
    run_dir = tmp_path / "run"
    cfg = train_cfg(run_dir, synthetic_data_dir, extra=["data.eval_split.test=15", "eval.regret.subset=11", "eval.regret.batch_size=4"])  # 15, 11: odd
    save_run_config(cfg, run_dir)
    train(cfg)
    evaluate_cli(run_dir, tmp_path / "one")
    evaluate_cli(run_dir, tmp_path / "two", "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2")
    for name, n_part in [(n, 15) for n in ("fashionmnist", "mnist", "mnist_saltpepper")] + [("val/mnist", 12)]:
        one = np.load(tmp_path / "one" / "scores" / f"{name}.npz")
        two = np.load(tmp_path / "two" / "scores" / f"{name}.npz")
        assert sorted(one.files) == sorted(two.files)
        assert "likelihood_regret" in one.files and "iwae" in one.files and "log_p_fevae_l4_apo" in one.files
        for key in one.files:
            n = 11 if key in ("likelihood_regret", "index__likelihood_regret") else n_part  # regret: its random eval.regret.subset images
            assert one[key].shape == two[key].shape == (n,)  # no duplicate, no missing sample
            # Same noise per sample (seeded by index); the ranks batch other images together, so the
            # float32 decoder/Jigsaw arithmetic differs by rounding only: relative 1e-6 is float32's
            # precision (~6e-8) amplified by the float64 Mahalanobis terms (~1e6 nats).
            # The regret is a difference of two ELBOs after 3 Adam steps: compare it absolutely.
            # A Monte-Carlo standard error is a ratio of sums of exp(log-weights): it amplifies that
            # rounding (~1e-5 relative), so compare it absolutely too (errors are O(0.1-1) nats).
            # The likelihood ratio is a difference of two IWAEs of ~1e3 nats each: compare it absolutely too.
            # DoSE and fused are densities fitted on the other scores, so their rounding moves them (~2e-5 relative): absolutely.
            absolute = key in ("likelihood_regret", "likelihood_ratio", "dose", "fused") or key.startswith(("mcse__", "ess__"))
            tol = {"atol": 1e-3, "rtol": 1e-6} if absolute else {"rtol": 2e-6}  # (fused reaches ~6e3 nats)
            np.testing.assert_allclose(two[key], one[key], **tol, err_msg=f"{name}/{key}")
    # the log holds each message once: rank 1 logs only its warnings, tagged (fevae.utils.log.RankFilter)
    lines = (tmp_path / "two" / "evaluate.log").read_text().splitlines()
    assert sum("Initializing distributed" in line for line in lines) == 1, [l for l in lines if "Initializing distributed" in l]
    assert all("[WARNING]" in line or "[ERROR]" in line for line in lines if "[rank " in line)
    assert sum("evaluation written to" in line for line in lines) == 1


def test_rank_filter_keeps_rank_zero_and_tags_other_ranks_warnings():
    import logging

    from fevae.utils.log import RankFilter

    def record(level, msg="m"):
        return logging.LogRecord("fevae", level, __file__, 1, msg, None, None)

    assert RankFilter(0).filter(record(logging.INFO)) and RankFilter(0).filter(record(logging.DEBUG))
    assert not RankFilter(1).filter(record(logging.INFO))
    warning = record(logging.WARNING, "slow")
    assert RankFilter(3).filter(warning) and RankFilter(3).filter(warning) and warning.getMessage() == "[rank 3] slow"  # tagged once


@pytest.mark.parametrize("rank", [0, 1])
def test_under_ddp_rank_zero_alone_fits_the_mixtures_and_the_others_receive_them(monkeypatch, tmp_path, rank):
    from types import SimpleNamespace

    import torch

    from fevae.features import fitting

    fitted, saved, sent = [], [], {4: "rank 0's arrays"}
    monkeypatch.setattr(fitting, "restore_best_weights", lambda trainer, module: None)
    monkeypatch.setattr(fitting, "fit_feature_mixtures", lambda *a, **k: fitted.append(rank) or sent)
    monkeypatch.setattr(fitting, "save_mixtures", lambda out_dir, arrays, fe: saved.append(arrays))

    class Strategy:
        def broadcast(self, obj, src=0):
            assert src == 0 and obj == (sent if rank == 0 else None)
            return sent

    trainer = SimpleNamespace(is_global_zero=rank == 0, world_size=2, strategy=Strategy(), datamodule=SimpleNamespace(train_set=None))
    callback = fitting.MixtureCallback({"n": 2}, seed=0, out_dir=tmp_path)
    callback.on_train_end(trainer, torch.nn.Linear(1, 1))
    assert callback.mixtures == sent  # every rank holds the mixtures ...
    assert fitted == ([0] if rank == 0 else [])  # ... fitted once, on rank 0
    assert saved == ([sent] if rank == 0 else [])


def _numbers(tree, path=""):
    """``{path: value}`` of every number in a parsed metrics.json but the timings (``cost_s_per_image``)."""
    if isinstance(tree, dict):
        return {k: v for key, sub in tree.items() if key != "cost_s_per_image" for k, v in _numbers(sub, f"{path}/{key}").items()}
    if isinstance(tree, list):
        return {k: v for i, sub in enumerate(tree) for k, v in _numbers(sub, f"{path}[{i}]").items()}
    return {path: tree} if isinstance(tree, (int, float)) and not isinstance(tree, bool) else {}


@pytest.mark.slow
def test_two_process_training_fits_the_mixtures_once_and_one_process_reproduces_them_and_the_metrics(tmp_path, synthetic_data_dir):
    """`trainer=ddp` training on 2 CPU processes (gloo). DDP splits each batch over the ranks (BatchNorm statistics
    and the ELBO's noise per rank), so its weights are not a 1-process training's; what fevae adds after the
    weights must equal one process's: the mixtures (fitted on rank 0 alone, broadcast) equal a 1-process refit
    from the run's Jigsaw, and the metrics equal a 1-process `fevae.evaluate` of the run; each log line once."""
    import json

    from pipeline import TINY

    from fevae.features.fitting import fit_feature_mixtures, load_mixtures
    from fevae.pipeline.runs import load_run
    from fevae.pipeline.stages import make_datamodule

    run_dir = tmp_path / "ddp"
    overrides = ["+experiment=v2_gaussian", f"paths.data_dir={synthetic_data_dir}", *TINY, "eval.regret.subset=6",
                 "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "trainer.sync_batchnorm=false", f"hydra.run.dir={run_dir}"]
    result = subprocess.run([sys.executable, "-m", "fevae.train", *overrides], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    trained = load_run(run_dir)
    saved = load_mixtures(run_dir, trained.cfg.fe)
    refit = fit_feature_mixtures(trained.jigsaw.eval(), make_datamodule(trained.cfg, 16).train_set, trained.cfg.fe, trained.cfg.seed)
    assert sorted(saved) == sorted(refit) == [1, 2, 3, 4]
    for layer in saved:
        for field in ("weights", "means", "covariances", "precisions_cholesky"):
            np.testing.assert_allclose(getattr(saved[layer], field), getattr(refit[layer], field), rtol=1e-6, atol=1e-9, err_msg=f"layer {layer} {field}")
    evaluate_cli(run_dir, tmp_path / "one")
    two = _numbers(json.loads((run_dir / "metrics.json").read_text()))
    one = _numbers(json.loads((tmp_path / "one" / "metrics.json").read_text()))
    assert sorted(one) == sorted(two) and any("/auroc" in k for k in one)
    for key in one:  # scores equal up to float32 rounding (test above), so their AUROCs, FPRs, intervals too
        assert one[key] == pytest.approx(two[key], rel=1e-5, abs=1e-6), key
    log = (run_dir / "train.log").read_text()
    lines = log.splitlines()
    assert sum("Initializing distributed" in line for line in lines) == 1
    assert sum("run folder:" in line for line in lines) == 1
    assert all("[WARNING]" in line or "[ERROR]" in line for line in lines if "[rank " in line)
    assert "sync_dist" not in log  # the models' epoch metrics are averaged over the ranks (no Lightning warning)
    assert "Grad strides do not match" not in log  # channels-last is set before DDP lays out its buckets


def test_ddp_training_on_the_cpu_refuses_sync_batchnorm_before_any_work():
    from omegaconf import OmegaConf

    from fevae.pipeline.checks import check_sync_batchnorm

    ddp = {"strategy": "ddp", "sync_batchnorm": True}
    with pytest.raises(FevaeError, match="sync_batchnorm=false"):
        check_sync_batchnorm(OmegaConf.create({**ddp, "accelerator": "cpu"}))
    check_sync_batchnorm(OmegaConf.create({**ddp, "accelerator": "cpu", "sync_batchnorm": False}))
    check_sync_batchnorm(OmegaConf.create({**ddp, "accelerator": "gpu"}))  # CUDA: Lightning's SyncBatchNorm
    check_sync_batchnorm(OmegaConf.create({"strategy": "auto", "sync_batchnorm": True, "accelerator": "cpu"}))  # one process
