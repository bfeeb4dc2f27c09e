"""Lightning data module: the in-distribution train/val images and the evaluation sets, held in memory.

* In-distribution data (``data.dataset``): a registered dataset (:mod:`fevae.data.discovery`:
  ``fashionmnist`` — the default —, ``mnist``, ``kmnist``, ``emnist_letters``, ``cifar10``,
  ``svhn``), whose train split trains and whose test split is the in-distribution evaluation set;
  or your own images (``folder`` / ``npz`` with ``data.path``, :mod:`fevae.data.own`), whose
  train/val/test parts come from the files or, for one pool of images, from seeded splits: a fixed
  ``test_size`` hold-out (permutation seeded by ``eval_split.seed``, so every run seed is tested on
  the same images) is the evaluation set, the rest trains. Every image must have the shape
  ``data.image_shape`` ``(C, H, W)``; the models are built from it.
* ``train_set`` / ``val_set``: the training images minus a seeded random hold-out of ``val_size``
  images (``torch.Generator().manual_seed(seed)``; a user's ``val`` part replaces it);
  ``train_subset`` keeps a seeded random ``train_subset`` of the remaining images. Items are ``(x, y)``.
* Evaluation sets (in this order): the in-distribution test images (named :attr:`id_name`:
  ``data.name``, else ``data.dataset``), then the OOD sets of ``ood_sets`` (``data.ood_sets``,
  :mod:`fevae.data.evalsets`) in config order — by default ``"mnist"`` (MNIST test) and
  ``"mnist_saltpepper"`` (MNIST test with salt-and-pepper noise of ``saltpepper_fraction`` applied
  to the raw pixels of the whole set, then preprocessed). An OOD set's images come from a
  registered dataset's test split, the in-distribution test images, or a file or folder
  (``path``), go through its corruption chain (:mod:`fevae.data.corruptions`, seeded by ``seed``)
  as a whole set, and are preprocessed like every set (uint8 pixels or [0,1] floats; labels of a
  path source are -1). Each is split by :func:`split_eval_indices` — a permutation seeded by
  ``eval_split.seed`` (fixed, independent of the run's ``seed``, so every seed is tested on the
  same images) — into a disjoint **validation** part (``eval_split.val`` images: anything that
  *selects* reads these) and a **test** part (``eval_split.test`` images, null = all the rest:
  what reports show). ``eval_sets`` holds the test parts, ``eval_val_sets`` the validation parts.
  Sets of the same size share the split (MNIST and salt-and-pepper MNIST: a corrupted validation
  digit is never a test digit); an OOD set may have its own sizes (``ood_sets.<set>.eval_split``).
  Items are ``(x, y, index)`` with ``index`` the int64 position of the image in the *whole* eval
  set (ascending within a part), so the Monte-Carlo noise of an image does not depend on the split
  and predictions gathered under DDP can be de-duplicated.

``x`` is float32 ``[C, H, W]`` (``[1, 28, 28]`` by default), ``y`` int64.
"""

from __future__ import annotations

import logging
import math
import numbers
from collections.abc import Mapping
from typing import Any

import lightning
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

from fevae.data.corruptions import apply_corruptions
from fevae.data.evalsets import (BUILTIN_OOD_SETS, ID_SET, ID_SOURCE, OodSet, check_split_size, plain, read_path_source, resolve_ood_sets,
                                  validation_pool)
from fevae.data.own import OWN_KINDS, load_own
from fevae.data.transforms import PREPROCESS_MODES
from fevae.errors import FevaeError, require
from fevae.inputs import DEFAULT_IMAGE_SHAPE, check_image_shape, to_model_input

log = logging.getLogger(__name__)

#: Names of the *default* evaluation sets (a run's own are ``FevaeDataModule.eval_set_names``:
#: ``fashionmnist`` then the keys of ``data.ood_sets``), in the order of :meth:`FevaeDataModule.predict_dataloader`.
EVAL_SETS = (ID_SET, *BUILTIN_OOD_SETS)
#: The two parts of every evaluation set: ``val`` selects, ``test`` reports.
PARTS = ("val", "test")
#: Loader/score-set name prefix of a validation part (``"val/mnist"``); test parts keep the bare name.
VAL_PREFIX = "val/"


class StackedBatches(Dataset):
    """A :class:`TensorDataset` seen by fevae's own loaders: each batch cut from its tensors in one indexing
    each (``__getitems__``, which the DataLoader prefers) instead of stacked from one item at a time. The
    same batches as the default collation (the same sampler draws the same indices), at half the cost
    (``make bench``'s training section). The data module's ``train_set`` etc. stay plain TensorDatasets,
    so a ``Subset`` of them or another loader collates as usual."""

    def __init__(self, dataset: TensorDataset):
        self.dataset = dataset

    @property
    def tensors(self) -> tuple[torch.Tensor, ...]:
        """The wrapped dataset's tensors (what code reading ``loader.dataset.tensors`` expects)."""
        return self.dataset.tensors

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, ...]:
        return self.dataset[index]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, ...]:
        index = torch.as_tensor(indices, dtype=torch.long)
        return tuple(t[index] for t in self.dataset.tensors)


def stacked_batch(batch: tuple[torch.Tensor, ...]) -> list[torch.Tensor]:
    """The collate function of :class:`StackedBatches`: its batch as the list default collation gives."""
    return list(batch)


def part_name(name: str, part: str) -> str:
    """Loader / score-set name of ``part`` of eval set ``name``: ``"mnist"`` (test), ``"val/mnist"``."""
    return name if part == "test" else VAL_PREFIX + name


def split_part(key: str) -> tuple[str, str]:
    """Inverse of :func:`part_name`: ``"val/mnist" -> ("mnist", "val")``, ``"mnist" -> ("mnist", "test")``."""
    return (key[len(VAL_PREFIX):], "val") if key.startswith(VAL_PREFIX) else (key, "test")


def split_eval_indices(n: int, val: int, test: int | None, seed: int, val_pool: float | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted positions ``(val, test)`` of an eval set of ``n`` images.

    Every image gets a fixed rank from a permutation of ``range(n)`` (``numpy.random.default_rng(seed)``).
    With ``val_pool`` (a fraction, ``data.eval_split.val_pool``) the first ``ceil(val_pool * n)`` ranks
    are the **validation pool** and the rest the **test pool**, whatever the sizes: the validation part
    is the first ``val`` ranks of the validation pool, the test part the first ``test`` (``None``: all)
    ranks of the test pool. So no profile's test image is ever in any profile's validation part (the
    smoke, cpu and paper profiles differ only in how much of each pool they take). Without ``val_pool``
    (runs made before it existed) the validation part is the first ``val`` ranks and the test part the
    next ``test``, which made the parts depend on the sizes.
    """
    pool = validation_pool(n, val_pool)
    if val_pool is not None:
        require(val <= pool, f"data.eval_split.val={val} exceeds the validation pool of an evaluation set of {n} images "
                f"({pool} = data.eval_split.val_pool={val_pool} of them)",
                f"set data.eval_split.val to at most {pool} (or raise data.eval_split.val_pool, which moves images "
                "from every test part into the validation pool)")
        require(test is None or test <= n - pool, f"data.eval_split.test={test} exceeds the test pool of an evaluation set "
                f"of {n} images ({n - pool} after the validation pool of data.eval_split.val_pool={val_pool})",
                f"set data.eval_split.test to at most {n - pool}, or null (all of the test pool)")
    else:
        require(val + (test or 0) <= n, f"data.eval_split asks for {val} validation + {test} test images "
                f"but an evaluation set holds {n}", f"set data.eval_split.val + data.eval_split.test to at most {n}")
    perm = np.random.default_rng(seed).permutation(n)
    start = pool if val_pool is not None else val
    val_idx = perm[:val]
    test_idx = perm[start:] if test is None else perm[start : start + test]
    return np.sort(val_idx), np.sort(test_idx)


def _require_int(key: str, value: Any, minimum: int, optional: bool = False) -> None:
    """Require ``data.<key>`` to be an int ≥ ``minimum`` (or None when ``optional``)."""
    if optional and value is None:
        return
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool) and value >= minimum
    bound = "a positive integer" if minimum == 1 else f"an integer ≥ {minimum}"
    require(ok, f"data.{key}={value!r} is invalid",
            f"set data.{key} to {bound}{' or null' if optional else ''}")


#: images and labels of one part of the in-distribution data
Part = tuple[np.ndarray, np.ndarray]


def _where(split: Any) -> tuple[str, str | None]:
    """``(images, labels)`` files of a loaded split (:class:`fevae.data.discovery.LoadedSplit`), or its source and None."""
    files = tuple(getattr(split, "files", ()) or ())
    return (str(files[0]), str(files[1])) if len(files) == 2 else (str(split.source), None)


def raw_shape(image_shape: tuple[int, int, int]) -> tuple[int, ...]:
    """The per-image array shape of raw images of ``(C, H, W)``: ``(H, W)`` for one channel, else ``(H, W, C)``."""
    c, h, w = image_shape
    return (h, w) if c == 1 else (h, w, c)


def shape_text(shape: tuple[int, ...]) -> str:
    """``(28, 28)`` → ``1×28×28``, ``(32, 32, 3)`` → ``3×32×32`` (raw layouts in the ``C×H×W`` words of ``data.image_shape``)."""
    c, h, w = (1, *shape) if len(shape) == 2 else (shape[2], shape[0], shape[1]) if len(shape) == 3 else (0, 0, 0)
    return f"{c}×{h}×{w}" if c else "×".join(map(str, shape))


class FevaeDataModule(lightning.LightningDataModule):
    """In-distribution train/val images and the evaluation sets (see the module doc)."""

    def __init__(self, data_dir: str | None = None, preprocess: str = "scale", val_size: int = 5000,
                 batch_size: int = 128, eval_batch_size: int = 512, num_workers: int = 0, seed: int = 0,
                 train_subset: int | None = None, eval_split: Mapping[str, Any] | None = None,
                 saltpepper_fraction: float = 0.2, download: bool = False, download_dir: str | None = None,
                 pin_memory: bool = False, eval_subset: int | None = None, ood_sets: Mapping[str, Any] | None = None,
                 dataset: str = ID_SET, name: str | None = None, image_shape: Any = DEFAULT_IMAGE_SHAPE,
                 path: str | None = None, test_size: int | None = None) -> None:
        super().__init__()
        from fevae.data.discovery import DATASET_INFO

        known = (*DATASET_INFO, *OWN_KINDS)
        require(dataset in known, f"data.dataset={dataset!r} is not a known dataset",
                f"use one of {', '.join(known)} (e.g. data=mnist, data=cifar10, data=folder data.path=<folder>)")
        image_shape = check_image_shape(image_shape)
        if dataset in DATASET_INFO and tuple(DATASET_INFO[dataset].image_shape) != image_shape:
            want = list(DATASET_INFO[dataset].image_shape)
            raise FevaeError(f"data.image_shape={list(image_shape)} but {DATASET_INFO[dataset].title} images are {want}",
                             f"set data.image_shape={want} (or pick the dataset's config: data={dataset})")
        require(name is None or (isinstance(name, str) and name.strip() != ""), f"data.name={name!r} is invalid",
                "name the in-distribution set with letters, digits, '_', '.', '-', or leave data.name null")
        _require_int("test_size", test_size, 1, optional=True)
        require(dataset not in OWN_KINDS or (isinstance(path, str) and path.strip() != ""), f"data={dataset} needs data.path",
                f"pass data.path=<{'folder of PNGs' if dataset == 'folder' else 'file.npz'}> (your in-distribution images)")
        require(preprocess in PREPROCESS_MODES, f"data.preprocess={preprocess!r} is invalid",
                f"set data.preprocess to one of {', '.join(PREPROCESS_MODES)}")
        _require_int("val_size", val_size, 0)
        _require_int("batch_size", batch_size, 1)
        _require_int("eval_batch_size", eval_batch_size, 1)
        _require_int("num_workers", num_workers, 0)
        _require_int("seed", seed, 0)
        _require_int("train_subset", train_subset, 1, optional=True)
        _require_int("eval_subset", eval_subset, 1, optional=True)
        if eval_split is None:  # a run made before eval_split existed: its first eval_subset images were its test set
            eval_split = {"val": 0, "test": eval_subset, "seed": None}
        eval_split = dict(eval_split)
        unknown = sorted(set(eval_split) - {"val", "test", "seed", "val_pool"})
        require(not unknown, f"data.eval_split has unknown keys {unknown}", "use data.eval_split.{val,test,seed,val_pool}")
        pool = eval_split.get("val_pool")
        require(pool is None or (isinstance(pool, numbers.Real) and not isinstance(pool, bool) and 0.0 < pool < 1.0),
                f"data.eval_split.val_pool={pool!r} is invalid", "set data.eval_split.val_pool to a fraction in (0, 1), e.g. 0.2")
        _require_int("eval_split.val", eval_split.get("val", 0), 0)
        _require_int("eval_split.test", eval_split.get("test"), 1, optional=True)
        _require_int("eval_split.seed", eval_split.get("seed"), 0, optional=True)
        ok = (isinstance(saltpepper_fraction, numbers.Real) and not isinstance(saltpepper_fraction, bool)
              and 0.0 <= saltpepper_fraction <= 1.0)
        require(ok, f"data.saltpepper_fraction={saltpepper_fraction!r} is invalid",
                "set data.saltpepper_fraction to a probability in [0, 1], e.g. 0.2")
        for key, flag in (("download", download), ("pin_memory", pin_memory)):
            require(isinstance(flag, bool), f"data.{key}={flag!r} is invalid", f"set data.{key} to true or false")
        ood_sets = plain(ood_sets)  # plain containers in the checkpoints' hyperparameters (read with weights_only)
        self.save_hyperparameters()
        self.data_dir, self.download, self.download_dir = data_dir, download, download_dir
        self.preprocess_mode, self.val_size, self.seed = preprocess, int(val_size), int(seed)
        self.batch_size, self.eval_batch_size = int(batch_size), int(eval_batch_size)
        self.num_workers, self.pin_memory = int(num_workers), pin_memory
        self.train_subset = train_subset
        #: ``{"val": int, "test": int | None, "seed": int | None, "val_pool": float | None}``; seed None = the
        #: legacy split (no validation part, the test part is the *first* ``test`` images); val_pool None =
        #: the split of runs made before the fixed validation pool (:func:`split_eval_indices`)
        self.eval_split = {"val": int(eval_split.get("val", 0)), "test": eval_split.get("test"), "seed": eval_split.get("seed"),
                           "val_pool": None if pool is None else float(pool)}
        self.saltpepper_fraction = float(saltpepper_fraction)
        #: the checked ``data.ood_sets`` (None: the built-in mnist and mnist_saltpepper), in config order
        self.dataset, self.image_shape, self.path, self.test_size = dataset, image_shape, path, test_size
        #: name of the in-distribution evaluation set (``data.name``, else ``data.dataset``)
        self.id_name: str = str(name or dataset)
        self.ood_sets: dict[str, OodSet] = resolve_ood_sets(ood_sets, self.saltpepper_fraction, self.id_name, image_shape)

        self.train_set: Dataset | None = None
        self.val_set: Dataset | None = None
        #: test parts (name -> dataset) and validation parts of the evaluation sets
        self.eval_sets: dict[str, TensorDataset] = {}
        self.eval_val_sets: dict[str, TensorDataset] = {}
        #: Positions in the FashionMNIST train file of the train / val images (sorted).
        self.train_indices: torch.Tensor | None = None
        self.val_indices: torch.Tensor | None = None
        self._sources: dict[str, tuple[str, str | None]] = {}
        #: eval set -> its size and the size of its validation pool (None: the legacy split has none)
        self._pools: dict[str, dict[str, int | None]] = {}

    @property
    def eval_set_names(self) -> list[str]:
        """The in-distribution set (:attr:`id_name`) then the OOD sets, in loader order."""
        return [self.id_name, *self.ood_sets]

    # ------------------------------------------------------------------ setup
    def prepare_data(self) -> None:
        """Nothing to do: files are located and read in :meth:`setup` (cheap, in memory)."""

    def setup(self, stage: str | None = None) -> None:
        """Read the images and build all datasets; later calls do nothing."""
        if self.train_set is not None:
            return
        train, given_val, id_test = self._in_distribution()
        self._setup_train(train, given_val)
        loaded: dict[str, tuple[np.ndarray, np.ndarray]] = {}

        def source(name: str) -> tuple[np.ndarray, np.ndarray]:  # each dataset's test split is read once, when a set uses it
            if name in (ID_SOURCE, self.dataset):
                return id_test
            if name not in loaded:
                split = self._load(name, "test")
                loaded[name] = (split.images, split.labels)
                self._sources[f"source/{name}"] = _where(split)
            return loaded[name]

        raw = {self.id_name: id_test}
        for name, spec in self.ood_sets.items():
            if spec.source is not None:
                images, labels = source(spec.source)
                self._sources[name] = self._sources[self.id_name if spec.source in (ID_SOURCE, self.dataset) else f"source/{spec.source}"]
            else:
                images = read_path_source(spec, self.image_shape)
                labels = np.full(len(images), -1, dtype=np.int64)
                self._sources[name] = (str(spec.path), None)
            raw[name] = (apply_corruptions(images, spec.corruptions, self.seed), labels)
        if any(spec.path is not None or name not in BUILTIN_OOD_SETS for name, spec in self.ood_sets.items()):
            log.info("evaluation sets: %s", "; ".join(
                f"{name}: {spec.describe()} ({len(raw[name][0])} images)" for name, spec in self.ood_sets.items()))
        for name, (images, labels) in raw.items():
            spec = self.ood_sets.get(name)
            val_idx, test_idx = self.split_indices(len(images), spec)
            pool = self.eval_split["val_pool"] if self.eval_split["seed"] is not None and not (spec is not None and spec.eval_split) else None
            self._pools[name] = {"n": len(images), "val_pool": validation_pool(len(images), pool) if pool is not None else None}
            self.eval_sets[name] = self._eval_set(images, labels, test_idx)
            self.eval_val_sets[name] = self._eval_set(images, labels, val_idx)

    def _load(self, dataset: str, split: str) -> Any:
        from fevae.data.discovery import load_split

        return load_split(dataset, split, self.data_dir, download=self.download, download_dir=self.download_dir)

    def _check_shape(self, images: np.ndarray, what: str) -> None:
        want = raw_shape(self.image_shape)
        if tuple(images.shape[1:]) != want:
            raise FevaeError(f"{what} has {shape_text(tuple(images.shape[1:]))} images but data.image_shape={list(self.image_shape)}",
                             f"set data.image_shape to the images' [C, H, W]")

    def _in_distribution(self) -> tuple[Part, Part | None, Part]:
        """``(train, val or None, test)`` in-distribution images and labels; records where each came from."""
        if self.dataset not in OWN_KINDS:
            train, test = self._load(self.dataset, "train"), self._load(self.dataset, "test")
            for split in (train, test):
                self._check_shape(split.images, split.source)
            self._sources.update(train=_where(train), val=_where(train), **{self.id_name: _where(test)})
            return (train.images, train.labels), None, (test.images, test.labels)
        parts = load_own(self.dataset, self.path, self.image_shape)
        where = str(self.path)
        if "pool" in parts:  # one pool: a fixed test hold-out (every seed tests the same images), the rest trains
            images, labels = parts.pop("pool")
            n, k = len(images), self.test_size
            require(k is not None, f"data.path={where} holds one pool of {n} images and data.test_size is null",
                    f"set data.test_size to the number of in-distribution test images to hold out (below {n}), "
                    "or give the files train/ and test/ parts")
            require(k < n, f"data.test_size={k} leaves no training images of the {n} in data.path={where}", f"set data.test_size below {n}")
            perm = np.random.default_rng(self.eval_split["seed"] or 0).permutation(n)
            test_idx, train_idx = np.sort(perm[:k]), np.sort(perm[k:])
            parts = {"train": (images[train_idx], labels[train_idx]), "test": (images[test_idx], labels[test_idx])}
            sources = {"train": f"{where} (all but the test hold-out)", "test": f"{where} (test hold-out of {k})"}
        else:
            require("test" in parts, f"data.path={where} has train images but no test part",
                    "add a test/ subfolder (data=folder) or a 'test' array (data=npz): the in-distribution test images")
            sources = {part: f"{where} ({part})" for part in parts}
        self._sources.update(train=(sources["train"], None), val=(sources.get("val", sources["train"]), None),
                             **{self.id_name: (sources["test"], None)})
        return parts["train"], parts.get("val"), parts["test"]

    def split_indices(self, n: int, spec: OodSet | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Positions ``(val, test)`` in an eval set of ``n`` images (:func:`split_eval_indices`), with
        the sizes of ``spec.eval_split`` when the OOD set ``spec`` has its own. Such a set's sizes do not change
        with the profile, so it needs no fixed pool: its validation part is its first ``val`` ranks and its test
        part the next ``test`` (the pool would only forbid sizes like 3 + 7 of 10 images)."""
        split = {**self.eval_split, **(spec.eval_split if spec is not None and spec.eval_split else {})}
        if spec is not None and spec.eval_split:  # its own sizes, whatever the profile: its validation part is its own pool
            split["val_pool"] = None
        if spec is not None and (spec.path is not None or spec.eval_split):  # a user's set: name it, and the fix
            check_split_size(spec.name, n, split["val"] if split["seed"] is not None else 0, split["test"], spec.describe(),
                             split.get("val_pool") if split["seed"] is not None else None)
        if split["seed"] is None:  # legacy: the first `test` images, no validation part
            k = n if split["test"] is None else split["test"]
            require(k <= n, f"data.eval_subset={k} exceeds the {n} images of an eval set",
                    f"set it to at most {n}, or use data.eval_split")
            return np.arange(0), np.arange(k)
        return split_eval_indices(n, split["val"], split["test"], split["seed"], split.get("val_pool"))

    def _setup_train(self, train: tuple[np.ndarray, np.ndarray], given_val: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        """Seeded hold-out of ``val_size`` images (unless the files give a validation part), then the optional seeded ``train_subset``."""
        images, labels = train
        n = len(images)
        what = f"the training images ({self._sources['train'][0]})"
        if given_val is None:
            require(self.val_size < n, f"data.val_size={self.val_size} leaves no training images "
                    f"({what} hold {n})", f"set data.val_size below {n}")
            perm = torch.randperm(n, generator=torch.Generator().manual_seed(self.seed))
            val_idx, train_idx = perm[: self.val_size], perm[self.val_size:]
        else:
            val_idx, train_idx = torch.arange(0), torch.arange(n)
        if self.train_subset is not None:
            require(self.train_subset <= len(train_idx),
                    f"data.train_subset={self.train_subset} exceeds the {len(train_idx)} training images "
                    f"left after the hold-out of data.val_size={self.val_size}",
                    f"set data.train_subset to at most {len(train_idx)} or null")
            train_idx = train_idx[: self.train_subset]
        self.train_indices, self.val_indices = train_idx.sort().values, val_idx.sort().values
        self.train_set = self._tensor_set(images, labels, self.train_indices)
        if given_val is None:
            self.val_set = self._tensor_set(images, labels, self.val_indices)
        else:
            val_images, val_labels = given_val
            self.val_set = self._tensor_set(val_images, val_labels, torch.arange(len(val_images)))

    def _tensor_set(self, images: np.ndarray, labels: np.ndarray, idx: torch.Tensor) -> TensorDataset:
        """Preprocessed ``(x, y)`` of the images (uint8 pixels or [0,1] floats) at ``idx``."""
        sel = idx.numpy()
        return TensorDataset(to_model_input(images[sel], self.preprocess_mode),
                             torch.from_numpy(labels[sel].astype(np.int64)))

    def _eval_set(self, images: np.ndarray, labels: np.ndarray, idx: np.ndarray) -> TensorDataset:
        """Preprocessed ``(x, y, index)`` of the images (uint8 pixels or [0,1] floats) at positions ``idx`` (ascending)."""
        return TensorDataset(to_model_input(images[idx], self.preprocess_mode),
                             torch.from_numpy(labels[idx].astype(np.int64)), torch.from_numpy(idx.astype(np.int64)))

    def split_record(self) -> dict[str, Any]:
        """The split as data (``eval_split.json`` of a run): settings, each part's image positions,
        (``pools``) each set's size and validation pool (its first ``pools.<set>.val_pool`` ranks, from which
        every profile's validation part is drawn; the test part never touches them), and (``sets``) where
        each OOD set's images came from; an OOD set with its own sizes adds ``per_set``."""
        self.setup()
        record = {"settings": dict(self.eval_split), "pools": dict(self._pools),
                  **{part: {name: ds.tensors[2].tolist() for name, ds in sets.items()}
                     for part, sets in (("val", self.eval_val_sets), ("test", self.eval_sets))},
                  "sets": {name: spec.describe() for name, spec in self.ood_sets.items()}}
        own = {name: spec.eval_split for name, spec in self.ood_sets.items() if spec.eval_split}
        if own:
            record["per_set"] = own
        return record

    # ------------------------------------------------------------ information
    @property
    def sources(self) -> dict[str, tuple[str, str | None]]:
        """Split name (train, val, and each eval set) → ``(where its images came from, its labels file or None)``."""
        self.setup()
        return dict(self._sources)

    def describe(self) -> list[dict[str, Any]]:
        """One dict per split: ``split``, ``count``, ``shape`` (of one x), ``source``, ``labels``."""
        self.setup()
        sets = {"train": self.train_set, "val": self.val_set, **self.eval_sets,
                **{part_name(k, "val"): v for k, v in self.eval_val_sets.items() if len(v)}}
        return [{"split": name, "count": len(ds), "shape": tuple(ds.tensors[0].shape[1:]),
                 "source": str(self._sources[split_part(name)[0]][0]),
                 "labels": str(self._sources[split_part(name)[0]][1] or "with the images")}
                for name, ds in sets.items()]

    # ------------------------------------------------------------ dataloaders
    def _loader(self, dataset: Dataset, batch_size: int, shuffle: bool) -> DataLoader:
        stacked = isinstance(dataset, TensorDataset)
        return DataLoader(StackedBatches(dataset) if stacked else dataset, batch_size=batch_size, shuffle=shuffle, drop_last=False,
                          num_workers=self.num_workers, pin_memory=self.pin_memory,
                          persistent_workers=self.num_workers > 0, collate_fn=stacked_batch if stacked else None)

    def train_dataloader(self) -> DataLoader:
        """Shuffled training batches of ``(x, y)``."""
        self.setup()
        return self._loader(self.train_set, self.batch_size, shuffle=True)

    def val_dataloader(self) -> DataLoader:
        """Validation batches of ``(x, y)`` in a fixed order."""
        self.setup()
        return self._loader(self.val_set, self.batch_size, shuffle=False)

    def eval_dataloader(self, name: str, part: str = "test") -> DataLoader:
        """Batches of ``(x, y, index)`` of ``part`` (val/test) of eval set ``name`` (:attr:`eval_set_names`), in order."""
        self.setup()
        sets = {"test": self.eval_sets, "val": self.eval_val_sets}.get(part)
        if sets is None:
            raise FevaeError(f"unknown evaluation part {part!r}", f"use one of {', '.join(PARTS)}")
        if name not in sets:
            raise FevaeError(f"unknown evaluation set {name!r}", f"use one of {', '.join(sets)}")
        return self._loader(sets[name], self.eval_batch_size, shuffle=False)

    def eval_loaders(self) -> dict[str, DataLoader]:
        """Every non-empty part of every eval set, keyed by :func:`part_name`: test parts, then validation parts."""
        self.setup()
        return {part_name(name, part): self.eval_dataloader(name, part)
                for part in ("test", "val") for name, ds in {"test": self.eval_sets, "val": self.eval_val_sets}[part].items()
                if len(ds)}

    def predict_dataloader(self) -> list[DataLoader]:
        """One loader per part of each eval set, in :meth:`eval_loaders` order."""
        return list(self.eval_loaders().values())
