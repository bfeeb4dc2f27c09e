"""The datasets fevae knows: their files, folder layouts and splits (one table, :data:`DATASET_INFO`)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

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
