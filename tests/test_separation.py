"""Separation during training (issue #15, item 2): histograms of a cheap score of fixed ID and OOD
validation images every k epochs of both trainings, their AUROCs, the cost bound, and no effect on the weights."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from sklearn.metrics import roc_auc_score
from sklearn.mixture import GaussianMixture

from fevae.monitor import VaeSeparation, separation_callbacks
from fevae.outputs.dashboard import HIST_BINS, binned
from fevae.errors import FevaeError
from fevae.evaluation.settings import score_stream
from fevae.scoring.noise import noise_stream, per_sample_normal
from fevae.pipeline.stages import make_datamodule
from fevae.training import fit_model, load_checkpoint
from fevae.pipeline.checks import validate_config
from pipeline import train_cfg

SETS = ["fashionmnist", "mnist", "mnist_saltpepper"]
N_VAL = 12  # pipeline.TINY: data.eval_split.val=12, fewer than separation.n_images
#: 3 epochs of each model; the Jigsaw evaluated every 2 epochs (1 and 3: the last epoch always is). Deterministic
#: algorithms: on a GPU two trainings of the VAE differ (cuDNN's convolution gradients) with or without the callback
EPOCHS = ["budget.vae.trainer.max_epochs=3", "budget.jigsaw.trainer.max_epochs=3", "separation.jigsaw.every_n_epochs=2",
          "separation.max_cost_fraction=1.0", "trainer.deterministic=true"]
VAE_EPOCHS, JIGSAW_EPOCHS = [1, 2, 3], [1, 3]
TAGS = {"vae": "separation/apo_log_p_vae", "jigsaw": "separation/log_p_fe"}


def train_both(run_dir: Path, data_dir: Path, extra: list[str]) -> dict[str, list]:
    """Train the VAE and the Jigsaw as fevae.train does (without scoring); the separation callbacks of each."""
    cfg = train_cfg(run_dir, data_dir, extra=extra)
    validate_config(cfg)
    callbacks = {}
    for name in ("vae", "jigsaw"):
        callbacks[name] = separation_callbacks(name, cfg, run_dir)
        fit_model(name, make_datamodule(cfg, cfg.budget[name].batch_size), cfg, run_dir, callbacks=list(callbacks[name]))
    return callbacks


def accumulator(folder: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder), size_guidance={"tensors": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def runs(tmp_path_factory) -> dict[str, Path]:
    from helpers import make_data_dir

    root = tmp_path_factory.mktemp("separation")
    data = make_data_dir(root / "data")
    with_cb = train_both(root / "with", data, EPOCHS)
    without = train_both(root / "without", data, [*EPOCHS, "separation.enabled=false"])
    assert [len(c) for c in with_cb.values()] == [1, 1] and [len(c) for c in without.values()] == [0, 0]
    return {"with": root / "with", "without": root / "without", "data": data}


@pytest.mark.slow
def test_histograms_and_aurocs_of_both_trainings(runs):
    run = runs["with"]
    for model, epochs in (("vae", VAE_EPOCHS), ("jigsaw", JIGSAW_EPOCHS)):
        tb = run / "tensorboard" / model
        record = json.loads((run / f"separation_{model}.json").read_text())
        assert [e["epoch"] for e in record["evaluations"]] == epochs and record["skipped_epochs"] == []
        assert record["in_distribution"] == "fashionmnist" and list(record["sets"]) == SETS
        assert 0 < record["seconds"] < record["train_seconds"] and record["cost_fraction"] == pytest.approx(record["seconds"] / record["train_seconds"])
        for s in SETS:  # one run per set, the same tag in each: the sets side by side, each evaluation a step
            acc = accumulator(tb / "separation" / s)
            assert acc.PluginTagToContent("histograms").keys() == {TAGS[model]}
            assert s in acc.SummaryMetadata(TAGS[model]).display_name
            events = acc.Tensors(TAGS[model])
            assert [e.step for e in events] == epochs
            for event, evaluation in zip(events, record["evaluations"]):
                from tensorboard.util import tensor_util

                b = tensor_util.make_ndarray(event.tensor_proto)
                assert b.shape == (HIST_BINS, 3)
                assert b[0, 0] == pytest.approx(evaluation["range"][0]) and b[-1, 1] == pytest.approx(evaluation["range"][1])
                assert b[:, 2].sum() + evaluation["outside"][s] == N_VAL  # every image: in a bin or counted outside
        scalars = accumulator(tb)
        steps = [e["global_step"] for e in record["evaluations"]]
        for s in SETS[1:]:
            points = scalars.Scalars(f"val/separation/auroc/{s}")
            assert [p.step for p in points] == steps  # with the training curves (x = global step)
            assert [p.value for p in points] == pytest.approx([e["auroc"][s] for e in record["evaluations"]], abs=1e-6)
        assert "val/separation/auroc/fashionmnist" not in scalars.Tags()["scalars"]
        assert {"train/loss", "val/loss"} <= set(scalars.Tags()["scalars"])


@pytest.mark.slow
def test_the_callback_changes_no_weight_and_no_random_draw(runs):
    for model in ("vae", "jigsaw"):
        for ckpt in ("best.ckpt", "last.ckpt"):
            a = load_checkpoint(runs["with"] / "checkpoints" / model / ckpt)
            b = load_checkpoint(runs["without"] / "checkpoints" / model / ckpt)
            assert a["state_dict"].keys() == b["state_dict"].keys()
            assert all(torch.equal(a["state_dict"][k], b["state_dict"][k]) for k in a["state_dict"]), (model, ckpt)
            assert torch.equal(a["fevae_rng"]["torch"], b["fevae_rng"]["torch"])  # the global RNG drew the same numbers
            for sa, sb in zip(a["optimizer_states"][0]["state"].values(), b["optimizer_states"][0]["state"].values()):
                assert all(torch.equal(sa[k], sb[k]) for k in sa if isinstance(sa[k], torch.Tensor))
    assert not (runs["without"] / "separation_vae.json").exists()
    assert not (runs["without"] / "tensorboard" / "vae" / "separation").exists()


@pytest.mark.slow
def test_the_logged_aurocs_are_sklearns_on_independently_computed_scores(runs):
    """The last evaluation (end of the last epoch) scored the weights of last.ckpt: recompute its scores here."""
    from fevae.models.jigsaw import Jigsaw
    from fevae.models.vae import VAE

    run = runs["with"]
    cfg = train_cfg(run, runs["data"], extra=EPOCHS)
    dm = make_datamodule(cfg, 16)
    images = {s: (dm.eval_val_sets[s].tensors[0], dm.eval_val_sets[s].tensors[2]) for s in SETS}
    vae = VAE.load_from_checkpoint(run / "checkpoints" / "vae" / "last.ckpt", map_location="cpu", weights_only=True).eval()
    jigsaw = Jigsaw.load_from_checkpoint(run / "checkpoints" / "jigsaw" / "last.ckpt", map_location="cpu", weights_only=True).eval()
    scores: dict[str, dict[str, np.ndarray]] = {"vae": {}, "jigsaw": {}}
    with torch.no_grad():
        features = lambda x: jigsaw.features(x, layer=int(cfg.fe.layer)).double().numpy()  # noqa: E731
        mixture = GaussianMixture(cfg.separation.jigsaw.components, covariance_type=cfg.fe.covariance_type, reg_covar=cfg.fe.reg_covar,
                                  max_iter=200, random_state=cfg.seed).fit(features(dm.train_set.tensors[0][:1000]))
        for s, (x, index) in images.items():
            S = cfg.separation.vae.n_samples  # APO log p_VAE = log (1/S) sum_s p(x | z_s), z_s = mu + sigma * eps_s
            mu, logvar = vae.encode(x)
            eps = per_sample_normal(index, cfg.seed, S, mu.shape[-1], stream=noise_stream(score_stream(s, "APO"), "APO"))
            ll = torch.stack([vae.log_likelihood(x, vae.decode(mu + torch.exp(0.5 * logvar) * eps[k])).double() for k in range(S)])
            scores["vae"][s] = (torch.logsumexp(ll, 0) - math.log(S)).numpy()
            scores["jigsaw"][s] = mixture.score_samples(features(x))
    for model in ("vae", "jigsaw"):
        last = json.loads((run / f"separation_{model}.json").read_text())["evaluations"][-1]
        logged = {p.step: p.value for p in accumulator(run / "tensorboard" / model).Scalars("val/separation/auroc/mnist")}
        ours = scores[model]
        expected = roc_auc_score(np.r_[np.ones(N_VAL), np.zeros(N_VAL)], np.r_[ours["fashionmnist"], ours["mnist"]])
        assert last["auroc"]["mnist"] == pytest.approx(expected, abs=1e-12)
        assert logged[last["global_step"]] == pytest.approx(expected, abs=1e-6)  # TensorBoard stores float32
        from tensorboard.util import tensor_util

        for s in SETS:  # the last histogram holds these scores
            event = accumulator(run / "tensorboard" / model / "separation" / s).Tensors(TAGS[model])[-1]
            _, counts, outside = binned(ours[s], *last["range"])
            np.testing.assert_array_equal(tensor_util.make_ndarray(event.tensor_proto)[:, 2], counts)
            assert outside == last["outside"][s]


@pytest.mark.slow
def test_the_cost_bound_skips_evaluations_and_without_tensorboard_only_the_aurocs_are_logged(tmp_path, synthetic_data_dir):
    run = tmp_path / "run"
    cfg = train_cfg(run, synthetic_data_dir, extra=["budget.vae.trainer.max_epochs=3", "separation.max_cost_fraction=1e-6",
                                                    "separation.sets=[mnist]", "logger=csv"])
    (callback,) = separation_callbacks("vae", cfg, run)
    fit_model("vae", make_datamodule(cfg, cfg.budget.vae.batch_size), cfg, run, callbacks=[callback])
    assert [e["epoch"] for e in callback.evaluations] == [1]  # the first measures the cost; the next would exceed the bound
    assert callback.skipped == [2, 3]
    assert 0 < callback.seconds < callback.train_seconds
    assert list(callback.images) == ["fashionmnist", "mnist"]
    assert not (run / "tensorboard").exists()
    with open(run / "csv" / "vae" / "metrics.csv") as handle:
        rows = list(csv.DictReader(handle))
    values = [r["val/separation/auroc/mnist"] for r in rows if r.get("val/separation/auroc/mnist")]
    assert len(values) == 1 and float(values[0]) == pytest.approx(callback.evaluations[0]["auroc"]["mnist"])
    record = json.loads((run / "separation_vae.json").read_text())
    assert record["skipped_epochs"] == [2, 3] and list(record["sets"]) == ["fashionmnist", "mnist"]


@pytest.mark.parametrize("override, message", [
    ("separation.enabled=1", r"separation.enabled=1 is invalid"),
    ("separation.n_images=0", r"separation.n_images=0 is invalid"),
    ("separation.max_cost_fraction=0", r"separation.max_cost_fraction=0 is invalid.*\(0, 1\]"),
    ("separation.max_cost_fraction=1.5", r"separation.max_cost_fraction=1.5 is invalid"),
    ("separation.sets=mnist", r"separation.sets='mnist' is invalid"),
    ("separation.sets=[mnist,mnist]", r"separation.sets=\['mnist', 'mnist'\] is invalid"),
    ("separation.vae.every_n_epochs=-1", r"separation.vae.every_n_epochs=-1 is invalid"),
    ("separation.vae.n_samples=0", r"separation.vae.n_samples=0 is invalid"),
    ("separation.vae.scheme=IWAE", r"separation.vae.scheme='IWAE' is invalid.*APO.*PR"),
    ("separation.jigsaw.components=2.5", r"separation.jigsaw.components=2.5 is invalid"),
    ("separation.jigsaw.n_fit=3", r"separation.jigsaw.n_fit=3 is smaller than separation.jigsaw.components=5"),
    ("+separation.vae.every=2", r"separation.vae has unknown settings \['every'\]"),
    ("+separation.bins=10", r"separation has unknown settings \['bins'\]"),
])
def test_invalid_settings_are_one_error(tmp_path, synthetic_data_dir, override, message):
    cfg = train_cfg(tmp_path / "run", synthetic_data_dir, extra=[override])
    with pytest.raises(FevaeError, match=message):
        validate_config(cfg)
    with pytest.raises(FevaeError, match=message):
        separation_callbacks("vae", cfg, tmp_path / "run")


def test_switched_off_absent_or_an_unknown_set(tmp_path, synthetic_data_dir):
    from omegaconf import open_dict

    on = train_cfg(tmp_path / "a", synthetic_data_dir)
    assert [type(c).__name__ for c in separation_callbacks("vae", on, tmp_path)] == ["VaeSeparation"]
    assert [type(c).__name__ for c in separation_callbacks("jigsaw", on, tmp_path)] == ["JigsawSeparation"]
    assert separation_callbacks("vae", train_cfg(tmp_path / "b", synthetic_data_dir, extra=["separation.enabled=false"]), tmp_path) == []
    assert separation_callbacks("jigsaw", train_cfg(tmp_path / "c", synthetic_data_dir, extra=["separation.jigsaw.every_n_epochs=0"]), tmp_path) == []
    with open_dict(on):  # a config from before the block existed: off, and valid
        del on["separation"]
    validate_config(on)
    assert separation_callbacks("vae", on, tmp_path) == []
    # a set name that is not an OOD set of the run is refused when the training sets up, before any step
    cfg = train_cfg(tmp_path / "d", synthetic_data_dir)
    callback = VaeSeparation(every_n_epochs=1, n_images=4, max_cost_fraction=0.05, seed=0, sets=["mnist", "svhn"])
    trainer = SimpleNamespace(datamodule=make_datamodule(cfg, 16), is_global_zero=True)
    with pytest.raises(FevaeError, match=r"separation.sets names \['svhn'\].*not OOD sets of this run \(mnist, mnist_saltpepper\)"):
        callback.setup(trainer, None, "fit")


def test_separation_settings_do_not_enter_the_model_cache_key(tmp_path, synthetic_data_dir):
    from fevae.cache import model_hash

    base = train_cfg(tmp_path / "a", synthetic_data_dir)
    other = train_cfg(tmp_path / "b", synthetic_data_dir, extra=["separation.enabled=false", "separation.n_images=8"])
    for name in ("vae", "jigsaw"):
        assert model_hash(base, name) == model_hash(other, name)


def test_the_pr_scheme_scores_the_prior_predictive_log_p_vae(tmp_path, synthetic_data_dir):
    """``separation.vae.scheme=PR``: log (1/S) sum_s p(x | z_s) with z_s ~ p(z), the evaluation's PR noise."""
    from fevae.models.vae import VAE

    cfg = train_cfg(tmp_path / "run", synthetic_data_dir, extra=["separation.vae.scheme=PR", "separation.sets=[mnist]"])
    (callback,) = separation_callbacks("vae", cfg, tmp_path / "run")
    assert callback.score_name == "pr_log_p_vae" and callback.about.startswith("PR log p_VAE")
    dm = make_datamodule(cfg, 16)
    torch.manual_seed(0)
    vae = VAE({"name": "gaussian"}).eval()
    callback.images = {s: (dm.eval_val_sets[s].tensors[0], dm.eval_val_sets[s].tensors[2]) for s in ("fashionmnist", "mnist")}
    scores = callback.score(vae)
    S = cfg.separation.vae.n_samples
    for s, (x, index) in callback.images.items():
        eps = per_sample_normal(index, cfg.seed, S, 20, stream=noise_stream(score_stream(s, "PR"), "PR"))
        with torch.no_grad():
            ll = torch.stack([vae.log_likelihood(x, vae.decode(eps[k])).double() for k in range(S)])
        np.testing.assert_allclose(scores[s], (torch.logsumexp(ll, 0) - math.log(S)).numpy(), rtol=0, atol=1e-6)
