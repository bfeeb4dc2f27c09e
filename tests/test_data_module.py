"""Data discovery, transforms, the Lightning data module and the data doctor, on synthetic data."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from fevae.data import discovery
from fevae.data.datamodule import EVAL_SETS, FevaeDataModule
from fevae.data.discovery import locate_data
from fevae.data.doctor import run_doctor
from fevae.data.transforms import preprocess, salt_and_pepper
from fevae.errors import FevaeError
from helpers import labelled_images, make_data_dir, write_split

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def no_system_data(monkeypatch: pytest.MonkeyPatch) -> None:
    """Ignore data installed on this machine (e.g. Debian's dataset-fashion-mnist)."""
    monkeypatch.setattr(discovery, "SYSTEM_DIRS", [])


# ---------------------------------------------------------------- discovery
def test_locate_debian_layout_gz(synthetic_data_dir: Path) -> None:
    files = locate_data(str(synthetic_data_dir))
    assert set(files) == {"fashionmnist/train", "fashionmnist/test", "mnist/test"}
    assert files["fashionmnist/train"] == (synthetic_data_dir / "fashion-mnist/train-images-idx3-ubyte.gz",
                                           synthetic_data_dir / "fashion-mnist/train-labels-idx1-ubyte.gz")
    assert files["mnist/test"][0] == synthetic_data_dir / "mnist/t10k-images-idx3-ubyte.gz"
    assert str(synthetic_data_dir / "fashion-mnist") in files.searched


def test_locate_torchvision_layout_uncompressed(tmp_path: Path) -> None:
    root = make_data_dir(tmp_path, layout="torchvision", gz=False)
    files = locate_data(root)
    assert files["fashionmnist/test"][1] == root / "FashionMNIST/raw/t10k-labels-idx1-ubyte"
    assert files["mnist/test"][0] == root / "MNIST/raw/t10k-images-idx3-ubyte"


def test_layouts_resolved_per_dataset_and_optional_mnist_train(tmp_path: Path) -> None:
    make_data_dir(tmp_path, sizes={("fashionmnist", "train"): 20, ("fashionmnist", "t10k"): 10})
    make_data_dir(tmp_path, layout="torchvision", sizes={("mnist", "t10k"): 10, ("mnist", "train"): 10})
    files = locate_data(tmp_path)
    assert files["fashionmnist/train"][0].parent == tmp_path / "fashion-mnist"
    assert files["mnist/test"][0].parent == tmp_path / "MNIST/raw"
    assert files["mnist/train"][0].parent == tmp_path / "MNIST/raw"


def test_plain_file_preferred_over_gz(synthetic_data_dir: Path) -> None:
    images, labels = labelled_images(10, seed=9)
    write_split(synthetic_data_dir / "mnist", "t10k", images, labels, gz=False)
    assert locate_data(synthetic_data_dir)["mnist/test"][0].suffix != ".gz"


def test_system_dir_discovery(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    system = make_data_dir(tmp_path / "usr-share-datasets",
                           sizes={("fashionmnist", "train"): 20, ("fashionmnist", "t10k"): 10})
    data_dir = make_data_dir(tmp_path / "mine", sizes={("mnist", "t10k"): 10})
    monkeypatch.setattr(discovery, "SYSTEM_DIRS", [system])
    files = locate_data(data_dir)
    assert files["fashionmnist/train"][0] == system / "fashion-mnist/train-images-idx3-ubyte.gz"
    assert files["mnist/test"][0].parent == data_dir / "mnist"
    # data_dir wins over the system folder
    make_data_dir(data_dir, sizes={("fashionmnist", "t10k"): 10})
    assert locate_data(data_dir)["fashionmnist/test"][0].parent == data_dir / "fashion-mnist"
    # without data_dir: system data alone, MNIST is then missing
    with pytest.raises(FevaeError, match="mnist/test"):
        locate_data(None)


def test_missing_data_lists_places_and_fix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data_dir = make_data_dir(tmp_path / "d", sizes={("fashionmnist", "train"): 20, ("fashionmnist", "t10k"): 10})
    monkeypatch.setattr(discovery, "SYSTEM_DIRS", [tmp_path / "system"])
    with pytest.raises(FevaeError) as info:
        locate_data(data_dir)
    message = str(info.value)
    assert "\n" not in message
    assert "mnist/test" in message and "fashionmnist" not in message.split(" — ")[0]
    for place in (data_dir / "mnist", data_dir / "MNIST/raw", tmp_path / "system/mnist"):
        assert str(place) in message
    assert "apt-get install dataset-fashion-mnist" in message
    assert "paths.data_dir=" in message and "FEVAE_DATA_DIR" in message and "data.download=true" in message


def test_nonexistent_data_dir_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(FevaeError, match="paths.data_dir=.*does not exist"):
        locate_data(tmp_path / "nope")


def test_download_failure_is_reported(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("torchvision.datasets.FashionMNIST", offline)
    monkeypatch.setattr("torchvision.datasets.MNIST", offline)
    with pytest.raises(FevaeError, match="download of fashionmnist .* failed .*network unreachable"):
        locate_data(None, download=True, download_dir=tmp_path / "dl")


# --------------------------------------------------------------- transforms
def test_preprocess_scale_and_binarise() -> None:
    pixels = np.array([0, 1, 127, 128, 200, 255], dtype=np.uint8)
    images = np.zeros((2, 28, 28), np.uint8)
    images[0, 0, :6] = pixels
    for data in (images, torch.from_numpy(images)):
        scaled = preprocess(data, "scale")
        assert scaled.dtype == torch.float32 and scaled.shape == (2, 1, 28, 28)
        torch.testing.assert_close(scaled[0, 0, 0, :6], torch.tensor(pixels / 255.0, dtype=torch.float32))
        binary = preprocess(data, "binarise")
        assert binary.dtype == torch.float32 and binary.shape == (2, 1, 28, 28)
        assert binary[0, 0, 0, :6].tolist() == [0.0, 0.0, 0.0, 1.0, 1.0, 1.0]  # 127 -> 0, 128 -> 1
    with pytest.raises(FevaeError, match="binarise"):
        preprocess(images, "normalise")
    with pytest.raises(FevaeError, match="uint8"):
        preprocess(images.astype(np.float32), "scale")


def test_salt_and_pepper_rate_and_balance() -> None:
    images = np.full((500, 28, 28), 128, np.uint8)
    noisy = salt_and_pepper(images, 0.2, seed=0)
    assert noisy.dtype == np.uint8 and noisy.shape == images.shape
    assert (images == 128).all()  # input untouched
    salt, pepper = (noisy == 255).mean(), (noisy == 0).mean()
    assert abs(salt + pepper - 0.2) < 0.005
    assert abs(salt / (salt + pepper) - 0.5) < 0.02
    assert ((noisy == 128) | (noisy == 0) | (noisy == 255)).all()


def test_salt_and_pepper_determinism_and_edges() -> None:
    images, _ = labelled_images(50, seed=0)
    np.testing.assert_array_equal(salt_and_pepper(images, 0.3, 7), salt_and_pepper(images, 0.3, 7))
    assert (salt_and_pepper(images, 0.3, 7) != salt_and_pepper(images, 0.3, 8)).any()
    np.testing.assert_array_equal(salt_and_pepper(images, 0.0, 1), images)
    assert np.isin(salt_and_pepper(images, 1.0, 1), [0, 255]).all()
    for bad in (-0.1, 1.5, float("nan")):
        with pytest.raises(FevaeError, match="saltpepper_fraction"):
            salt_and_pepper(images, bad, 0)


# -------------------------------------------------------------- data module
def test_datamodule_splits(synthetic_data_dir: Path) -> None:
    dm = FevaeDataModule(str(synthetic_data_dir), val_size=16, batch_size=8, eval_batch_size=10)
    dm.setup("fit")
    assert (len(dm.train_set), len(dm.val_set)) == (48, 16)
    assert list(dm.eval_sets) == list(EVAL_SETS) == ["fashionmnist", "mnist", "mnist_saltpepper"]
    assert [len(ds) for ds in dm.eval_sets.values()] == [32, 32, 32]
    x, y = dm.train_set[0]
    assert x.dtype == torch.float32 and x.shape == (1, 28, 28) and y.dtype == torch.int64
    assert 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    xb, yb = next(iter(dm.train_dataloader()))
    assert xb.shape == (8, 1, 28, 28) and yb.dtype == torch.int64
    assert sum(len(b[0]) for b in dm.val_dataloader()) == 16
    loaders = dm.predict_dataloader()
    assert len(loaders) == 3
    batches = list(loaders[1])
    assert [len(b[0]) for b in batches] == [10, 10, 10, 2]
    indices = torch.cat([b[2] for b in batches])
    assert indices.dtype == torch.int64 and indices.tolist() == list(range(32))
    x, y, i = dm.eval_sets["mnist"][5]
    assert int(i) == 5 and x.shape == (1, 28, 28)
    # salt-and-pepper: same labels, corrupted pixels
    sp_x, sp_y, _ = dm.eval_sets["mnist_saltpepper"].tensors
    mn_x, mn_y, _ = dm.eval_sets["mnist"].tensors
    assert torch.equal(sp_y, mn_y)
    changed = (sp_x != mn_x).float().mean().item()
    assert 0.1 < changed < 0.3
    dm.setup("test")  # idempotent
    assert dm.eval_sets["mnist_saltpepper"].tensors[0] is sp_x


def test_val_holdout_is_seeded_and_disjoint(synthetic_data_dir: Path) -> None:
    def split(seed: int, **kw) -> FevaeDataModule:
        dm = FevaeDataModule(synthetic_data_dir, val_size=16, seed=seed, **kw)
        dm.setup()
        return dm

    a, b, c = split(0), split(0), split(1)
    assert torch.equal(a.val_indices, b.val_indices) and torch.equal(a.train_indices, b.train_indices)
    assert not torch.equal(a.val_indices, c.val_indices)
    assert set(a.val_indices.tolist()).isdisjoint(a.train_indices.tolist())
    assert sorted(a.val_indices.tolist() + a.train_indices.tolist()) == list(range(64))
    sub = split(0, train_subset=10)
    assert len(sub.train_set) == 10 and torch.equal(sub.val_indices, a.val_indices)
    assert set(sub.train_indices.tolist()) <= set(a.train_indices.tolist())
    assert torch.equal(sub.train_indices, split(0, train_subset=10).train_indices)


def test_eval_subset_is_first_k_and_binarise(synthetic_data_dir: Path) -> None:
    full = FevaeDataModule(synthetic_data_dir, val_size=8, preprocess="binarise")
    part = FevaeDataModule(synthetic_data_dir, val_size=8, preprocess="binarise", eval_subset=5)
    full.setup()
    part.setup()
    for name in EVAL_SETS:
        assert len(part.eval_sets[name]) == 5
        for t_part, t_full in zip(part.eval_sets[name].tensors, full.eval_sets[name].tensors):
            assert torch.equal(t_part, t_full[:5])
    assert set(full.train_set.tensors[0].unique().tolist()) == {0.0, 1.0}


def test_describe_and_sources(synthetic_data_dir: Path) -> None:
    dm = FevaeDataModule(synthetic_data_dir, val_size=4)
    rows = {row["split"]: row for row in dm.describe()}
    assert list(rows) == ["train", "val", *EVAL_SETS]
    assert rows["train"]["count"] == 60 and rows["val"]["shape"] == (1, 28, 28)
    assert rows["mnist_saltpepper"]["source"] == str(synthetic_data_dir / "mnist/t10k-images-idx3-ubyte.gz")
    assert dm.sources["val"][1] == str(synthetic_data_dir / "fashion-mnist/train-labels-idx1-ubyte.gz")
    with pytest.raises(FevaeError, match="unknown evaluation set"):
        dm.eval_dataloader("cifar10")


@pytest.mark.parametrize("kwargs, key", [
    ({"val_size": -1}, "data.val_size"), ({"batch_size": 0}, "data.batch_size"),
    ({"train_subset": 0}, "data.train_subset"), ({"eval_subset": 2.5}, "data.eval_subset"),
    ({"preprocess": "binarize"}, "data.preprocess"), ({"saltpepper_fraction": 2}, "data.saltpepper_fraction"),
    ({"num_workers": -1}, "data.num_workers"), ({"download": "yes"}, "data.download"),
])
def test_datamodule_validates_arguments(kwargs: dict, key: str) -> None:
    with pytest.raises(FevaeError, match=key.replace(".", r"\.")):
        FevaeDataModule(None, **kwargs)


@pytest.mark.parametrize("kwargs, key", [({"val_size": 64}, "data.val_size"),
                                         ({"val_size": 8, "train_subset": 57}, "data.train_subset"),
                                         ({"val_size": 8, "eval_subset": 33}, "data.eval_subset")])
def test_datamodule_sizes_checked_against_data(synthetic_data_dir: Path, kwargs: dict, key: str) -> None:
    with pytest.raises(FevaeError, match=key.replace(".", r"\.")):
        FevaeDataModule(synthetic_data_dir, **kwargs).setup()


# ------------------------------------------------------------------- doctor
def test_run_doctor_ok_and_broken(synthetic_data_dir: Path) -> None:
    lines, ok = run_doctor(synthetic_data_dir)
    text = "\n".join(lines)
    assert ok, text
    assert "fashionmnist/train: ok — 64 images 28x28" in text and "md5 differs" in text
    assert "mnist/train: MISSING (optional)" in text and text.endswith("result: ok")
    labels = np.zeros(32, np.uint8)  # one class only
    images, _ = labelled_images(32, seed=0)
    write_split(synthetic_data_dir / "mnist", "t10k", images, labels)
    lines, ok = run_doctor(synthetic_data_dir)
    assert not ok and any(line.startswith("mnist/test: BROKEN (required)") and "classes" in line for line in lines)
    (synthetic_data_dir / "fashion-mnist/t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8bjunk")
    lines, ok = run_doctor(synthetic_data_dir)
    assert any(line.startswith("fashionmnist/test: BROKEN") and "gzip" in line for line in lines)


def _doctor_cli(tmp_path: Path, *overrides: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    env.pop("FEVAE_DATA_DIR", None)
    return subprocess.run([sys.executable, "-m", "fevae.data", *overrides], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=60)


def test_doctor_cli(synthetic_data_dir: Path, tmp_path: Path) -> None:
    good = _doctor_cli(tmp_path, f"paths.data_dir={synthetic_data_dir}")
    assert good.returncode == 0, good.stdout + good.stderr
    assert "fashionmnist/train: ok — 64 images" in good.stdout and "mnist/test: ok — 32 images" in good.stdout
    broken = make_data_dir(tmp_path / "broken", sizes={("fashionmnist", "train"): 20, ("fashionmnist", "t10k"): 10})
    bad = _doctor_cli(tmp_path, f"paths.data_dir={broken}")
    assert bad.returncode == 1
    assert "mnist/test: MISSING (required)" in bad.stdout and "result: PROBLEMS (mnist/test missing)" in bad.stdout
    absent = _doctor_cli(tmp_path, f"paths.data_dir={tmp_path / 'absent'}")
    assert absent.returncode == 2 and "Traceback" not in absent.stderr
    assert absent.stderr.startswith("error: ") and absent.stderr.count("\n") == 1


def test_stacked_batches_equal_default_collation():
    """StackedBatches cuts each batch in one indexing: the same batches, in the same shuffled order; the
    TensorDataset it wraps (and a Subset of it) still collates as usual."""
    from torch.utils.data import DataLoader, Subset, TensorDataset

    from fevae.data.datamodule import StackedBatches, stacked_batch

    tensors = (torch.rand(37, 1, 4, 4), torch.arange(37))
    plain = TensorDataset(*tensors)
    assert [b[1].tolist() for b in DataLoader(Subset(plain, [3, 1, 2]), batch_size=2)] == [[3, 1], [2]]
    batches = []
    for dataset, collate in ((plain, None), (StackedBatches(plain), stacked_batch)):
        torch.manual_seed(3)
        batches.append(list(DataLoader(dataset, batch_size=8, shuffle=True, collate_fn=collate)))
    assert len(batches[0]) == len(batches[1]) == 5
    for a, b in zip(*batches):
        assert isinstance(b, list) and len(a) == len(b) == 2
        for ta, tb in zip(a, b):
            assert torch.equal(ta, tb)


def test_stacked_batches_keep_the_dataset_indices_readable():
    """Code that reads a loader's dataset indices (``loader.dataset.tensors[-1]``: the random regret subset,
    the separation callback) sees the wrapped dataset's tensors."""
    from torch.utils.data import DataLoader, TensorDataset

    from fevae.data.datamodule import StackedBatches, stacked_batch
    from fevae.evaluation.settings import set_indices

    index = torch.tensor([7, 3, 11, 5])
    loader = DataLoader(StackedBatches(TensorDataset(torch.rand(4, 1, 2, 2), torch.zeros(4), index)), batch_size=2,
                        collate_fn=stacked_batch)
    assert set_indices({"mnist": loader})["mnist"].tolist() == [7, 3, 11, 5]
