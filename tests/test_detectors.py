"""The other OOD detectors of a run (issue #6) and the cached model pass that sweeps reuse."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from fevae.scoring.baselines import compressed_bits, likelihood_regret_score, to_uint8
from fevae.errors import FevaeError
from fevae.pipeline.evaluate import evaluate
from fevae.evaluation.settings import score_stream, validate_eval_config
from fevae.pipeline.runs import load_run
from fevae.pipeline.stages import make_datamodule
from fevae.pipeline.train import train
from pipeline import save_run_config, train_cfg

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory):
    from helpers import make_data_dir

    root = tmp_path_factory.mktemp("detectors")
    run_dir = root / "run"
    cfg = train_cfg(run_dir, make_data_dir(root / "data"), extra=["eval.regret.subset=5", "eval.regret.batch_size=2", "eval.figures=paper"])
    save_run_config(cfg, run_dir)
    train(cfg)
    return run_dir


def _scores(folder, name="mnist"):
    with np.load(folder / "scores" / f"{name}.npz", allow_pickle=False) as z:
        return {k: z[k] for k in z.files}


def test_detectors_are_wired_to_their_definitions(run_dir):
    """input_complexity = iwae + PNG bits · ln 2 of the very images scored; likelihood regret equals
    the baseline function on the eval.regret.subset images it recorded; every detector has a cost."""
    run = load_run(run_dir)
    data = make_datamodule(run.cfg, 16)
    dataset = data.eval_sets["mnist"]
    x, index = dataset.tensors[0], dataset.tensors[2]  # the test part: positions in the whole set
    scores = _scores(run_dir)
    bits = compressed_bits(to_uint8(x))
    np.testing.assert_allclose(scores["input_complexity"] - scores["iwae"], bits * math.log(2), rtol=1e-12)
    chosen = np.isin(index.numpy(), scores["index__likelihood_regret"].astype(np.int64))  # the seeded random subset it scored
    assert chosen.sum() == 5 and len(scores["likelihood_regret"]) == 5
    regret = likelihood_regret_score(x[chosen], index[chosen], vae=run.vae, steps=3, lr=1e-4, n_samples=2, seed=run.cfg.seed,
                                     stream=score_stream("mnist", "APO"))
    # a difference of two float32 ELBOs (~1e3 nats): batch composition changes it by rounding only
    np.testing.assert_allclose(scores["likelihood_regret"], regret.numpy(), rtol=0, atol=1e-3)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    costs = metrics["cost_s_per_image"]
    assert set(costs["other"]) == {"iwae", "input_complexity", "likelihood_regret", "likelihood_ratio", "jigsaw_loss", "dose", "fused"}
    assert {"standardised_fevae"} <= set(costs["APO"]) and costs["other"]["dose"] > costs["APO"]["fevae"]  # reads PR and APO
    assert all(v > 0 for block in costs.values() for v in block.values())
    assert costs["other"]["likelihood_regret"] > costs["APO"]["fevae"]  # 3 encoder refits vs S=4 decodes... per image
    report = (run_dir / "report.md").read_text()
    for row in ("| p_FEVAE (APO) |", "| fevae_l3 (PR) |", "| iwae |", "| input_complexity |", "| likelihood_regret † |"):
        assert row in report, row
    assert "![detectors_auroc](figures/detectors_auroc.png)" in report


def test_jigsaw_loss_is_minus_the_jigsaws_mean_cross_entropy_over_every_puzzle(run_dir):
    """Against an independent loop: each permutation applied to the centred tiles, the model's own forward in
    eval mode, torch's cross-entropy with the permutation as the label; the run's column is that of its images."""
    import torch
    import torch.nn.functional as F

    from fevae.detectors.jigsaw_loss import puzzle_log_probs
    from fevae.models.jigsaw import shuffle_tiles

    run = load_run(run_dir)
    jigsaw = run.jigsaw.eval()
    x = make_datamodule(run.cfg, 16).eval_sets["mnist"].tensors[0][:6]
    perms = jigsaw.permutations
    with torch.no_grad():
        tiles = jigsaw.tiler.tiles(x, jitter=False)
        expected = torch.stack([-F.cross_entropy(jigsaw(shuffle_tiles(tiles, perms[p].expand(len(x), -1))).double(),
                                                 torch.full((len(x),), p), reduction="none") for p in range(len(perms))]).mean(0)
    got = puzzle_log_probs(jigsaw, x, chunk=4)
    assert got.dtype == torch.float64 and got.shape == (6,) and (got < 0).all()
    torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(_scores(run_dir)["jigsaw_loss"][:6], got.numpy(), rtol=1e-5, atol=1e-6)


def test_the_run_reports_conformal_rates_two_sided_and_fused_columns(run_dir):
    metrics = json.loads((run_dir / "metrics.json").read_text())
    mnist = metrics["ood"]["mnist"]
    assert {"standardised_fevae", "standardised_fevae_two_sided"} <= set(mnist["APO"]) and "fused" in mnist["other"]
    blocks = [b for scheme in mnist.values() for b in scheme.values()]
    assert blocks and all(0 <= b["conformal_fpr"] <= 1 and 0 <= b["conformal_tpr"] <= 1 for b in blocks)
    assert metrics["conformal"]["alpha"] == 0.05 and metrics["conformal"]["n"] == 12


def test_the_recommendation_rule_reads_no_evaluation_image(run_dir, monkeypatch):
    """Its images are the run's training images (none of any evaluation set's validation or test part), transformed;
    its scores the in-distribution validation file; it ranks every full column on every proxy family."""
    from fevae.data.proxies import PROXIES
    from fevae.pipeline import recommend as rec
    from fevae.utils import io

    run, images, idx = rec.proxy_sources(run_dir)
    data = make_datamodule(run.cfg, 16)
    np.testing.assert_array_equal(idx, data.train_indices.numpy())
    evaluation = {bytes(np.rint(x.numpy() * 255).astype(np.uint8)) for sets in (data.eval_sets, data.eval_val_sets)
                  for ds in sets.values() for x in ds.tensors[0]}
    assert len(images) == len(idx) > 0 and not {bytes(im) for im in images} & evaluation
    read = []
    real_load = io.load_scores
    monkeypatch.setattr(rec, "load_scores", lambda path, *a, **k: read.append(str(path)) or real_load(path, *a, **k))
    result = rec.recommend([run_dir], n_proxy=8, halvings=2)
    assert read == [str(run_dir / "scores" / "val" / "fashionmnist.npz")]
    table = result["candidates"]
    assert {"jigsaw_loss", "fused", "dose", "standardised_fevae_two_sided_apo", "log_p_fevae_apo"} <= set(table)
    assert "likelihood_regret" not in table
    assert all(set(row["proxy_auroc"]) == set(PROXIES) and 0 <= row["worst_proxy_auroc"] <= 1 for row in table.values())
    assert result["recommended"] in table or result["recommended"] is None


def test_the_recommend_command_prints_its_table_without_lightnings_notices(run_dir, tmp_path):
    import subprocess
    import sys

    out = tmp_path / "rule.json"
    result = subprocess.run([sys.executable, "-m", "fevae.recommend", str(run_dir), "--n-proxy", "8", "--out", str(out)],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "recommended" in result.stdout.lower() and json.loads(out.read_text())["candidates"]
    assert not any(notice in result.stderr for notice in ("Tip", "GPU available", "Seed set to")), result.stderr[-2000:]


def test_the_cached_model_pass_gives_the_streamed_scores(run_dir, tmp_path, caplog):
    """evaluate with cache.enabled: the first call decodes and stores, later calls (here with
    another fe.C, as in a sweep) reuse it; the numbers equal scoring without the cache."""
    cache = ["cache.enabled=true", f"paths.cache_dir={tmp_path / 'cache'}"]
    with caplog.at_level("INFO", logger="fevae.evaluation.driver"):
        evaluate(run_dir, cache, tmp_path / "first")
        assert "scoring: decoding" in caplog.text and "reused the model pass" not in caplog.text
        evaluate(run_dir, [*cache, "fe.C=3"], tmp_path / "cached_c3")
        assert "reused the model pass" in caplog.text
    evaluate(run_dir, ["fe.C=3"], tmp_path / "fresh_c3")
    streamed, first = _scores(run_dir), _scores(tmp_path / "first")
    assert sorted(streamed) == sorted(first)
    for key in streamed:
        np.testing.assert_allclose(first[key], streamed[key], rtol=1e-12, err_msg=key)
    cached, fresh = _scores(tmp_path / "cached_c3"), _scores(tmp_path / "fresh_c3")
    assert not np.allclose(cached["log_p_fevae_apo"], streamed["log_p_fevae_apo"])  # C=3 is another mixture
    for key in fresh:
        np.testing.assert_allclose(cached[key], fresh[key], rtol=1e-12, err_msg=key)
    entries = [p for p in (tmp_path / "cache").glob("samples-*") if p.is_dir()]
    assert len(entries) == 1 and (entries[0] / "meta.json").is_file() and (entries[0] / "mnist.npz").is_file()


@pytest.mark.parametrize(
    "change, message",
    [
        ({"detectors": ["iwae", "odin"]}, "unknown detectors"),
        ({"schemes": ["PR"], "detectors": ["iwae"]}, "APO is not in eval.schemes"),
        ({"regret": {"subset": -1, "steps": 5, "n_samples": 1, "batch_size": 4, "lr": 1e-4}}, "eval.regret.subset"),
        ({"regret": {"subset": 5, "steps": 5, "n_samples": 1, "batch_size": 4, "lr": 0}}, "eval.regret.lr"),
        ({"figures": "some"}, r"eval.figures='some' is invalid"),
    ],
)
def test_invalid_detector_settings_are_refused(change, message):
    ev = {"n_samples": 4, "chunk_size": 2, "batch_size": 8, "schemes": ["PR", "APO"],
          "detectors": ["iwae", "input_complexity", "likelihood_regret"],
          "regret": {"subset": 5, "steps": 5, "n_samples": 1, "batch_size": 4, "lr": 1e-4}}
    validate_eval_config(ev)
    with pytest.raises(FevaeError, match=message):
        validate_eval_config({**ev, **change})


def test_a_run_from_an_older_fevae_is_rescored_with_todays_detectors(run_dir, tmp_path, caplog):
    """A run whose config predates eval.detectors / eval.regret / fe.extra_layers (and that has only
    mixture.npz): evaluate takes today's defaults for exactly those settings, keeps the run's own
    layer-1 mixture (same p_FE as the run) and fits only the missing layers."""
    import shutil

    from omegaconf import OmegaConf

    from pipeline import TINY, compose_cfg

    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    for extra in old.glob("mixture_l*.npz"):
        extra.unlink()
    stored = OmegaConf.load(old / ".hydra" / "config.yaml")
    for key in ("detectors", "regret"):
        stored.eval.pop(key)
    stored.fe.pop("extra_layers")
    stored.pop("detector")  # the detector configs (conf/detector/) are newer still
    shutil.rmtree(old / "checkpoints" / "background")
    stored.eval.n_samples = 3  # a setting the run has: kept, not replaced by today's default
    OmegaConf.save(stored, old / ".hydra" / "config.yaml")

    out = tmp_path / "rescored"
    composed = compose_cfg("evaluate", out, [f"run_dir={old}", *TINY])
    with caplog.at_level("INFO"):
        evaluate(old, [], out, composed=composed)
    assert "predates the settings eval.detectors, eval.regret, fe.extra_layers, detector" in caplog.text
    assert "the run has no mixture for layers [2, 3, 4]" in caplog.text
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["ood"]["mnist"]["other"]) == {"iwae", "input_complexity", "likelihood_regret", "likelihood_ratio", "jigsaw_loss", "dose", "fused"}
    assert (out / "checkpoints" / "background" / "best.ckpt").is_file()  # the likelihood ratio's model, trained for it
    assert {"fevae_l2", "fevae_l3", "fevae_l4"} <= set(metrics["ood"]["mnist"]["APO"])
    assert sorted(p.name for p in out.glob("mixture*.npz")) == ["mixture.npz", "mixture_l2.npz", "mixture_l3.npz", "mixture_l4.npz"]
    with np.load(old / "mixture.npz") as a, np.load(out / "mixture.npz") as b:
        for k in a.files:
            np.testing.assert_array_equal(a[k], b[k])
    # p_FE with the kept mixture and the same seed, but the run's own S=3 (not the profile's)
    rescored = _scores(out)
    n = len(rescored["log_p_fe_apo"])
    assert len(rescored["iwae"]) == n and len(rescored["likelihood_regret"]) == min(n, composed.eval.regret.subset) != 5
    evaluate(run_dir, ["eval.n_samples=3"], tmp_path / "same_s")
    np.testing.assert_array_equal(_scores(tmp_path / "same_s")["log_p_fe_apo"], rescored["log_p_fe_apo"])


def test_jigsaw_loss_jitter_and_decoded_images_options(run_dir):
    """jitter_draws: the mean over K seeded jittered tilings, the same for an image whatever its batch; decoded_samples:
    jigsaw_loss_apo = jigsaw_loss + the mean puzzle log-probability of φ(z) over the APO scheme's first S draws
    (recomputed here from the public pieces: the run's encoder, per-image APO noise, decoder and Jigsaw)."""
    import torch

    from fevae.api import load_run as api_load_run
    from fevae.detectors.jigsaw_loss import JigsawLoss, puzzle_log_probs
    from fevae.scoring.noise import noise_stream, per_sample_normal

    only = ["eval.detectors=[jigsaw_loss]"]
    plain = api_load_run(run_dir, only)
    both = api_load_run(run_dir, only + ["detector.jigsaw_loss.jitter_draws=3", "detector.jigsaw_loss.decoded_samples=2"])
    x = make_datamodule(plain.trained.cfg, 16).eval_sets["mnist"].tensors[0][:6]
    a, b = plain.score(x.numpy()[:, 0]), both.score(x.numpy()[:, 0])
    assert "jigsaw_loss_apo" in b.columns and "jigsaw_loss_apo" not in a.columns
    assert not np.allclose(a["jigsaw_loss"], b["jigsaw_loss"])  # jittered, not centred, tiles
    np.testing.assert_allclose(both.score(x.numpy()[:3, 0])["jigsaw_loss"], b["jigsaw_loss"][:3], rtol=1e-12)  # batch-free

    trained = plain.trained
    vae, jigsaw = trained.vae.eval(), trained.jigsaw.eval()
    index = torch.arange(len(x))
    with torch.no_grad():
        mu, logvar = vae.encode(x)
        eps = per_sample_normal(index, trained.cfg.seed, 2, mu.shape[-1], stream=noise_stream(score_stream("input", "APO"), "APO"))
        decoded = [puzzle_log_probs(jigsaw, vae.phi(vae.decode(mu + torch.exp(0.5 * logvar) * e))) for e in eps]
    np.testing.assert_allclose(b["jigsaw_loss_apo"] - b["jigsaw_loss"], torch.stack(decoded).mean(0).numpy(), rtol=1e-4, atol=1e-5)
    assert JigsawLoss(decoded_samples=2).outputs() == ["jigsaw_loss", "jigsaw_loss_apo"]
    for bad in ({"jitter_draws": -1}, {"decoded_samples": 1.5}, {"chunk": 0}):
        with pytest.raises(FevaeError, match="detector.jigsaw_loss"):
            JigsawLoss(**bad)
