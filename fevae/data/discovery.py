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

from fevae.errors import FevaeError, require

#: The splits of every dataset.
SPLITS = ("train", "test")


@dataclass(frozen=True, eq=False)
class Layout:
    """One way a dataset lies on disk: a folder below a root (``""``: the root) and the files of each split."""

    folder: str
    #: ``"idx"`` (images + labels IDX files), ``"cifar-bin"``, ``"cifar-py"`` or ``"svhn-mat"``
    format: str
    #: split → the file names that must all be present (IDX: images then labels)
    files: Mapping[str, tuple[str, ...]]

    @property
    def gz(self) -> bool:
        """Whether each file may also be ``<name>.gz`` (IDX files)."""
        return self.format == "idx"

    def below(self, root: Path) -> Path:
        return root / self.folder if self.folder else root


@dataclass(frozen=True, eq=False)
class DatasetInfo:
    """One registered dataset: what it is, its image shape and classes, and where its files lie."""

    name: str
    title: str
    #: ``(C, H, W)`` of one image as the model sees it (1 for grayscale, 3 for RGB)
    image_shape: tuple[int, int, int]
    #: number of classes; the labels are ``first_label .. first_label + n_classes - 1``
    n_classes: int
    #: the layouts below a root, in order of preference
    layouts: tuple[Layout, ...]
    #: the ``torchvision.datasets`` class that downloads it
    downloader: str
    first_label: int = 0
    #: IDX images stored transposed (EMNIST): swapped back to upright when read
    transposed: bool = False

    @property
    def label_range(self) -> tuple[int, int]:
        """The first and last label value (EMNIST letters: ``(1, 26)``)."""
        return self.first_label, self.first_label + self.n_classes - 1

    @property
    def channels(self) -> int:
        return self.image_shape[0]

    def describe_files(self, split: str) -> str:
        """The files of ``split``, e.g. ``t10k-images-idx3-ubyte[.gz] + t10k-labels-idx1-ubyte[.gz]``."""
        groups: dict[str, list[str]] = {}  # the files → the folders holding them
        for layout in self.layouts:
            names = layout.files[split]
            if layout.format == "idx":
                text = " + ".join(f"{n}[.gz]" for n in names)
            else:
                text = f"{names[0]} … {names[-1]}" if len(names) > 2 else " + ".join(names)
            groups.setdefault(text, []).append(f"{layout.folder}/" if layout.folder else "the root")
        if len(groups) == 1 and self.layouts[0].format == "idx":
            return next(iter(groups))
        return ", or ".join(f"{text} in {' or '.join(folders)}" for text, folders in groups.items())

    def places(self, split: str, root: str) -> list[str]:
        """Where the files of ``split`` would go below ``root`` (folders; SVHN: the file itself)."""
        out: list[str] = []
        for layout in self.layouts:
            place = f"{root}/{layout.folder}/" if layout.format != "svhn-mat" else \
                f"{root}/{layout.folder + '/' if layout.folder else ''}{layout.files[split][0]}"
            if place not in out:
                out.append(place)
        return out


def _idx_layouts(folders: tuple[str, ...], train: tuple[str, str], test: tuple[str, str]) -> tuple[Layout, ...]:
    return tuple(Layout(folder, "idx", {"train": train, "test": test}) for folder in folders)


def _mnist_names(prefix: str) -> tuple[str, str]:
    return f"{prefix}-images-idx3-ubyte", f"{prefix}-labels-idx1-ubyte"


def _emnist_names(split: str) -> tuple[str, str]:
    return f"emnist-letters-{split}-images-idx3-ubyte", f"emnist-letters-{split}-labels-idx1-ubyte"


def _cifar_layouts() -> tuple[Layout, ...]:
    binary = {"train": tuple(f"data_batch_{i}.bin" for i in range(1, 6)), "test": ("test_batch.bin",)}
    python = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}
    return (Layout("cifar-10-batches-bin", "cifar-bin", binary), Layout("cifar10/cifar-10-batches-bin", "cifar-bin", binary),
            Layout("cifar-10-batches-py", "cifar-py", python), Layout("cifar10/cifar-10-batches-py", "cifar-py", python))


_SVHN_FILES = {"train": ("train_32x32.mat",), "test": ("test_32x32.mat",)}

#: Every dataset fevae can read, by name (see the module doc).
DATASET_INFO: dict[str, DatasetInfo] = {
    info.name: info for info in (
        DatasetInfo("fashionmnist", "FashionMNIST", (1, 28, 28), 10,
                    _idx_layouts(("fashion-mnist", "FashionMNIST/raw"), _mnist_names("train"), _mnist_names("t10k")),
                    "FashionMNIST"),
        DatasetInfo("mnist", "MNIST", (1, 28, 28), 10,
                    _idx_layouts(("mnist", "MNIST/raw"), _mnist_names("train"), _mnist_names("t10k")), "MNIST"),
        DatasetInfo("kmnist", "Kuzushiji-MNIST", (1, 28, 28), 10,
                    _idx_layouts(("kmnist", "KMNIST/raw"), _mnist_names("train"), _mnist_names("t10k")), "KMNIST"),
        DatasetInfo("emnist_letters", "EMNIST letters", (1, 28, 28), 26,
                    _idx_layouts(("emnist", "EMNIST/raw"), _emnist_names("train"), _emnist_names("test")), "EMNIST",
                    first_label=1, transposed=True),
        DatasetInfo("cifar10", "CIFAR-10", (3, 32, 32), 10, _cifar_layouts(), "CIFAR10"),
        DatasetInfo("svhn", "SVHN", (3, 32, 32), 10,
                    (Layout("", "svhn-mat", _SVHN_FILES), Layout("svhn", "svhn-mat", _SVHN_FILES)), "SVHN"),
    )
}

#: Every split key ``"<dataset>/<split>"``, in registry order.
ALL_KEYS: tuple[str, ...] = tuple(f"{name}/{split}" for name in DATASET_INFO for split in SPLITS)
#: What a default run (train on FashionMNIST, MNIST test as OOD set) needs; the data doctor's
#: ``ok`` means these are present and sound.
REQUIRED_KEYS: tuple[str, ...] = ("fashionmnist/train", "fashionmnist/test", "mnist/test")
#: What :func:`locate_data` searches by default besides :data:`REQUIRED_KEYS` (optional).
DEFAULT_OPTIONAL_KEYS: tuple[str, ...] = ("mnist/train",)


@dataclass(frozen=True)
class SplitSpec:
    """One logical IDX split of the default datasets (kept for older callers; see :data:`DATASET_INFO`)."""

    dataset: str  # "fashionmnist" or "mnist"
    prefix: str  # "train" or "t10k"
    required: bool

    @property
    def images_name(self) -> str:
        return f"{self.prefix}-images-idx3-ubyte"

    @property
    def labels_name(self) -> str:
        return f"{self.prefix}-labels-idx1-ubyte"


#: The default run's IDX files, keyed ``"<dataset>/<split>"``; mnist/train is optional (not used by training).
DATASETS: dict[str, SplitSpec] = {
    "fashionmnist/train": SplitSpec("fashionmnist", "train", required=True),
    "fashionmnist/test": SplitSpec("fashionmnist", "t10k", required=True),
    "mnist/train": SplitSpec("mnist", "train", required=False),
    "mnist/test": SplitSpec("mnist", "t10k", required=True),
}

#: Folder names of each dataset below a root, in order of preference ("" is the root itself).
LAYOUTS: dict[str, tuple[str, ...]] = {name: tuple(layout.folder for layout in info.layouts)
                                       for name, info in DATASET_INFO.items()}

#: System-wide data roots searched after ``data_dir`` (monkeypatch in tests).
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets")]

#: The hint of Debian's package, for FashionMNIST.
APT_HINT = "`apt-get install dataset-fashion-mnist` (FashionMNIST only)"
FIX = (f"{APT_HINT}, or pass "
       "`paths.data_dir=/path/with/fashion-mnist+mnist` (or set FEVAE_DATA_DIR), "
       "or `data.download=true` with internet")


def dataset_info(name: str) -> DatasetInfo:
    """The registry entry of ``name``, or a FevaeError listing the known datasets."""
    info = DATASET_INFO.get(name) if isinstance(name, str) else None
    if info is None:
        raise FevaeError(f"unknown dataset {name!r}; known datasets: {', '.join(DATASET_INFO)}",
                         "use one of these names")
    return info


def split_keys(datasets: str | Iterable[str]) -> list[str]:
    """``"cifar10"`` → ``["cifar10/train", "cifar10/test"]``; ``"mnist/test"`` stays; checked against the registry."""
    items = [datasets] if isinstance(datasets, str) else list(datasets)
    keys: list[str] = []
    for item in items:
        name, _, split = str(item).partition("/")
        dataset_info(name)
        if split:
            require(split in SPLITS, f"unknown split {item!r} of dataset {name}; its splits are {', '.join(SPLITS)}",
                    f"use {name}/train or {name}/test")
        for key in ([f"{name}/{split}"] if split else [f"{name}/{s}" for s in SPLITS]):
            if key not in keys:
                keys.append(key)
    return keys


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
    from torchvision import datasets  # looked up at call time: tests monkeypatch the classes

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
    from fevae.data import readers
    from fevae.data.idx import read_images_and_labels

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

