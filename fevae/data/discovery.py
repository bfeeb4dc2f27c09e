"""The datasets fevae knows, where their files are looked for, and reading a split of one.

Every dataset has a ``train`` and a ``test`` split (:data:`DATASET_INFO`):

================  =========================  ========  ==================================================
name              what                       shape     files, below a root (first match wins)
================  =========================  ========  ==================================================
fashionmnist      FashionMNIST               1×28×28   ``fashion-mnist/`` (Debian / upstream) or
                                                       ``FashionMNIST/raw/`` (torchvision):
                                                       ``{train,t10k}-{images-idx3,labels-idx1}-ubyte``
mnist             MNIST                      1×28×28   ``mnist/`` or ``MNIST/raw/``, same file names
kmnist            Kuzushiji-MNIST            1×28×28   ``kmnist/`` or ``KMNIST/raw/``, same file names
emnist_letters    EMNIST letters (1..26)     1×28×28   ``emnist/`` or ``EMNIST/raw/``:
                                                       ``emnist-letters-{train,test}-{images-idx3,labels-idx1}-ubyte``
cifar10           CIFAR-10                   3×32×32   binary version ``cifar-10-batches-bin/``
                                                       (``data_batch_1.bin`` … ``data_batch_5.bin``,
                                                       ``test_batch.bin``), then ``cifar10/cifar-10-batches-bin/``,
                                                       then the python version (torchvision's)
                                                       ``cifar-10-batches-py/`` (``data_batch_1`` …
                                                       ``data_batch_5``, ``test_batch``), then
                                                       ``cifar10/cifar-10-batches-py/``
svhn              SVHN cropped digits        3×32×32   ``train_32x32.mat`` / ``test_32x32.mat`` in the root
                                                       itself (torchvision's layout), then in ``svhn/``
================  =========================  ========  ==================================================

IDX files (the first four) may be plain or ``.gz`` (the plain one is preferred when both exist).
Each split is looked up on its own, in these roots, first match wins:

1. ``data_dir`` (config ``paths.data_dir``, from env ``FEVAE_DATA_DIR``);
2. the system folders :data:`SYSTEM_DIRS` (Debian's ``dataset-fashion-mnist`` package installs
   ``/usr/share/datasets/fashion-mnist/``);
3. only with ``download=True``: ``download_dir`` (config ``paths.download_dir``), first as it is,
   then after torchvision's downloader (``torchvision.datasets.FashionMNIST`` / ``MNIST`` /
   ``KMNIST`` / ``EMNIST(split="letters")`` / ``CIFAR10`` / ``SVHN``) has fetched the dataset into
   it. Nothing is downloaded otherwise, and only the splits a caller asks for are searched, so a
   run on FashionMNIST never needs CIFAR-10 and a CIFAR-10 run never needs MNIST.

:func:`load_split` returns uint8 images, ``[N, H, W]`` for one channel and ``[N, H, W, C]``
(channels last, rows top to bottom) for colour, and int64 labels ``[N]``. Labels are as the
dataset defines them (0..9; EMNIST letters 1..26 for a..z), except SVHN's 10, the digit 0, which
becomes 0. EMNIST's IDX files store each image transposed (column by column); they are returned
upright (height and width swapped back). The CIFAR-10 python version is a pickle: it is read by a
restricted unpickler that loads numeric arrays and plain data only and refuses anything else
(see :mod:`fevae.data.readers`); the binary version is preferred when both are in a folder.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from fevae.data import readers
from fevae.data.catalog import (
    ALL_KEYS,
    DATASET_INFO,
    DEFAULT_OPTIONAL_KEYS,
    REQUIRED_KEYS,
    SPLITS,
    dataset_info,
    split_keys,
)
from fevae.data.idx import read_images_and_labels
from fevae.errors import FevaeError, require

#: System-wide data roots searched after ``data_dir`` (monkeypatch in tests).
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets")]

#: The hint of Debian's package, for FashionMNIST.
APT_HINT = "`apt-get install dataset-fashion-mnist` (FashionMNIST only)"
FIX = (f"{APT_HINT}, or pass "
       "`paths.data_dir=/path/with/fashion-mnist+mnist` (or set FEVAE_DATA_DIR), "
       "or `data.download=true` with internet")


@dataclass(frozen=True)
class SplitLocation:
    """Where one split was found: its layout's format, folder and files (in reading order)."""

    dataset: str
    split: str
    format: str
    folder: Path
    paths: tuple[Path, ...]

    @property
    def key(self) -> str:
        return f"{self.dataset}/{self.split}"

    @property
    def source(self) -> str:
        """The file (IDX images, SVHN .mat) or folder (CIFAR-10 batches) read, for logs and reports."""
        return str(self.folder) if self.format.startswith("cifar") else str(self.paths[0])


@dataclass(frozen=True, eq=False)
class LoadedSplit:
    """One split in memory: uint8 ``images`` (``[N, H, W]``, or ``[N, H, W, C]`` for colour), int64
    ``labels`` ``[N]``, and ``source``, the file or folder read."""

    images: np.ndarray
    labels: np.ndarray
    source: str
    dataset: str = ""
    split: str = ""
    #: every file read, in order
    files: tuple[Path, ...] = ()

    def __len__(self) -> int:
        return len(self.images)


@dataclass
class DataFiles(Mapping[str, tuple[Path, Path]]):
    """Split key → ``(images_path, labels_path)`` of the IDX splits found, plus every split's
    :class:`SplitLocation` (:attr:`locations`, all formats) and every folder that was searched."""

    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    searched: list[str] = field(default_factory=list)
    #: Per split key, the folders looked at for it (for error messages).
    searched_for: dict[str, list[str]] = field(default_factory=dict)
    #: Problems met on the way (e.g. a failed download), for error messages.
    notes: list[str] = field(default_factory=list)
    #: Every split found, any format.
    locations: dict[str, SplitLocation] = field(default_factory=dict)
    #: The split keys looked for, in order, and those of them that are required.
    keys: tuple[str, ...] = REQUIRED_KEYS + DEFAULT_OPTIONAL_KEYS
    required: tuple[str, ...] = REQUIRED_KEYS
    #: Per split key, folders that hold only some of its files.
    partial: dict[str, list[str]] = field(default_factory=dict)

    def __getitem__(self, key: str) -> tuple[Path, Path]:
        return self.files[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def missing(self, required_only: bool = True) -> list[str]:
        """Split keys looked for but not found (only the required ones by default)."""
        return [k for k in self.keys if k not in self.locations and (k in self.required or not required_only)]


def _find_file(folder: Path, name: str, gz: bool = True) -> Path | None:
    """``folder/name`` or (if ``gz``) ``folder/name.gz``, whichever exists (plain first)."""
    for candidate in (folder / name, folder / f"{name}.gz") if gz else (folder / name,):
        if candidate.is_file():
            return candidate
    return None


def _search_root(found: DataFiles, root: Path) -> None:
    """Fill the splits still missing from ``found`` with files below ``root`` (all layouts)."""
    for key in found.keys:
        name, split = key.split("/")
        for layout in DATASET_INFO[name].layouts:
            folder = layout.below(root)
            if str(folder) not in found.searched:
                found.searched.append(str(folder))
            if key in found.locations:
                continue
            looked = found.searched_for.setdefault(key, [])
            if str(folder) not in looked:  # download_dir is searched before and after a download
                looked.append(str(folder))
            names = layout.files[split]
            paths = [_find_file(folder, n, layout.gz) for n in names]
            if all(paths):
                location = SplitLocation(name, split, layout.format, folder, tuple(p for p in paths if p))
                found.locations[key] = location
                if layout.format == "idx":
                    found.files[key] = (location.paths[0], location.paths[1])
            elif any(paths) and len(names) > 1:
                absent = [n for n, p in zip(names, paths) if p is None]
                note = (f"{folder} holds only {len(names) - len(absent)} of the {len(names)} files of {key} "
                        f"(missing {', '.join(absent)})")
                if note not in found.partial.setdefault(key, []):
                    found.partial[key].append(note)


def _download_one(name: str, split: str, download_dir: Path) -> None:
    """Let torchvision fetch dataset ``name`` (at least ``split``) into ``download_dir``."""
    from torchvision import (
        datasets,  # looked up at call time: tests monkeypatch the classes
    )

    loader = getattr(datasets, DATASET_INFO[name].downloader)
    root, train = str(download_dir), split == "train"
    # torchvision checks the md5 of what it downloads; CIFAR10 then unpickles its own (verified)
    # download, and fevae reads the files again with its restricted unpickler.
    if name == "svhn":
        loader(root, split=split, download=True)
    elif name == "emnist_letters":
        loader(root, split="letters", train=train, download=True)
    else:
        loader(root, train=train, download=True)


def _download(found: DataFiles, download_dir: Path) -> None:
    """Let torchvision fetch the required splits still missing into ``download_dir``; never raises."""
    try:
        import torchvision.datasets  # noqa: F401
    except ImportError as err:  # pragma: no cover - torchvision is a dependency
        found.notes.append(f"download impossible: {err}")
        return
    download_dir.mkdir(parents=True, exist_ok=True)
    failed: set[str] = set()
    for key in found.missing():
        name, split = key.split("/")
        if key in found.locations or name in failed:  # an earlier download of the dataset brought it
            continue
        try:
            _download_one(name, split, download_dir)
        except Exception as err:  # network errors come in many types
            failed.add(name)
            reason = " ".join(str(err).split())  # torchvision's messages span several lines
            found.notes.append(f"download of {name} ({split}) into {download_dir} failed ({type(err).__name__}: {reason})")
        _search_root(found, download_dir)


def search_data(data_dir: str | os.PathLike[str] | None, download: bool = False,
                download_dir: str | os.PathLike[str] | None = None,
                datasets: str | Iterable[str] | None = None, optional: Iterable[str] = ()) -> DataFiles:
    """Look for splits; never fails for missing files (see :func:`locate_data`).

    ``datasets``: names (both splits) or ``"<name>/<split>"`` keys, all required; ``None`` means the
    default run's :data:`REQUIRED_KEYS` plus the optional ``mnist/train``. ``optional``: further
    names/keys looked for but never downloaded nor counted by :meth:`DataFiles.missing`.
    Raises :class:`FevaeError` only when ``data_dir`` is given but is not an existing folder, or
    for an unknown dataset name.
    """
    if datasets is None:
        required, extra = list(REQUIRED_KEYS), list(DEFAULT_OPTIONAL_KEYS)
    else:
        required, extra = split_keys(datasets), []
    extra += [k for k in split_keys(optional) if k not in required and k not in extra]
    keys = tuple(k for k in ALL_KEYS if k in required or k in extra)
    found = DataFiles(keys=keys, required=tuple(k for k in keys if k in required))
    if data_dir is not None and str(data_dir) != "":
        root = Path(data_dir).expanduser()
        require(root.is_dir(), f"data folder paths.data_dir={data_dir} does not exist or is not a folder",
                "point paths.data_dir (or FEVAE_DATA_DIR) at a folder holding the datasets "
                "(e.g. fashion-mnist/ and mnist/), or leave it unset to use the system data")
        _search_root(found, root)
    for root in SYSTEM_DIRS:
        _search_root(found, Path(root))
    if download and found.missing():
        require(download_dir is not None and str(download_dir) != "",
                "data.download=true needs a download folder", "set paths.download_dir (or FEVAE_DOWNLOAD_DIR)")
        target = Path(download_dir).expanduser()
        _search_root(found, target)  # downloaded by an earlier run
        if found.missing():
            _download(found, target)
    return found


def missing_message(found: DataFiles, keys: list[str]) -> str:
    """One line: which splits are missing, every folder looked in, and the problems met."""
    parts = []
    for key in keys:
        name, split = key.split("/")
        places = ", ".join(found.searched_for.get(key, [])) or "nowhere (no data_dir and no system folder)"
        partial = "".join(f"; {note}" for note in found.partial.get(key, []))
        parts.append(f"{key} ({DATASET_INFO[name].describe_files(split)}) not found; looked in: {places}{partial}")
    notes = f"; {'; '.join(found.notes)}" if found.notes else ""
    return "; ".join(parts) + notes


def fix_message(keys: Iterable[str], data_dir: str | os.PathLike[str] | None = None,
                apt_hint: bool = False) -> str:
    """How to provide the splits ``keys``: where to put their files, or how to download them."""
    keys = list(keys)
    names = list(dict.fromkeys(k.split("/")[0] for k in keys))
    given = data_dir is not None and str(data_dir) != ""
    root = str(Path(data_dir).expanduser()) if given else "<folder>"
    places = "; ".join(f"the {n}/{s} files at {' or '.join(DATASET_INFO[n].places(s, root))}"
                       for n in names for s in SPLITS if f"{n}/{s}" in keys)
    where = (f"put {places} (paths.data_dir={root}, or env FEVAE_DATA_DIR)" if given else
             f"put {places} and pass paths.data_dir=<folder> (or set FEVAE_DATA_DIR)")
    apt = f"{APT_HINT}, or " if apt_hint else ""
    return f"{apt}{where}, or use data.download=true with internet (downloads into paths.download_dir)"


def locate_data(data_dir: str | os.PathLike[str] | None, download: bool = False,
                download_dir: str | os.PathLike[str] | None = None,
                datasets: str | Iterable[str] | None = None) -> DataFiles:
    """Find every required split (see the module doc for the search order) or raise one FevaeError.

    By default the default run's IDX files (FashionMNIST train and test, MNIST test; MNIST train
    if present); ``datasets`` (names or ``"<name>/<split>"`` keys) asks for others instead. The
    result maps the IDX splits found to ``(images, labels)`` paths; ``.locations`` has every split.
    """
    found = search_data(data_dir, download=download, download_dir=download_dir, datasets=datasets)
    missing = found.missing()
    if missing:
        apt = any(k.startswith("fashionmnist/") for k in found.required)
        raise FevaeError(missing_message(found, missing), fix_message(missing, data_dir, apt_hint=apt))
    return found


def find_split(name: str, split: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False,
               download_dir: str | os.PathLike[str] | None = None) -> SplitLocation:
    """Where split ``split`` of dataset ``name`` lies (downloading it only with ``download=True``),
    or one FevaeError naming it, every folder looked in, and the fix."""
    dataset_info(name)
    require(split in SPLITS, f"unknown split {split!r} of dataset {name}; its splits are {', '.join(SPLITS)}",
            "use train or test")
    key = f"{name}/{split}"
    return locate_data(data_dir, download=download, download_dir=download_dir, datasets=[key]).locations[key]


def read_split(location: SplitLocation) -> LoadedSplit:
    """Read a located split (see the module doc for what comes back); FevaeError for a broken file."""

    info = DATASET_INFO[location.dataset]
    channels, height, width = info.image_shape
    if location.format == "idx":
        images, labels = read_images_and_labels(*location.paths, n_classes=info.first_label + info.n_classes,
                                                image_size=None, first_label=info.first_label)
        if info.transposed:
            images = np.ascontiguousarray(images.transpose(0, 2, 1))
    elif location.format == "cifar-bin":
        images, labels = readers.read_cifar_bin(location.paths)
    elif location.format == "cifar-py":
        images, labels = readers.read_cifar_py(location.paths)
    elif location.format == "svhn-mat":
        images, labels = readers.read_svhn_mat(location.paths[0])
    else:  # pragma: no cover - the registry holds no other format
        raise ValueError(location.format)
    expected = (height, width) if channels == 1 else (height, width, channels)
    require(images.shape[1:] == expected,
            f"{location.source} holds images of shape {'×'.join(map(str, images.shape[1:]))}; "
            f"{info.title} images are {'×'.join(map(str, expected))}",
            f"use the original {info.title} files (see `python -m fevae.data`)")
    return LoadedSplit(images, labels.astype(np.int64, copy=False), location.source, location.dataset,
                       location.split, location.paths)


def load_split(name: str, split: str, data_dir: str | os.PathLike[str] | None = None, download: bool = False,
               download_dir: str | os.PathLike[str] | None = None) -> LoadedSplit:
    """Find and read split ``split`` (``"train"`` or ``"test"``) of dataset ``name`` (a key of
    :data:`DATASET_INFO`); see the module doc for the search order and what comes back.

    A missing split is one FevaeError naming it, every folder looked in and the fix; an unknown
    name is one listing the known datasets. Downloads happen only with ``download=True``.
    """
    return read_split(find_split(name, split, data_dir, download=download, download_dir=download_dir))

