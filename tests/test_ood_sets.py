"""OOD sets from config (``data.ood_sets``): corruptions, path sources, the unchanged default sets,
and a configured set flowing through scores, metrics, figures, report, sweep summary and TensorBoard."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from fevae.data.corruptions import CORRUPTIONS, apply_corruptions, check_corruptions
from fevae.data.datamodule import EVAL_SETS, FevaeDataModule
from fevae.data.evalsets import check_ood_sources, ood_set_names, resolve_ood_sets
from fevae.data.idx import write_idx
from fevae.data.transforms import preprocess, salt_and_pepper
from fevae.errors import FevaeError
from helpers import labelled_images, make_data_dir
from pipeline import TINY, compose_cfg, save_run_config, train_cfg

ROOT = Path(__file__).resolve().parents[1]
#: the chains every corruption test runs (one per registered corruption)
CHAINS = {"salt_and_pepper": {"p": 0.3}, "gaussian_noise": {"sigma": 0.2}, "hflip": {}, "vflip": {},
          "rotate": {"degrees": 30}, "contrast": {"factor": 0.5}, "invert": {}, "constant": {}, "uniform_noise": {}}
RANDOM = ("salt_and_pepper", "gaussian_noise", "constant", "uniform_noise")


def chain(name: str) -> list[tuple[str, dict]]:
    return check_corruptions([{"name": name, **CHAINS[name]}])


# ------------------------------------------------------------------------------------ corruptions
def test_every_corruption_is_tested():
    assert set(CHAINS) == set(CORRUPTIONS)


@pytest.mark.parametrize("name", list(CHAINS))
@pytest.mark.parametrize("dtype", ["uint8", "float32"])
def test_a_corruption_keeps_shape_dtype_and_range_and_is_deterministic(name, dtype):
    images, _ = labelled_images(20, seed=1)
    x = images if dtype == "uint8" else (images / 255.0).astype(np.float32)
    before = x.copy()
    out = apply_corruptions(x, chain(name), seed=5)
    np.testing.assert_array_equal(x, before)  # the input is not touched
    assert out.shape == x.shape and out.dtype == x.dtype
    assert out.min() >= 0 and out.max() <= (255 if dtype == "uint8" else 1.0)
    assert not np.array_equal(out, x)
    np.testing.assert_array_equal(out, apply_corruptions(x, chain(name), seed=5))  # deterministic
    other_seed = apply_corruptions(x, chain(name), seed=6)
    assert (not np.array_equal(out, other_seed)) == (name in RANDOM)  # only the random ones depend on the seed
    if dtype == "float32":  # the same corruption of the same images in either dtype (up to rounding to pixels)
        as_uint8 = apply_corruptions(images, chain(name), seed=5)
        assert np.abs(out * 255.0 - as_uint8).max() <= 0.5 + 1e-3


def test_the_noise_of_an_image_depends_on_its_position_not_on_a_batch():
    """A chain is applied to a whole set once; the k-th corruption draws from default_rng([seed, k])."""
    images, _ = labelled_images(30, seed=2)
    steps = check_corruptions([{"name": "gaussian_noise", "sigma": 0.1}, {"name": "salt_and_pepper", "p": 0.2}])
    whole = apply_corruptions(images, steps, seed=3)
    x = images.astype(np.float64) / 255 + 0.1 * np.random.default_rng([3, 0]).standard_normal(images.shape)
    x = np.rint(np.clip(x, 0, 1) * 255).astype(np.uint8)
    rng = np.random.default_rng([3, 1])
    corrupt, salt = rng.random(images.shape) < 0.2, rng.random(images.shape) < 0.5
    x[corrupt & salt], x[corrupt & ~salt] = 255, 0
    np.testing.assert_array_equal(whole, x)


def test_salt_and_pepper_is_todays_and_nested_over_strengths():
    images, _ = labelled_images(40, seed=0)
    for seed, p in ((0, 0.2), (12345, 0.35)):  # the first corruption's generator is default_rng(seed)
        np.testing.assert_array_equal(apply_corruptions(images, check_corruptions([{"name": "salt_and_pepper", "p": p}]), seed),
                                      salt_and_pepper(images, p, seed))
    low = apply_corruptions(images, check_corruptions([{"name": "salt_and_pepper", "p": 0.2}]), 1)
    high = apply_corruptions(images, check_corruptions([{"name": "salt_and_pepper", "p": 0.5}]), 1)
    changed_low = low != images
    assert (high[changed_low] == low[changed_low]).all()  # the pixels p=0.2 corrupts, p=0.5 corrupts the same way


def test_geometric_corruptions_are_exact():
    images, _ = labelled_images(5, seed=4)
    one = lambda spec: apply_corruptions(images, check_corruptions([spec]), 0)  # noqa: E731
    np.testing.assert_array_equal(one("hflip"), images[:, :, ::-1])
    np.testing.assert_array_equal(one("vflip"), images[:, ::-1])
    np.testing.assert_array_equal(one({"name": "rotate", "degrees": 90}), np.rot90(images, 1, axes=(1, 2)))
    four = apply_corruptions(images, check_corruptions([{"name": "rotate", "degrees": 90}] * 4), 0)
    np.testing.assert_array_equal(four, images)
    dot = np.zeros((1, 28, 28), np.uint8)
    dot[0, 2, 5] = 255  # near the top-left corner: counter-clockwise takes it to the bottom-left
    assert tuple(np.argwhere(apply_corruptions(dot, check_corruptions([{"name": "rotate", "degrees": 90}]), 0)[0])[0]) == (22, 2)
    np.testing.assert_array_equal(one({"name": "contrast", "factor": 1}), images)
    flat = one({"name": "contrast", "factor": 0})
    assert (flat.max(axis=(1, 2)) - flat.min(axis=(1, 2)) == 0).all()
    np.testing.assert_array_equal(one({"name": "gaussian_noise", "sigma": 0}), images)
    np.testing.assert_array_equal(one("invert"), 255 - images)


def test_constant_and_uniform_noise_keep_nothing_of_the_image():
    images, _ = labelled_images(400, seed=4)
    flat = apply_corruptions(images, check_corruptions(["constant"]), 7)
    assert (flat.max(axis=(1, 2)) == flat.min(axis=(1, 2))).all()  # one grey level per image
    levels = flat[:, 0, 0] / 255.0
    assert 0.4 < levels.mean() < 0.6 and levels.min() < 0.05 and levels.max() > 0.95  # ~U[0, 1]
    noise = apply_corruptions(images, check_corruptions(["uniform_noise"]), 7) / 255.0
    assert abs(noise.mean() - 0.5) < 0.01 and abs(noise.var() - 1 / 12) < 0.002
    assert abs(np.corrcoef(noise.reshape(-1), images.reshape(-1))[0, 1]) < 0.01  # independent of the image


@pytest.mark.parametrize("corruptions, message", [
    ([{"name": "blur"}], r"corruptions\[0\] names an unknown corruption 'blur' — use one of salt_and_pepper"),
    ([{"p": 0.2}], r"corruptions\[0\] names no corruption"),
    (["hflip", {"name": "salt_and_pepper"}], r"corruptions\[1\]: salt_and_pepper has no p — salt_and_pepper takes p"),
    ([{"name": "hflip", "p": 1}], r"hflip has unknown parameters \['p'\] — hflip takes no parameters"),
    ([{"name": "salt_and_pepper", "p": 1.5}], r"salt_and_pepper p=1.5 is invalid — set p to a probability in \[0, 1\]"),
    ([{"name": "salt_and_pepper", "p": True}], r"p=True is invalid"),
    ([{"name": "gaussian_noise", "sigma": -0.1}], r"sigma=-0.1 is invalid"),
    ([{"name": "rotate", "degrees": float("nan")}], r"degrees=nan is invalid"),
    ([{"name": "contrast", "factor": "high"}], r"factor='high' is invalid"),
    ("hflip", r"is not a list of corruptions"),
])
def test_bad_corruptions_are_one_error_before_any_data_is_read(corruptions, message):
    with pytest.raises(FevaeError, match=message) as info:  # data_dir=None: nothing could be read
        FevaeDataModule(None, ood_sets={"bad": {"source": "mnist", "corruptions": corruptions}})
    assert "data.ood_sets.bad.corruptions" in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize("ood_sets, message", [
    ({"x": {"source": "imagenet"}}, r"data.ood_sets.x.source='imagenet' is not a built-in set — use one of fashionmnist, mnist, kmnist"),
    ({"x": {"source": "cifar10"}}, r"data.ood_sets.x.source=cifar10: CIFAR-10 test images are 3×32×32 but the run's are 1×28×28"),
    ({"x": {"source": "mnist", "path": "a.npy"}}, r"data.ood_sets.x has both a source and a path"),
    ({"x": {"corruptions": ["hflip"]}}, r"data.ood_sets.x has neither a source nor a path"),
    ({"x": {"path": "a.npy", "labels": "b"}}, r"data.ood_sets.x has unknown keys \['labels'\]"),
    ({"x": "a.npy"}, r"data.ood_sets.x='a.npy' is not a mapping .* \+data.ood_sets.x.path="),
    ({"a/b": {"source": "mnist"}}, r"invalid set name 'a/b'"),
    ({"fashionmnist": {"source": "mnist"}}, r"'fashionmnist' is the in-distribution set's name"),
    ({"mnist": None, "mnist_saltpepper": None}, r"data.ood_sets has no set left"),
    ({"x": {"path": "a.npy", "eval_split": {"val": -1}}}, r"data.ood_sets.x.eval_split.val=-1 is invalid"),
    ({"x": {"path": "a.npy", "eval_split": {"seed": 3}}}, r"eval_split has unknown keys \['seed'\] .* data.eval_split.seed"),
    (["mnist"], r"data.ood_sets=\['mnist'\] is not a mapping"),
])
def test_bad_ood_sets_are_one_error_before_any_data_is_read(ood_sets, message):
    with pytest.raises(FevaeError, match=message):
        FevaeDataModule(None, ood_sets=ood_sets)


def test_ood_sets_from_the_shipped_config(tmp_path):
    cfg = compose_cfg("train", tmp_path, ["+experiment=v2_gaussian"])
    assert ood_set_names(cfg.data) == ["mnist", "mnist_saltpepper"] == list(EVAL_SETS[1:])
    sets = resolve_ood_sets(cfg.data.ood_sets)
    assert sets["mnist_saltpepper"].corruptions == (("salt_and_pepper", {"p": 0.2}),)
    cfg = compose_cfg("train", tmp_path, ["+experiment=v2_gaussian", "data.saltpepper_fraction=0.3", "data.ood_sets.mnist=null",
                                          "+data.ood_sets.mine.path=x.npy",
                                          "+data.ood_sets.fmnist_flip={source: fashionmnist, corruptions: [hflip, {name: rotate, degrees: 10}]}"])
    sets = resolve_ood_sets(cfg.data.ood_sets)
    assert list(sets) == ["mnist_saltpepper", "mine", "fmnist_flip"]
    assert sets["mnist_saltpepper"].describe() == "MNIST test + salt_and_pepper(p=0.3)"
    assert sets["fmnist_flip"].describe() == "FashionMNIST test + hflip, rotate(degrees=10)"
    assert ood_set_names(compose_cfg("train", tmp_path, ["+experiment=v2_gaussian", "~data.ood_sets.mnist_saltpepper"]).data) == ["mnist"]
    from fevae.evaluation.settings import selectable_metrics

    keys = selectable_metrics(cfg)
    assert any(k.startswith("ood_val/mine/APO/fevae/") for k in keys) and not any("/mnist/" in k for k in keys)


# ----------------------------------------------------------------------- the default sets unchanged
def _digest(dm: FevaeDataModule) -> dict:
    out = {}
    for part, sets in (("test", dm.eval_sets), ("val", dm.eval_val_sets)):
        for name, ds in sets.items():
            h = hashlib.sha256()
            for t in ds.tensors:
                h.update(t.numpy().tobytes())
            out[f"{part}/{name}"] = h.hexdigest()[:16]
    out["loaders"] = list(dm.eval_loaders())
    return out


#: the eval tensors (x, y, index) of every part of the three fixed sets, from the code *before*
#: data.ood_sets existed (fevae 8ac79d4), on helpers.make_data_dir's synthetic files
BEFORE = {
    "syn/0/scale/0.2": {
        "test/fashionmnist": "93e5cc5f226cc42d", "test/mnist": "4da137bcb8bd4a44", "test/mnist_saltpepper": "ea7cc5c3c5b16d88",
        "val/fashionmnist": "bd85c1a8705ded6b", "val/mnist": "f187661c8a4e8416", "val/mnist_saltpepper": "9b3a84a30112e3aa",
        "loaders": ["fashionmnist", "mnist", "mnist_saltpepper", "val/fashionmnist", "val/mnist", "val/mnist_saltpepper"]},
    "syn/7/binarise/0.35": {
        "test/fashionmnist": "5f35c206f20d0d84", "test/mnist": "95772ac231830775", "test/mnist_saltpepper": "de562a11fe9fb753",
        "val/fashionmnist": "22eb493be77450bf", "val/mnist": "1faa142c648513a0", "val/mnist_saltpepper": "45a8667abf22d15b",
        "loaders": ["fashionmnist", "mnist", "mnist_saltpepper", "val/fashionmnist", "val/mnist", "val/mnist_saltpepper"]},
    "syn/12345/scale/0.2": {  # a run made before eval_split: its first eval_subset images, no validation part
        "test/fashionmnist": "499d470cbad8f0fd", "test/mnist": "95d013e0d1bffb30", "test/mnist_saltpepper": "168060643aa0c40b",
        "val/fashionmnist": "e3b0c44298fc1c14", "val/mnist": "e3b0c44298fc1c14", "val/mnist_saltpepper": "e3b0c44298fc1c14",
        "loaders": ["fashionmnist", "mnist", "mnist_saltpepper"]},
}
CASES = {"syn/0/scale/0.2": dict(seed=0, preprocess="scale", saltpepper_fraction=0.2, eval_split={"val": 12, "test": None, "seed": 0}),
         "syn/7/binarise/0.35": dict(seed=7, preprocess="binarise", saltpepper_fraction=0.35, eval_split={"val": 5, "test": 20, "seed": 3}),
         "syn/12345/scale/0.2": dict(seed=12345, preprocess="scale", saltpepper_fraction=0.2, eval_subset=20)}


@pytest.mark.parametrize("case", list(CASES))
def test_the_default_sets_give_exactly_the_images_they_gave_before(tmp_path, case):
    data_dir = make_data_dir(tmp_path / "data")
    kw = dict(data_dir=str(data_dir), val_size=16, **CASES[case])
    frac = kw["saltpepper_fraction"]
    explicit = {"mnist": {"source": "mnist"},
                "mnist_saltpepper": {"source": "mnist", "corruptions": [{"name": "salt_and_pepper", "p": frac}]}}
    for ood_sets in (None, explicit):  # the constructor's default and the config's explicit form
        dm = FevaeDataModule(**kw, ood_sets=ood_sets)
        dm.setup()
        assert _digest(dm) == BEFORE[case]
    # an independent re-implementation of the salt-and-pepper noise the fixed set had
    images, _ = labelled_images(32, seed=2)  # helpers.make_data_dir's MNIST test file
    rng = np.random.default_rng(kw["seed"])
    corrupt, salt = rng.random(images.shape) < frac, rng.random(images.shape) < 0.5
    noisy = images.copy()
    noisy[corrupt & salt], noisy[corrupt & ~salt] = 255, 0
    for sets in (dm.eval_sets, dm.eval_val_sets):
        x, _, index = sets["mnist_saltpepper"].tensors
        assert torch.equal(x, preprocess(noisy[index.numpy()], kw["preprocess"]))


def test_the_shipped_config_builds_the_same_sets(tmp_path):
    from fevae.validation import build

    data_dir = make_data_dir(tmp_path / "data")
    # the digest predates the fixed validation pool: the split of runs made before it (val_pool=null) builds the same sets
    cfg = train_cfg(tmp_path / "run", data_dir, extra=["seed=0", "data.eval_split.val_pool=null"])
    dm = build("data", cfg.data, batch_size=16, eval_batch_size=7)
    dm.setup()
    assert _digest(dm) == BEFORE["syn/0/scale/0.2"]


# ------------------------------------------------------------------------------------ path sources
def _write_pngs(folder: Path, images: np.ndarray) -> Path:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    for i, im in enumerate(images):
        Image.fromarray(np.ascontiguousarray(im)).save(folder / f"img_{i:03d}.png")
    return folder


def _module(data_dir: Path, ood_sets: dict, **kw) -> FevaeDataModule:
    dm = FevaeDataModule(str(data_dir), val_size=16, eval_batch_size=5, eval_split={"val": 6, "test": None, "seed": 0},
                         ood_sets=ood_sets, **kw)
    dm.setup()
    return dm


def test_every_path_format_gives_the_same_set(tmp_path, synthetic_data_dir):
    images, _ = labelled_images(24, seed=9)
    files = {"npy": tmp_path / "x.npy", "npy_float": tmp_path / "xf.npy", "npz": tmp_path / "x.npz",
             "npz_images": tmp_path / "named.npz", "idx": tmp_path / "x-idx3-ubyte.gz", "png": tmp_path / "pngs"}
    np.save(files["npy"], images)
    np.save(files["npy_float"], images.astype(np.float32) / 255)
    np.savez(files["npz"], images)
    np.savez(files["npz_images"], labels=np.arange(24), images=images)
    write_idx(files["idx"], images)
    _write_pngs(files["png"], images)
    dm = _module(synthetic_data_dir, {name: {"path": str(path)} for name, path in files.items()})
    assert dm.eval_set_names == ["fashionmnist", *files]
    reference = dm.eval_sets["npy"].tensors
    assert len(reference[0]) == 18 and len(dm.eval_val_sets["npy"]) == 6
    assert (reference[1] == -1).all()  # a path source has no labels
    for name in files:
        for got, want in zip(dm.eval_sets[name].tensors, reference):
            torch.testing.assert_close(got, want, rtol=0, atol=1e-6)
    # the same split rule as every set of this size; salt-and-pepper applies to a path source too
    noisy = _module(synthetic_data_dir, {"n": {"path": str(files["npy"]), "corruptions": [{"name": "salt_and_pepper", "p": 0.2}]}},
                    seed=4).eval_sets["n"].tensors
    index = noisy[2].numpy()
    torch.testing.assert_close(noisy[0], preprocess(salt_and_pepper(images, 0.2, 4)[index], "scale"))
    binarised = _module(synthetic_data_dir, {"f": {"path": str(files["npy_float"])}}, preprocess="binarise").eval_sets["f"].tensors[0]
    assert torch.equal(binarised, preprocess(images[index], "binarise"))


def test_a_corrupted_copy_of_the_in_distribution_test_set(synthetic_data_dir):
    dm = _module(synthetic_data_dir, {"fm_flip": {"source": "fashionmnist", "corruptions": ["hflip"]}})
    assert dm.eval_set_names == ["fashionmnist", "fm_flip"]
    for sets in (dm.eval_sets, dm.eval_val_sets):
        x, _, i = sets["fm_flip"].tensors
        ref_x, _, ref_i = sets["fashionmnist"].tensors
        assert torch.equal(i, ref_i) and torch.equal(x, ref_x.flip(-1))  # the same images, mirrored, in the same parts
    batches = [torch.cat([b[0] for b in dm.eval_dataloader("fm_flip", part)]) for part in ("test", "val")]
    dm2 = FevaeDataModule(str(synthetic_data_dir), val_size=16, eval_batch_size=64, eval_split={"val": 6, "test": None, "seed": 0},
                          ood_sets={"fm_flip": {"source": "fashionmnist", "corruptions": ["hflip"]}})
    assert all(torch.equal(a, torch.cat([b[0] for b in dm2.eval_dataloader("fm_flip", part)]))  # independent of the batch size
               for a, part in zip(batches, ("test", "val")))


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing.npy", r"data.ood_sets.mine.path=.*missing.npy does not exist"),
    (lambda p: (np.save(p / "w.npy", np.zeros((4, 32, 32), np.uint8)), p / "w.npy")[1], r"has shape \[4, 32, 32\], not \[N,28,28\]"),
    (lambda p: (np.save(p / "o.npy", np.array([{"a": 1}], dtype=object)), p / "o.npy")[1], r"holds Python objects, which are never unpickled"),
    (lambda p: ((p / "c.npy").write_bytes(b"\x93NUMPY garbage"), p / "c.npy")[1], r"is not a readable .npy array"),
    (lambda p: (np.savez(p / "two.npz", a=np.zeros((4, 28, 28)), b=np.zeros((4, 28, 28))), p / "two.npz")[1],
     r"holds the arrays \['a', 'b'\], so which one to read is unclear — .* name it 'images'"),
    (lambda p: (np.save(p / "f.npy", np.full((4, 28, 28), 2.0)), p / "f.npy")[1], r"float pixels in \[2, 2\], outside \[0,1\]"),
    (lambda p: ((p / "empty").mkdir(), p / "empty")[1], r"holds no .png files"),
    (lambda p: ((p / "x.csv").write_text("1,2\n"), p / "x.csv")[1], r"unsupported format"),
    (lambda p: (np.save(p / "small.npy", np.zeros((10, 28, 28), np.uint8)), p / "small.npy")[1],
     r"data.ood_sets.mine \(.*small.npy\) holds 10 images, fewer than the 12 validation \+ at least 1 test images \(validation from "
     r"its pool of 5 = val_pool 0.5 of the images, test from the other 5\) of its split — "
     r"give this set its own sizes, e.g. \+data.ood_sets.mine.eval_split.val=5 \+data.ood_sets.mine.eval_split.test=5"),
])
def test_a_bad_path_source_is_one_error_before_training(tmp_path, synthetic_data_dir, make, message):
    path = make(tmp_path)
    cfg = train_cfg(tmp_path / "run", synthetic_data_dir, extra=[f"+data.ood_sets.mine.path={path}"])
    with pytest.raises(FevaeError, match=message) as info:
        check_ood_sources(cfg.data)  # the early check: reads only the path sources
    assert "\n" not in str(info.value)
    with pytest.raises(FevaeError, match=message):
        FevaeDataModule(str(synthetic_data_dir), val_size=16, eval_split={"val": 12, "test": None, "seed": 0, "val_pool": 0.5},
                        ood_sets={"mine": {"path": str(path)}}).setup()


def test_a_small_set_with_its_own_split(tmp_path, synthetic_data_dir):
    np.save(tmp_path / "small.npy", labelled_images(10, seed=3)[0])
    dm = _module(synthetic_data_dir, {"mnist": {"source": "mnist"}, "small": {"path": str(tmp_path / "small.npy"), "eval_split": {"val": 3, "test": 7}}})
    assert [len(dm.eval_val_sets[n]) for n in ("fashionmnist", "mnist", "small")] == [6, 6, 3]
    assert [len(dm.eval_sets[n]) for n in ("fashionmnist", "mnist", "small")] == [26, 26, 7]
    record = dm.split_record()
    assert record["per_set"] == {"small": {"val": 3, "test": 7}} and record["sets"]["small"].endswith("small.npy")


def test_the_train_cli_refuses_a_bad_path_before_training(tmp_path, synthetic_data_dir):
    run = tmp_path / "run"
    result = subprocess.run([sys.executable, "-m", "fevae.train", "+experiment=v2_gaussian", f"paths.data_dir={synthetic_data_dir}",
                             *TINY, f"hydra.run.dir={run}", f"+data.ood_sets.mine.path={tmp_path / 'nope.npy'}"],
                            capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert result.returncode == 2, result.stderr[-2000:]
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "data.ood_sets.mine.path=" in lines[0] and "nope.npy does not exist" in lines[0]
    assert not (run / "checkpoints").exists()


# ------------------------------------------------------------------- end to end: train and evaluate
LEAN = ["fe.extra_layers=[]", "eval.detectors=[iwae]"]


class FigureTexts:
    """Every text (titles, labels, legends) of each figure fevae.outputs.plots saves, by file stem."""

    def __init__(self, monkeypatch):
        import matplotlib.text

        from fevae.outputs import plots

        self.texts: dict[str, str] = {}
        save = plots._save

        def spy(fig, out_base):
            self.texts[Path(out_base).name] = " | ".join(t.get_text() for t in fig.findobj(matplotlib.text.Text))
            return save(fig, out_base)

        monkeypatch.setattr(plots, "_save", spy)
        # write_outputs draws the figures in a worker process; the spy needs them drawn in this one
        import functools

        from joblib import Parallel

        from fevae.outputs import write as evaluation

        monkeypatch.setattr(evaluation, "Parallel", functools.partial(Parallel, backend="threading"))


@pytest.fixture(scope="module")
def mine_run(tmp_path_factory):
    """A tiny V2 run trained with +data.ood_sets.mine.path=<.npy of 28 images>."""
    from fevae.pipeline.train import train

    root = tmp_path_factory.mktemp("ood_sets")
    data_dir = make_data_dir(root / "data")
    images, _ = labelled_images(28, seed=11)
    np.save(root / "mine.npy", images)
    run_dir = root / "run"
    cfg = train_cfg(run_dir, data_dir, extra=[*LEAN, "eval.figures=all", f"+data.ood_sets.mine.path={root / 'mine.npy'}"])
    save_run_config(cfg, run_dir)
    with pytest.MonkeyPatch.context() as mp:
        figures = FigureTexts(mp)
        train(cfg)
    return run_dir, data_dir, root, figures.texts


def _histogram_tags(folder: Path) -> set[str]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return set(acc.PluginTagToContent("histograms"))


@pytest.mark.slow
def test_a_configured_set_is_in_every_output(mine_run, tmp_path):
    run_dir, _, _, texts = mine_run
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert list(metrics["ood"]) == list(metrics["ood_val"]) == ["mnist", "mnist_saltpepper", "mine"]
    assert metrics["n"]["mine"] == 14 and metrics["n_val"]["mine"] == 12  # TINY: 12 validation from a pool of 14, the other 14 test
    assert set(metrics["ood"]["mine"]) == {"PR", "APO", "other"} and "auroc_ci" in metrics["ood"]["mine"]["APO"]["fevae"]
    for rel in ("scores/mine.npz", "scores/val/mine.npz"):
        assert (run_dir / rel).is_file()
    split = json.loads((run_dir / "eval_split.json").read_text())
    assert len(split["val"]["mine"]) == 12 and split["sets"]["mine"].endswith("mine.npy")
    report = (run_dir / "report.md").read_text()
    assert "| mine | PR |" in report and "| mine | APO |" in report and "mine val | mine test" in report and "AUROC mine" in report
    for figure in ("detectors_auroc", "hist_vae", "hist_fevae", "hist_fe", "hist_iwae"):
        assert "mine (OOD)" in texts[figure], figure
    assert "mine" not in texts["fig1a_log_p_vae"]  # the paper's figures stay the paper's
    assert {"APO/log_p_fevae", "other/iwae"} <= _histogram_tags(run_dir / "tensorboard" / "eval" / "mine")  # its own run
    assert {"APO/log_p_fevae", "other/iwae"} <= _histogram_tags(run_dir / "tensorboard" / "eval")  # a step of the overlay
    # a sweep's summary: two "seeds" of this run
    from fevae.outputs.sweep import write_summary

    sweep = tmp_path / "sweep"
    for job, seed in ((0, 1), (1, 2)):
        (sweep / str(job) / ".hydra").mkdir(parents=True)
        (sweep / str(job) / ".hydra" / "overrides.yaml").write_text(f"- seed={seed}\n")
        shutil.copy(run_dir / "metrics.json", sweep / str(job) / "metrics.json")
    write_summary(sweep, "ood_val/mine/APO/fevae/auroc")
    assert "ood/mine/APO/fevae/auroc" in (sweep / "summary.csv").read_text().splitlines()[0]
    summary = (sweep / "summary.md").read_text()
    assert "| ood_val/mine/APO/fevae/auroc |" in summary and "Best job by ood_val/mine/APO/fevae/auroc" in summary


@pytest.mark.slow
def test_evaluate_adds_sets_to_a_finished_run_without_training(mine_run, tmp_path):
    from fevae.pipeline.evaluate import evaluate

    run_dir, _, root, _ = mine_run
    images, _ = labelled_images(30, seed=12)
    pngs = _write_pngs(root / "pngs", images)
    out = tmp_path / "evaluated"
    overrides = [f"+data.ood_sets.png.path={pngs}", "+data.ood_sets.fm_flip.source=fashionmnist",
                 "+data.ood_sets.fm_flip.corruptions=[{name: hflip}]", "~data.ood_sets.mnist_saltpepper"]
    stamp = {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*.ckpt")}
    with pytest.MonkeyPatch.context() as mp:
        figures = FigureTexts(mp)
        metrics = evaluate(run_dir, overrides, out)["metrics"]
    assert list(metrics["ood"]) == ["mnist", "fm_flip", "mine", "png"]
    assert metrics["n"]["png"] == 15 and metrics["n_val"]["png"] == 12  # 30 images: a validation pool of 15, the other 15 test
    assert "png (OOD)" in figures.texts["detectors_auroc"] and "fm_flip (OOD)" in figures.texts["hist_fevae"]
    assert "| png | APO |" in (out / "report.md").read_text()
    assert stamp == {p: p.stat().st_mtime_ns for p in (run_dir / "checkpoints").rglob("*.ckpt")}  # nothing retrained
    assert not list(out.glob("checkpoints"))
    # the sets the run had get the scores the run gave them: adding sets changes no other set's scores
    for name in ("fashionmnist", "mnist", "mine", "val/mine"):
        with np.load(run_dir / "scores" / f"{name}.npz") as a, np.load(out / "scores" / f"{name}.npz") as b:
            for key in a.files:
                np.testing.assert_array_equal(a[key], b[key], err_msg=f"{name} {key}")


@pytest.mark.slow
def test_evaluate_adds_a_set_to_a_run_made_before_ood_sets(mine_run, tmp_path, caplog):
    """A run whose stored config has no data.ood_sets (and another salt-and-pepper fraction) gets the
    built-in sets with *its* fraction, plus the set added on the command line."""
    from fevae.pipeline.evaluate import evaluate

    run_dir, _, root, _ = mine_run
    old = tmp_path / "old_run"
    shutil.copytree(run_dir, old)
    stored = OmegaConf.load(old / ".hydra" / "config.yaml")
    stored.data.pop("ood_sets")
    stored.data.saltpepper_fraction = 0.4
    OmegaConf.save(stored, old / ".hydra" / "config.yaml")
    out = tmp_path / "rescored"
    overrides = [f"+data.ood_sets.extra.path={root / 'mine.npy'}"]
    composed = compose_cfg("evaluate", out, [f"run_dir={old}", *TINY, *overrides])
    with caplog.at_level("INFO"):
        metrics = evaluate(old, overrides, out, composed=composed)["metrics"]
    assert "predates the settings data.ood_sets" in caplog.text
    assert list(metrics["ood"]) == ["mnist", "mnist_saltpepper", "extra"]
    split = json.loads((out / "eval_split.json").read_text())
    assert split["sets"]["mnist_saltpepper"] == "MNIST test + salt_and_pepper(p=0.4)"
    with np.load(run_dir / "scores" / "mine.npz") as a, np.load(out / "scores" / "extra.npz") as b:
        assert a["log_p_vae_apo"].shape == b["log_p_vae_apo"].shape  # the same images under another name (another noise stream)
