"""The out-of-distribution evaluation sets of a run, from ``data.ood_sets`` (conf/data/*.yaml).

``data.ood_sets`` maps a set name to where its images come from and what is done to them::

    ood_sets:
      mnist: {source: mnist}                                   # MNIST test
      mnist_saltpepper:                                        # MNIST test, salt-and-pepper noise
        source: mnist
        corruptions: [{name: salt_and_pepper, p: ${data.saltpepper_fraction}}]
      mine: {path: my_images.npy}                              # your own images (added by you)
      id_hflip: {source: in_distribution, corruptions: [hflip]}   # mirrored in-distribution test images

Each entry has exactly one of

* ``source``: a registered dataset's *test* split (:data:`fevae.data.catalog.DATASET_INFO`:
  ``fashionmnist``, ``mnist``, ``kmnist``, ``emnist_letters``, ``cifar10``, ``svhn``), or
  :data:`ID_SOURCE` (``in_distribution``: the run's own in-distribution test images, whatever the
  dataset; for ``data=fashion_mnist`` the same images as ``source: fashionmnist``); a dataset whose
  image shape differs from the run's ``data.image_shape`` is refused before anything is read; or
* ``path``: a ``.npy`` / ``.npz`` array, a folder of PNGs, a single PNG or an IDX file of the run's
  image shape, read and validated as the score CLI reads its input
  (:func:`fevae.inputs.read_images`; no pickles),

and optionally ``corruptions`` (a chain of :mod:`fevae.data.corruptions`, applied to the whole set
in order, seeded by the run's seed) and ``eval_split: {val, test}`` (this set's own validation /
test sizes; default ``data.eval_split``'s; the split seed is always ``data.eval_split.seed``).
``null`` (``data.ood_sets.mnist=null``) or deleting the key (``~data.ood_sets.mnist``) removes a
set; ``data.ood_sets=null`` means the built-in sets (what a run made before ``data.ood_sets``
existed had). The in-distribution set is named :func:`id_set_name` (``data.name``, else
``data.dataset``: ``fashionmnist`` by default); it is not an entry.

Everything here except :func:`read_path_source` / :func:`check_ood_sources` is pure config
checking: no file is read.
"""

from __future__ import annotations

import math

import numbers
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fevae.data.corruptions import check_corruptions, describe_chain
from fevae.errors import FevaeError
from fevae.data.catalog import DATASET_INFO
from fevae.data.discovery import find_split
from fevae.inputs import DEFAULT_IMAGE_SHAPE, read_images
from fevae.inputs import image_shape_of
from fevae.validation import plain as resolved

__all__ = ["ID_SET", "ID_SOURCE", "BUILTIN_OOD_SETS", "OodSet", "default_ood_sets", "resolve_ood_sets", "ood_set_names",
           "describe_ood_sets", "id_set_name", "resolve_data_sets", "sources", "read_path_source", "check_ood_sources", "check_data_sources", "check_split_size", "validation_pool", "source_title"]

#: name of the default in-distribution evaluation set (FashionMNIST test); a run's own is :func:`id_set_name`
ID_SET = "fashionmnist"
#: the ``source`` meaning "the run's in-distribution test images", whatever the dataset (a folder's too)
ID_SOURCE = "in_distribution"
#: the OOD sets of the default config (and of a run made before data.ood_sets existed)
BUILTIN_OOD_SETS = ("mnist", "mnist_saltpepper")
#: a set name: also a file name (scores/<set>.npz) and a metrics key (ood/<set>/...)
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
KEYS = ("source", "path", "corruptions", "eval_split")
EXAMPLE = "+data.ood_sets.my_set.path=images.npy or +data.ood_sets.my_set.source=mnist"


def _datasets() -> dict[str, Any]:

    return DATASET_INFO


def sources() -> tuple[str, ...]:
    """Every valid ``source``: the registered datasets (their *test* split) and :data:`ID_SOURCE`."""
    return (*_datasets(), ID_SOURCE)


def source_title(source: str) -> str:
    """``"MNIST test"``, ``"CIFAR-10 test"``, ``"in-distribution test images"``."""
    if source == ID_SOURCE:
        return "in-distribution test images"
    return f"{_datasets()[source].title} test"


def id_set_name(data_cfg: Any) -> str:
    """The in-distribution evaluation set's name of a data config: ``data.name``, else ``data.dataset``,
    else (a run made before either existed) ``fashionmnist``."""
    data = plain(data_cfg, "data") or {}
    return str(data.get("name") or data.get("dataset") or ID_SET)


@dataclass(frozen=True)
class OodSet:
    """One checked entry of ``data.ood_sets``."""

    name: str
    #: a registered dataset (:data:`fevae.data.catalog.DATASET_INFO`, its test split) or :data:`ID_SOURCE`; None for a path source
    source: str | None = None
    #: the file or folder of a path source (as configured: relative to the working folder)
    path: str | None = None
    #: the checked corruption chain ``((name, {param: value}), ...)``
    corruptions: tuple[tuple[str, dict[str, float]], ...] = ()
    #: this set's own ``{"val": int, "test": int | None}``, or None for ``data.eval_split``'s sizes
    eval_split: dict[str, Any] | None = field(default=None, compare=False)

    @property
    def key(self) -> str:
        return f"data.ood_sets.{self.name}"

    def describe(self) -> str:
        """``MNIST test + salt_and_pepper(p=0.2)``, ``images.npy + hflip``."""
        base = source_title(self.source) if self.source else str(self.path)
        return base + (f" + {describe_chain(self.corruptions)}" if self.corruptions else "")


def default_ood_sets(saltpepper_fraction: float = 0.2) -> dict[str, dict[str, Any]]:
    """The built-in entries: MNIST test, and MNIST test with salt-and-pepper noise of ``saltpepper_fraction``."""
    return {"mnist": {"source": "mnist"},
            "mnist_saltpepper": {"source": "mnist", "corruptions": [{"name": "salt_and_pepper", "p": saltpepper_fraction}]}}


def plain(node: Any, key: str = "data.ood_sets") -> Any:
    """``node`` as plain dicts/lists (a Hydra DictConfig resolved), or one error naming ``key``."""

    return resolved(node, key)


def _split_sizes(value: Any, key: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, Mapping):
        raise FevaeError(f"{key}={value!r} is not a mapping", f"use {key}.val=<int> and {key}.test=<int or null>")
    unknown = sorted(str(k) for k in value if k not in ("val", "test"))
    if unknown:
        raise FevaeError(f"{key} has unknown keys {unknown}", f"use {key}.val and {key}.test (the split seed is data.eval_split.seed)")
    val, test = value.get("val", 0), value.get("test")

    def is_int(v: Any, low: int) -> bool:
        return isinstance(v, numbers.Integral) and not isinstance(v, bool) and v >= low

    if not is_int(val, 0):
        raise FevaeError(f"{key}.val={val!r} is invalid", f"set {key}.val to an integer ≥ 0")
    if test is not None and not is_int(test, 1):
        raise FevaeError(f"{key}.test={test!r} is invalid", f"set {key}.test to an integer ≥ 1, or null (all the rest)")
    return {"val": int(val), "test": None if test is None else int(test)}


def _entry(name: Any, entry: Any, id_name: str = ID_SET, image_shape: tuple[int, ...] | None = None) -> OodSet:
    key = f"data.ood_sets.{name}"
    known = sources()
    if not isinstance(name, str) or not NAME.match(name):
        raise FevaeError(f"data.ood_sets has an invalid set name {name!r}",
                         "name sets with letters, digits, '_', '.', '-' (starting with a letter or digit), e.g. my_set")
    if name == id_name:
        raise FevaeError(f"{key}: {id_name!r} is the in-distribution set's name",
                         f"give the OOD set another name (a corrupted copy of it: +data.ood_sets.{id_name}_flip.source={ID_SOURCE} ...)")
    if not isinstance(entry, Mapping):
        raise FevaeError(f"{key}={entry!r} is not a mapping with a source or a path",
                         f"use +{key}.path=<file or folder> or +{key}.source=<{'|'.join(known)}>")
    unknown = sorted(str(k) for k in entry if k not in KEYS)
    if unknown:
        raise FevaeError(f"{key} has unknown keys {unknown}", f"use {', '.join(KEYS)}")
    source, path = entry.get("source"), entry.get("path")
    if (source is None) == (path is None):
        raise FevaeError(f"{key} has {'both a source and a path' if source is not None else 'neither a source nor a path'}",
                         f"give exactly one: {key}.path=<file or folder> or {key}.source=<{'|'.join(known)}>")
    if source is not None and source not in known:
        raise FevaeError(f"{key}.source={source!r} is not a built-in set",
                         f"use one of {', '.join(known)} (a dataset's test split, or {ID_SOURCE} = the run's own test images), "
                         f"or {key}.path=<file or folder> for your own images")
    if source not in (None, ID_SOURCE) and image_shape is not None:
        shape = tuple(_datasets()[source].image_shape)
        if shape != tuple(image_shape):
            fit = [k for k, v in _datasets().items() if tuple(v.image_shape) == tuple(image_shape)]
            raise FevaeError(f"{key}.source={source}: {source_title(source)} images are {'×'.join(map(str, shape))} but the run's are "
                             f"{'×'.join(map(str, image_shape))}",
                             f"use a source of the run's shape ({', '.join(fit + [ID_SOURCE])}) or a path to images of that shape")
    if path is not None and (not isinstance(path, str) or not path.strip()):
        raise FevaeError(f"{key}.path={path!r} is not a path", f"set {key}.path to a .npy/.npz file, a folder of PNGs, a PNG or an IDX file")
    chain = check_corruptions(entry.get("corruptions"), f"{key}.corruptions")
    return OodSet(name, source, path, tuple((n, dict(p)) for n, p in chain),
                  _split_sizes(entry.get("eval_split"), f"{key}.eval_split"))


def resolve_ood_sets(ood_sets: Any = None, saltpepper_fraction: float = 0.2, id_name: str = ID_SET,
                     image_shape: tuple[int, ...] | None = None) -> dict[str, OodSet]:
    """``data.ood_sets`` checked, in config order, without the removed (null) entries; one
    :class:`FevaeError` for anything wrong (a built-in source of another image shape than
    ``image_shape`` included). ``None`` gives the built-in sets. Reads nothing."""
    ood_sets = plain(ood_sets, "data.ood_sets")
    if ood_sets is None:
        ood_sets = default_ood_sets(saltpepper_fraction)
    if not isinstance(ood_sets, Mapping):
        raise FevaeError(f"data.ood_sets={ood_sets!r} is not a mapping of set names",
                         f"add sets with {EXAMPLE}; remove one with data.ood_sets.<name>=null")
    out = {str(name): _entry(name, entry, id_name, image_shape) for name, entry in ood_sets.items() if entry is not None}
    if not out:
        raise FevaeError("data.ood_sets has no set left: there is nothing to tell the in-distribution set from",
                         f"keep or add at least one OOD set ({EXAMPLE})")
    return out


def resolve_data_sets(data_cfg: Any) -> dict[str, OodSet]:
    """The checked OOD sets of a whole ``data`` config node (its name, image shape and salt-and-pepper fraction)."""

    data = plain(data_cfg, "data") or {}
    return resolve_ood_sets(data.get("ood_sets"), data.get("saltpepper_fraction", 0.2), id_set_name(data), image_shape_of(data))


def ood_set_names(data_cfg: Any) -> list[str]:
    """The OOD set names a run with data config ``data_cfg`` scores, in order (reads nothing)."""
    return list(resolve_data_sets(data_cfg))


def describe_ood_sets(data_cfg: Any) -> dict[str, str]:
    """``{set: "MNIST test + salt_and_pepper(p=0.2)"}`` for a data config (report.md's settings; reads nothing)."""
    return {name: spec.describe() for name, spec in resolve_data_sets(data_cfg).items()}


def read_path_source(spec: OodSet, image_shape: tuple[int, int, int] | None = None) -> np.ndarray:
    """The images of a path source, validated against the run's ``image_shape`` (one error line):
    uint8 ``[N, H, W]`` / ``[N, H, W, C]`` or float32 in [0, 1]."""

    return read_images(Path(spec.path).expanduser(), key=f"{spec.key}.path", image_shape=image_shape or DEFAULT_IMAGE_SHAPE)


def validation_pool(n: int, val_pool: float | None) -> int:
    """How many of an eval set's ``n`` images form its validation pool: the first ``ceil(val_pool * n)``
    positions of the split permutation (``val_pool`` None: the legacy prefix split, no fixed pool → ``n``)."""
    return n if val_pool is None else int(math.ceil(float(val_pool) * n - 1e-9))


def check_split_size(spec_name: str, n: int, val: int, test: int | None, what: str, val_pool: float | None = None) -> None:
    """The OOD set ``spec_name`` of ``n`` images must hold ``val`` validation and ``test`` (None: ≥ 1) test images;
    with ``val_pool`` the validation part comes from its first ``ceil(val_pool * n)`` ranks, the test part from the rest."""
    pool = validation_pool(n, val_pool)
    if val_pool is None:
        fits = n >= val + (test if test is not None else 1)
    else:
        fits = val <= pool and (test if test is not None else 1) <= n - pool
    if fits:
        return
    key = f"data.ood_sets.{spec_name}"
    asked = f"{val} validation + {test if test is not None else 'at least 1'} test images"
    if val_pool is None:
        share = val / (val + test) if test else 1 / 3
        v = max(0, min(n - 1, int(n * share)))
        t = n - v
    else:
        v, t = min(val, pool), n - pool
        asked += f" (validation from its pool of {pool} = val_pool {val_pool} of the images, test from the other {n - pool})"
    raise FevaeError(
        f"{key} ({what}) holds {n} images, fewer than the {asked} of its split",
        f"give this set its own sizes, e.g. +{key}.eval_split.val={v} +{key}.eval_split.test={t} "
        "(or lower data.eval_split.val/test, which changes every set)")


def check_ood_sources(data_cfg: Any) -> None:
    """Read and validate every path source of ``data_cfg`` (a ``data`` config node) and check that each
    is large enough for its split: one :class:`FevaeError` naming the set, before any training."""

    data = plain(data_cfg, "data") or {}
    sets = resolve_data_sets(data)
    split = data.get("eval_split") or {"val": 0, "test": data.get("eval_subset")}
    for spec in sets.values():
        if spec.path is None:
            continue
        n = len(read_path_source(spec, image_shape_of(data)))
        sizes = spec.eval_split or split
        check_split_size(spec.name, n, int(sizes.get("val", 0) or 0), sizes.get("test"), spec.path, None if spec.eval_split else split.get("val_pool"))


def check_data_sources(data_cfg: Any) -> None:
    """Locate, without reading, every registered dataset split a run with ``data_cfg`` reads (the
    in-distribution dataset's train and test splits, each OOD source's test split): a missing one is
    one :class:`FevaeError` naming it and every folder looked in, before the run folder is claimed.
    With ``data.download=true`` a missing split is downloaded here."""

    data = plain(data_cfg, "data") or {}
    dataset = data.get("dataset") or ID_SET
    needed = [(dataset, "train"), (dataset, "test")] if dataset in DATASET_INFO else []
    needed += [(spec.source, "test") for spec in resolve_data_sets(data).values() if spec.source not in (None, ID_SOURCE, dataset)]
    for name, split in dict.fromkeys(needed):
        find_split(name, split, data.get("data_dir"), download=bool(data.get("download", False)), download_dir=data.get("download_dir"))
