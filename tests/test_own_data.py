"""In-distribution data beyond FashionMNIST: data=mnist (the reverse direction), data=cifar10 with
+experiment=cifar10_svhn at 3x32x32, and your own images (data=folder, data=npz), on tiny synthetic files."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from fevae.data.corruptions import apply_corruptions, check_corruptions
from fevae.data.datamodule import FevaeDataModule
from fevae.errors import FevaeError
from fevae.pipeline.train import train
from fevae.pipeline.checks import validate_config
from helpers import SIZES, colour_images, labelled_images, make_data_dir, write_cifar10_bin, write_svhn_mat
from pipeline import TINY, compose_cfg, save_run_config, train_cfg


@pytest.fixture(autouse=True)
def _no_system_data(monkeypatch):
    """Only the synthetic files the tests write: never /usr/share/datasets."""
    monkeypatch.setattr("fevae.data.discovery.SYSTEM_DIRS", [])


@pytest.fixture
def colour_data_dir(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    write_cifar10_bin(root)
    write_svhn_mat(root)
    return root


def _metrics(run_dir: Path) -> dict:
    return json.loads((run_dir / "metrics.json").read_text())


def test_cifar10_svhn_experiment_trains_and_scores_3x32x32(tmp_path, colour_data_dir):
    run_dir = tmp_path / "run"
    cfg = train_cfg(run_dir, colour_data_dir, experiment="cifar10_svhn", extra=["eval.figures=paper"])
    assert cfg.profile_name == "smoke"  # the command line's profile wins over the experiment's paper profile
    assert list(cfg.data.image_shape) == [3, 32, 32] and cfg.model.vae.likelihood.sigma == "channel"
    result = train(cfg)
    metrics = _metrics(run_dir)
    assert metrics["in_distribution"] == "cifar10"
    assert set(metrics["ood"]) == {"svhn", "svhn_saltpepper"}
    # 40 test images per set, 12 of them validation (TINY's eval_split)
    assert metrics["n"] == {"cifar10": 20, "svhn": 20, "svhn_saltpepper": 20}  # 40 images: a validation pool of 20, the other 20 test
    for block in metrics["ood"].values():
        assert 0.0 <= block["APO"]["fevae"]["auroc"] <= 1.0
    assert result["metrics"] == metrics
    with np.load(run_dir / "scores" / "cifar10.npz") as scores:
        assert np.isfinite(scores["log_p_fevae_apo"]).all() and scores["log_p_fevae_apo"].shape == (20,)
    figures = {p.name for p in (run_dir / "figures").glob("*.png")}
    assert {"fig1a_log_p_vae.png", "fig1b_log_p_fevae.png", "fig2_saltpepper.png"} <= figures
    report = (run_dir / "report.md").read_text()
    assert "in-distribution set | cifar10" in report and "so they are not evaluated" in report
    vae_ckpt = torch.load(run_dir / "checkpoints" / "vae" / "best.ckpt", weights_only=True)
    assert list(vae_ckpt["hyper_parameters"]["image_shape"]) == [3, 32, 32]

    # the score CLI's path: the run's shape is accepted channels last, anything else refused with one line
    from fevae.api import load_run

    save_run_config(cfg, run_dir)
    run = load_run(run_dir)
    images, _ = colour_images(5, seed=3)
    frame = run.score(images)
    assert len(frame) == 5 and np.isfinite(frame["log_p_fevae_apo"]).all()
    with pytest.raises(FevaeError, match=r"not \[N,32,32,3\].*3×32×32.*channels first"):
        run.score(images.transpose(0, 3, 1, 2))
    with pytest.raises(FevaeError, match=r"not \[N,32,32,3\]"):
        run.score(labelled_images(5, 0)[0])


def test_reverse_direction_mnist_in_distribution(tmp_path):
    data_dir = make_data_dir(tmp_path / "data", sizes={**SIZES, ("mnist", "train"): 64})
    run_dir = tmp_path / "run"
    train(train_cfg(run_dir, data_dir, extra=["data=mnist"]))
    metrics = _metrics(run_dir)
    assert metrics["in_distribution"] == "mnist"
    assert list(metrics["ood"]) == ["fashionmnist", "fashionmnist_saltpepper"]
    split = json.loads((run_dir / "eval_split.json").read_text())
    assert split["sets"] == {"fashionmnist": "FashionMNIST test", "fashionmnist_saltpepper": "FashionMNIST test + salt_and_pepper(p=0.2)"}


def _datamodule(**kwargs) -> FevaeDataModule:
    base = dict(val_size=4, eval_split={"val": 3, "test": None, "seed": 0}, batch_size=8, eval_batch_size=8, seed=1)
    dm = FevaeDataModule(**{**base, **kwargs})
    dm.setup()
    return dm


def _write_pngs(folder: Path, images: np.ndarray) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i, image in enumerate(images):
        Image.fromarray(image).save(folder / f"{i:03d}.png")


def test_folder_of_pngs_is_split_with_a_fixed_test_hold_out(tmp_path):
    images, _ = labelled_images(30, seed=5)
    _write_pngs(tmp_path / "mine", images)
    other, _ = labelled_images(12, seed=6)
    np.save(tmp_path / "other.npy", other)
    dm = _datamodule(dataset="folder", path=str(tmp_path / "mine"), name="mine", test_size=10,
                     ood_sets={"other": {"path": str(tmp_path / "other.npy")}, "mine_flip": {"source": "in_distribution", "corruptions": ["hflip"]}})
    assert dm.eval_set_names == ["mine", "other", "mine_flip"]
    assert len(dm.train_set) == 30 - 10 - 4 and len(dm.val_set) == 4
    test_positions = np.sort(np.random.default_rng(0).permutation(30)[:10])  # eval_split.seed, not the run's seed
    id_all = torch.cat([dm.eval_val_sets["mine"].tensors[0], dm.eval_sets["mine"].tensors[0]])
    id_index = torch.cat([dm.eval_val_sets["mine"].tensors[2], dm.eval_sets["mine"].tensors[2]])
    expected = torch.from_numpy(images[test_positions]).float().div(255).unsqueeze(1)
    assert torch.equal(id_all[id_index.argsort()], expected)
    flipped = torch.cat([dm.eval_val_sets["mine_flip"].tensors[0], dm.eval_sets["mine_flip"].tensors[0]])
    assert torch.equal(flipped[id_index.argsort()], expected.flip(-1))
    assert (dm.eval_sets["mine"].tensors[1] == -1).all()  # PNGs carry no labels
    # another run seed: other training/validation images, the same test images
    dm2 = _datamodule(dataset="folder", path=str(tmp_path / "mine"), name="mine", test_size=10, seed=2,
                      ood_sets={"other": {"path": str(tmp_path / "other.npy")}})
    assert torch.equal(dm2.eval_sets["mine"].tensors[0], dm.eval_sets["mine"].tensors[0])
    assert not torch.equal(dm2.val_set.tensors[0], dm.val_set.tensors[0])


def test_folder_with_train_val_test_subfolders(tmp_path):
    for part, n in (("train", 20), ("val", 5), ("test", 15)):
        _write_pngs(tmp_path / "mine" / part, labelled_images(n, seed=n)[0])
    dm = _datamodule(dataset="folder", path=str(tmp_path / "mine"), ood_sets={"again": {"path": str(tmp_path / "mine" / "test")}},
                     eval_split={"val": 5, "test": None, "seed": 0})
    assert dm.id_name == "folder" and len(dm.train_set) == 20 and len(dm.val_set) == 5
    assert len(dm.eval_sets["folder"]) + len(dm.eval_val_sets["folder"]) == 15


def test_npz_colour_images_with_labels(tmp_path):
    train_x, train_y = colour_images(24, seed=1)
    test_x, test_y = colour_images(12, seed=2)
    np.savez(tmp_path / "mine.npz", train=train_x, train_labels=train_y.astype(np.int64), test=test_x, test_labels=test_y.astype(np.int64))
    np.save(tmp_path / "theirs.npy", colour_images(12, seed=3)[0].astype(np.float32) / 255)
    dm = _datamodule(dataset="npz", path=str(tmp_path / "mine.npz"), image_shape=[3, 32, 32], name="mine",
                     ood_sets={"theirs": {"path": str(tmp_path / "theirs.npy")}})
    x, y = dm.train_set.tensors
    assert x.shape == (20, 3, 32, 32) and x.dtype == torch.float32
    positions = dm.train_indices.numpy()
    assert torch.equal(x, torch.from_numpy(train_x[positions]).permute(0, 3, 1, 2).float().div(255))
    assert torch.equal(y, torch.from_numpy(train_y[positions].astype(np.int64)))
    assert dm.eval_sets["theirs"].tensors[0].shape[1:] == (3, 32, 32)


@pytest.mark.parametrize(("kwargs", "message"), [
    (dict(dataset="folder"), r"data=folder needs data.path"),
    (dict(dataset="nope"), r"data.dataset='nope' is not a known dataset"),
    (dict(dataset="cifar10"), r"data.image_shape=\[1, 28, 28\] but CIFAR-10 images are \[3, 32, 32\]"),
    (dict(dataset="cifar10", image_shape=[3, 32, 32], ood_sets={"mnist": {"source": "mnist"}}),
     r"data.ood_sets.mnist.source=mnist: MNIST test images are 1×28×28 but the run's are 3×32×32"),
    (dict(image_shape=[1, 28]), r"data.image_shape=\[1, 28\] is not an image shape"),
])
def test_bad_data_settings_are_one_line_before_reading(kwargs, message):
    with pytest.raises(FevaeError, match=message):
        FevaeDataModule(**kwargs)


def test_own_images_of_another_shape_are_refused(tmp_path):
    np.savez(tmp_path / "mine.npz", images=colour_images(20, seed=1)[0])
    with pytest.raises(FevaeError, match=r"has shape \[20, 32, 32, 3\], not \[N,28,28\]"):
        _datamodule(dataset="npz", path=str(tmp_path / "mine.npz"), test_size=5, ood_sets={"x": {"source": "in_distribution"}})
    np.savez(tmp_path / "pool.npz", images=labelled_images(20, seed=1)[0])
    with pytest.raises(FevaeError, match=r"data.test_size is null"):
        _datamodule(dataset="npz", path=str(tmp_path / "pool.npz"), ood_sets={"x": {"source": "in_distribution"}})


def test_folder_config_composes_and_validates(tmp_path):
    _write_pngs(tmp_path / "mine", labelled_images(40, seed=5)[0])
    cfg = compose_cfg("train", tmp_path / "run", ["data=folder", f"data.path={tmp_path / 'mine'}", "data.test_size=10",
                                                  "+data.ood_sets.flip.source=in_distribution", "+data.ood_sets.flip.corruptions=[vflip]", *TINY])
    validate_config(cfg)
    cfg = compose_cfg("train", tmp_path / "run", ["data=folder", *TINY])
    with pytest.raises(FevaeError, match="needs data.path"):
        validate_config(cfg)


@pytest.mark.parametrize("chain", [["hflip"], ["vflip"], [{"name": "rotate", "degrees": 90}], [{"name": "rotate", "degrees": 30}],
                                   [{"name": "salt_and_pepper", "p": 0.3}], [{"name": "gaussian_noise", "sigma": 0.1}],
                                   [{"name": "contrast", "factor": 0.5}]])
def test_corruptions_keep_colour_images_channels_last(chain):
    images, _ = colour_images(6, seed=4)
    out = apply_corruptions(images, check_corruptions(chain), seed=0)
    assert out.shape == images.shape and out.dtype == np.uint8
    name = chain[0] if isinstance(chain[0], str) else chain[0]["name"]
    if name == "hflip":
        assert np.array_equal(out, images[:, :, ::-1, :])
    elif name == "vflip":
        assert np.array_equal(out, images[:, ::-1, :, :])
    elif name == "rotate" and chain[0]["degrees"] == 90:
        assert np.array_equal(out, np.rot90(images, 1, axes=(1, 2)))
    elif name == "contrast":  # each channel of each image pulled halfway to its mean
        mean = images.astype(np.float64).mean(axis=(1, 2), keepdims=True)
        assert np.abs(out - np.clip(mean + 0.5 * (images - mean), 0, 255)).max() <= 0.5 + 1e-9
    else:
        assert not np.array_equal(out, images)


def test_the_sweep_summary_shows_the_first_ood_set_when_there_is_no_mnist():
    from fevae.outputs.sweep import headline_set

    cols = ["job", "ood_val/fashionmnist_saltpepper/APO/fevae/auroc", "ood/fashionmnist/PR/vae/auroc", "n/fashionmnist"]
    assert headline_set(cols) == "fashionmnist"
    assert headline_set([*cols, "ood_val/mnist/APO/fevae/auroc"]) == "mnist"
    assert headline_set(["job"]) == "mnist"


def test_every_dataset_split_is_located_before_the_run_folder_is_claimed(tmp_path):
    from fevae.data.evalsets import check_data_sources

    root = tmp_path / "data"
    write_cifar10_bin(root)
    cfg = compose_cfg("train", tmp_path / "run", ["+experiment=cifar10_svhn", f"paths.data_dir={root}", *TINY])
    with pytest.raises(FevaeError, match=r"svhn/test \(test_32x32.mat.*not found; looked in: .*data"):
        check_data_sources(cfg.data)  # CIFAR-10 is there, its OOD set SVHN is not
    write_svhn_mat(root)
    check_data_sources(cfg.data)
    with pytest.raises(FevaeError, match=r"mnist/train .*not found"):
        check_data_sources(compose_cfg("train", tmp_path / "run", ["data=mnist", f"paths.data_dir={root}", *TINY]).data)
    own = compose_cfg("train", tmp_path / "run", ["data=npz", "data.path=x.npz", "+data.ood_sets.a.source=in_distribution", f"paths.data_dir={root}", *TINY])
    check_data_sources(own.data)  # your own files are read later; a registered dataset is not needed
