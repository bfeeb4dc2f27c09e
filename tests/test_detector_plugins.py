"""Detectors as plug-ins (fevae/detectors/, conf/detector/): a new one is one module + one config file;
targets are allow-listed; the likelihood ratio's background VAE and score."""

from __future__ import annotations

import json
import textwrap

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

import fevae.detectors
from fevae.errors import FevaeError
from fevae.models.background import BackgroundVAE, mutate

TOY_MODULE = '''
"""A toy detector for the plug-in test: minus the mean pixel value of the image."""
import numpy as np

from fevae.detectors.base import Detector


class Toy(Detector):
    name = "toy"

    def __init__(self, scale: float = 1.0):
        self.scale = scale

    def batch(self, x, index, set_name):
        return {"mean": x.flatten(1).mean(1)}

    def scores(self, shared, own):
        return {self.name: -self.scale * own["mean"]}
'''


@pytest.fixture
def toy_detector(tmp_path, monkeypatch):
    """fevae/detectors/toy.py (in a folder added to the package's path) and conf/detector/toy.yaml
    (in a folder added to Hydra's search path): the two files a new detector is."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "toy.py").write_text(textwrap.dedent(TOY_MODULE))
    monkeypatch.setattr(fevae.detectors, "__path__", [*fevae.detectors.__path__, str(code)])
    conf = tmp_path / "conf" / "detector"
    conf.mkdir(parents=True)
    (conf / "toy.yaml").write_text("toy:\n  _target_: fevae.detectors.toy.Toy\n  scale: 2.0\n")
    return f"hydra.searchpath=[file://{tmp_path / 'conf'}]"


def test_a_new_detector_is_one_module_and_one_config_file(tmp_path, synthetic_data_dir, toy_detector):
    from fevae.pipeline.score import score_images
    from helpers import SIZES, labelled_images
    from fevae.pipeline.train import train
    from pipeline import save_run_config, train_cfg

    run_dir = tmp_path / "run"
    cfg = train_cfg(run_dir, synthetic_data_dir, extra=[toy_detector, "detector=[iwae,toy]", "separation.enabled=false"])
    assert list(cfg.eval.detectors) == ["iwae", "toy"]
    train(cfg)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert set(metrics["ood"]["mnist"]["other"]) == {"iwae", "toy"}
    assert metrics["cost_s_per_image"]["other"]["toy"] > 0
    scores = np.load(run_dir / "scores" / "mnist.npz")
    split = json.loads((run_dir / "eval_split.json").read_text())
    images = labelled_images(SIZES["mnist", "t10k"], seed=list(SIZES).index(("mnist", "t10k")))[0]  # helpers.make_data_dir's MNIST
    test_index = np.asarray(split["test"]["mnist"])
    np.testing.assert_allclose(scores["toy"], -2.0 * (images[test_index] / 255.0).mean((1, 2)), rtol=1e-6)
    # the score CLI writes its column too, from the run folder's config
    save_run_config(cfg, run_dir)
    np.save(tmp_path / "x.npy", images[:5])
    out = score_images(run_dir, tmp_path / "x.npy")
    np.testing.assert_allclose(out["toy"], -2.0 * (images[:5] / 255.0).mean((1, 2)), rtol=1e-6)


def test_detector_targets_are_allow_listed(tmp_path, synthetic_data_dir):
    from fevae.pipeline.checks import validate_config
    from pipeline import train_cfg

    for target, message in [("os.system", "is not a class of fevae.detectors"),
                            ("fevae.detectors.base.STATE_FILE", "is not a detector class"),
                            ("fevae.detectors.dose.Dose", "is the detector 'dose'"),
                            ("fevae.detectors.nothere.X", "cannot be imported")]:
        cfg = train_cfg(tmp_path / "r", synthetic_data_dir, extra=[f"detector.iwae._target_={target}"])
        with pytest.raises(FevaeError, match=message):
            validate_config(cfg)
    cfg = train_cfg(tmp_path / "r", synthetic_data_dir, extra=["eval.detectors=[iwae,odin]"])
    with pytest.raises(FevaeError, match=r"unknown detectors \['odin'\].*conf/detector/odin.yaml"):
        validate_config(cfg)
    cfg = train_cfg(tmp_path / "r", synthetic_data_dir, extra=["detector.likelihood_ratio.mutation_rate=1.5"])
    with pytest.raises(FevaeError, match="mutation_rate=1.5 is invalid"):
        validate_config(cfg)


def test_mutate_replaces_the_given_fraction_with_random_pixel_values():
    x = torch.full((200, 1, 28, 28), 0.5)
    y = mutate(x, 0.2, binary=False, generator=torch.Generator().manual_seed(0))
    changed = y != x
    assert abs(changed.float().mean().item() - 0.2 * 255 / 256) < 0.01  # a random value may equal 0.5's level: never here
    levels = torch.unique(y[changed] * 255)
    assert torch.allclose(levels, levels.round()) and len(levels) > 200  # the 256 grey levels
    b = mutate(torch.zeros(100, 1, 28, 28), 0.3, binary=True, generator=torch.Generator().manual_seed(1))
    assert set(torch.unique(b).tolist()) == {0.0, 1.0} and abs(b.mean().item() - 0.15) < 0.01
    again = mutate(x, 0.2, binary=False, generator=torch.Generator().manual_seed(0))
    assert torch.equal(y, again)
    with pytest.raises(FevaeError, match="mutation_rate=0 is invalid"):
        BackgroundVAE(likelihood={"name": "gaussian"}, mutation_rate=0)


def test_likelihood_ratio_is_iwae_minus_the_background_vaes_iwae(tmp_path, synthetic_data_dir):
    """The run trains checkpoints/background/ on perturbed images and scores LLR = iwae − IWAE_background,
    the latter recomputed here with fevae.scoring.baselines.iwae_score on the same noise stream."""
    from fevae.scoring.baselines import iwae_score
    from helpers import SIZES, labelled_images
    from fevae.evaluation.settings import score_stream
    from fevae.pipeline.train import train
    from fevae.training import load_state_dict
    from fevae.validation import build
    from pipeline import train_cfg

    run_dir = tmp_path / "run"
    # one after another on the run's threads, as evaluate's re-training below (side by side, one thread each,
    # rounds differently: the same weights only on the same threads)
    cfg = train_cfg(run_dir, synthetic_data_dir, extra=["detector=[iwae,likelihood_ratio]", "separation.enabled=false", "training.side_by_side=false"])
    train(cfg)
    assert (run_dir / "checkpoints" / "background" / "best.ckpt").is_file()
    timings = json.loads((run_dir / "timings.json").read_text())
    assert timings["train_background"] > 0
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert "likelihood_ratio" in metrics["ood"]["mnist"]["other"]
    assert metrics["cost_s_per_image"]["other"]["likelihood_ratio"] > metrics["cost_s_per_image"]["other"]["iwae"]
    scores = np.load(run_dir / "scores" / "mnist.npz")
    split = json.loads((run_dir / "eval_split.json").read_text())
    index = torch.as_tensor(split["test"]["mnist"][:6])
    images = labelled_images(SIZES["mnist", "t10k"], seed=list(SIZES).index(("mnist", "t10k")))[0]
    x = torch.from_numpy(images[index.numpy()]).float().div(255).unsqueeze(1)
    node = OmegaConf.to_container(cfg.model.vae, resolve=True)
    node.update({"_target_": "fevae.models.background.BackgroundVAE", "mutation_rate": 0.2})
    background = build("model.background", node)
    background.load_state_dict(load_state_dict(run_dir / "checkpoints" / "background" / "best.ckpt"))
    ref = iwae_score(x, index, vae=background.eval(), n_samples=cfg.eval.n_samples, chunk_size=cfg.eval.chunk_size,
                     seed=cfg.seed, stream=score_stream("mnist", "APO"))
    # float32 decoding of another batch composition: equal to ~1e-5 relative
    np.testing.assert_allclose(scores["likelihood_ratio"][:6], scores["iwae"][:6] - ref.numpy(), rtol=1e-5, atol=1e-3)
    # the background VAE differs from the run's VAE (it saw perturbed images)
    vae = load_state_dict(run_dir / "checkpoints" / "vae" / "best.ckpt")
    assert not all(torch.equal(vae[k], v) for k, v in background.state_dict().items())

    # re-scoring a run that lacks the background VAE (made before the detector existed) trains it
    # into the evaluation's folder, to the same weights and scores
    import shutil

    from fevae.pipeline.evaluate import evaluate
    from pipeline import save_run_config

    save_run_config(cfg, run_dir)
    shutil.rmtree(run_dir / "checkpoints" / "background")
    out = tmp_path / "evaluated"
    evaluate(run_dir, [], out)
    assert (out / "checkpoints" / "background" / "best.ckpt").is_file() and not (run_dir / "checkpoints" / "background").exists()
    np.testing.assert_array_equal(np.load(out / "scores" / "mnist.npz")["likelihood_ratio"], scores["likelihood_ratio"])
