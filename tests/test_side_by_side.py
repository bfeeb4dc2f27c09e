"""Models trained side by side (fevae/side_by_side.py) and the VAE's channels-last training."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fevae.errors import FevaeError
from fevae.models.vae import VAE
from fevae.side_by_side import TrainJob, check_training_config, plan, train_jobs
from fevae.training import load_state_dict
from test_pipeline import run_train

CPU = {"accelerator": "cpu", "devices": 1}


@pytest.mark.parametrize(
    ("training", "trainer", "n_models", "cores", "expected"),
    [
        ({}, CPU, 3, 2, (True, 1)),  # the default on this machine: three models, one thread each
        ({}, CPU, 2, 4, (True, 2)),
        ({}, CPU, 3, 1, (False, None)),  # one core: nothing to gain
        ({}, CPU, 1, 8, (False, None)),  # one model
        ({}, {"accelerator": "gpu", "devices": 1}, 3, 16, (False, None)),
        ({}, {"accelerator": "cpu", "devices": 2, "strategy": "ddp"}, 3, 16, (False, None)),
        ({"side_by_side": False, "threads": 1}, CPU, 3, 2, (False, 1)),
        ({"side_by_side": True}, {"accelerator": "gpu", "devices": 1}, 3, 16, (True, 5)),
        ({"side_by_side": "auto", "threads": 2}, CPU, 3, 2, (True, 2)),
    ],
)
def test_plan_follows_settings_trainer_and_cores(training, trainer, n_models, cores, expected):
    assert plan(OmegaConf.create(training), OmegaConf.create(trainer), n_models, cores=cores) == expected


@pytest.mark.parametrize(("training", "key"), [({"side_by_side": "maybe"}, "side_by_side"), ({"threads": 0}, "threads"),
                                               ({"threads": "2"}, "threads"), ({"threads": True}, "threads")])
def test_invalid_training_settings_are_one_error_naming_the_key(training, key):
    with pytest.raises(FevaeError, match=f"training.{key}="):
        check_training_config(training)


def test_a_failing_model_is_one_error_naming_it_and_ends_the_others(tmp_path):
    marker = tmp_path / "slow-finished"

    def fail():
        raise ValueError("no data\nsecond line")

    def slow():
        import time

        time.sleep(30)
        marker.write_text("done")
        return {}

    jobs = [TrainJob("jigsaw", slow), TrainJob("vae", fail)]
    with pytest.raises(FevaeError, match=r"training the vae model failed: ValueError: no data — see train.log"):
        train_jobs(jobs, True, 1)
    assert not marker.exists()  # the slow one was ended, not waited for


def test_children_return_their_numbers_and_run_on_their_thread_budget():
    jobs = [TrainJob(n, lambda: {"threads": float(torch.get_num_threads())}) for n in ("a", "b")]
    before = torch.get_num_threads()
    train_jobs(jobs, True, 1)
    assert [j.extra for j in jobs] == [{"threads": 1.0}, {"threads": 1.0}]
    train_jobs(jobs, False, 1)
    assert [j.extra for j in jobs] == [{"threads": 1.0}, {"threads": 1.0}]
    assert torch.get_num_threads() == before  # one after another: the thread count is restored


@pytest.mark.slow
def test_side_by_side_trains_the_same_bits_as_one_after_another(tmp_path, synthetic_data_dir):
    """VAE, background VAE and Jigsaw (with its mixtures) side by side == one after another, same threads."""
    one = ["training.threads=1", "eval.detectors=[iwae,likelihood_ratio]", "fe.extra_layers=[]"]
    seq = run_train(tmp_path, synthetic_data_dir, "sequential", extra=[*one, "training.side_by_side=false"])
    side = run_train(tmp_path, synthetic_data_dir, "side", extra=[*one, "training.side_by_side=true"])
    for model in ("vae", "background", "jigsaw"):
        a, b = (load_state_dict(r / "checkpoints" / model / "best.ckpt") for r in (seq, side))
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{model}.{key} differs"
    with np.load(seq / "mixture.npz") as a, np.load(side / "mixture.npz") as b:
        for key in a.files:
            np.testing.assert_array_equal(a[key], b[key])
    for part in (seq / "scores").glob("*.npz"):
        with np.load(part) as a, np.load(side / "scores" / part.name) as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{part.name}:{key}")
    timings = json.loads((side / "timings.json").read_text())
    assert {"train_side_by_side", *(f"train_side_by_side/{k}" for k in ("train_vae", "train_background", "train_jigsaw", "fit_mixture"))} <= timings.keys()
    assert "train_side_by_side" not in json.loads((seq / "timings.json").read_text())


def test_channels_last_training_is_the_same_optimisation():
    """The same loss and gradients from the same weights and noise in the plain and channels-last layouts, to float
    rounding (the gradients, not RMSprop's first update: that is lr·sign(g) and flips with the rounding of g ≈ 0).
    (Without dropout: its masks are drawn in memory order, so the two layouts drop other pixels, as two seeds would.)"""
    x = torch.rand(16, 1, 28, 28)
    losses, weights = [], []
    for channels_last in (False, True):
        torch.manual_seed(0)
        vae = VAE({"name": "gaussian", "sigma": "scalar"}, dropout=0.0, channels_last=channels_last).train()
        if channels_last:
            vae.to(memory_format=torch.channels_last)
        torch.manual_seed(1)
        loss = -vae.elbo(x.contiguous(memory_format=torch.channels_last) if channels_last else x)["elbo"].mean()
        loss.backward()
        losses.append(loss.item())
        weights.append(torch.cat([p.grad.flatten() for p in vae.parameters()]))
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)
    scale = weights[0].abs().max().item()
    torch.testing.assert_close(weights[0], weights[1], rtol=1e-3, atol=1e-5 * scale)
    with pytest.raises(FevaeError, match="channels_last"):
        VAE({"name": "gaussian", "sigma": "scalar"}, channels_last="yes")



CHILD_OPENMP = """
import numpy as np
from sklearn.cluster import KMeans  # sklearn (and its own libgomp) before torch, as in a test session
x = np.random.default_rng(0).normal(size=(2000, 10))
expected = KMeans(5, n_init=1, random_state=0).fit(x).inertia_  # the parent's OpenMP pool exists from here on
from fevae.side_by_side import TrainJob, train_jobs
jobs = [TrainJob(n, lambda: {"inertia": float(KMeans(5, n_init=1, random_state=0).fit(x).inertia_)}) for n in "ab"]
train_jobs(jobs, True, 1)
assert all(abs(j.extra["inertia"] - expected) < 1e-6 * expected for j in jobs), [j.extra for j in jobs]
print("ok")
"""


def test_a_child_runs_openmp_after_the_parent_did():
    """libgomp is not fork-safe: after an OpenMP region in the parent (a mixture fit's KMeans), a forked child's
    multi-threaded region waited forever for pool threads fork did not copy (it hung the test suite)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", CHILD_OPENMP], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]
