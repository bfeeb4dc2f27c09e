"""Finding the FashionMNIST / MNIST IDX files on disk (and, on request, downloading them).

Each split is looked up independently, first match wins:

1. ``data_dir`` (config ``paths.data_dir``, from env ``FEVAE_DATA_DIR``), in either layout:
   ``<data_dir>/fashion-mnist/`` + ``<data_dir>/mnist/`` (Debian / upstream names) or
   torchvision's ``<data_dir>/FashionMNIST/raw/`` + ``<data_dir>/MNIST/raw/``;
2. the system folders :data:`SYSTEM_DIRS` (Debian's ``dataset-fashion-mnist`` package installs
   ``/usr/share/datasets/fashion-mnist/``), same layouts;
3. only with ``download=True``: torchvision's downloader into ``download_dir``.

In a folder each file may be plain or ``.gz``; the plain one is preferred when both exist.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from fevae.errors import FevaeError, require


@dataclass(frozen=True)
class SplitSpec:
    """One logical split: which dataset, which file prefix, whether the pipeline needs it."""

    dataset: str  # "fashionmnist" or "mnist"
    prefix: str  # "train" or "t10k"
    required: bool

    @property
    def images_name(self) -> str:
        return f"{self.prefix}-images-idx3-ubyte"

    @property
    def labels_name(self) -> str:
        return f"{self.prefix}-labels-idx1-ubyte"


#: The logical files, keyed ``"<dataset>/<split>"``; mnist/train is optional (not used by training).
DATASETS: dict[str, SplitSpec] = {
    "fashionmnist/train": SplitSpec("fashionmnist", "train", required=True),
    "fashionmnist/test": SplitSpec("fashionmnist", "t10k", required=True),
    "mnist/train": SplitSpec("mnist", "train", required=False),
    "mnist/test": SplitSpec("mnist", "t10k", required=True),
}

#: Folder names of each dataset below a root: Debian/upstream layout, then torchvision's.
LAYOUTS: dict[str, tuple[str, ...]] = {
    "fashionmnist": ("fashion-mnist", "FashionMNIST/raw"),
    "mnist": ("mnist", "MNIST/raw"),
}

#: System-wide data roots searched after ``data_dir`` (monkeypatch in tests).
SYSTEM_DIRS: list[Path] = [Path("/usr/share/datasets")]

FIX = ("`apt-get install dataset-fashion-mnist` (FashionMNIST only), or pass "
       "`paths.data_dir=/path/with/fashion-mnist+mnist` (or set FEVAE_DATA_DIR), "
       "or `data.download=true` with internet")


@dataclass
class DataFiles(Mapping[str, tuple[Path, Path]]):
    """Split key → ``(images_path, labels_path)``, plus every folder that was searched."""

    files: dict[str, tuple[Path, Path]] = field(default_factory=dict)
    searched: list[str] = field(default_factory=list)
    #: Per split key, the folders looked at for it (for error messages).
    searched_for: dict[str, list[str]] = field(default_factory=dict)
    #: Problems met on the way (e.g. a failed download), for error messages.
    notes: list[str] = field(default_factory=list)

    def __getitem__(self, key: str) -> tuple[Path, Path]:
        return self.files[key]

    def __iter__(self) -> Iterator[str]:
        return iter(self.files)

    def __len__(self) -> int:
        return len(self.files)

    def missing(self, required_only: bool = True) -> list[str]:
        """Split keys of :data:`DATASETS` not found (only the required ones by default)."""
        return [k for k, s in DATASETS.items() if k not in self.files and (s.required or not required_only)]


def _find_file(folder: Path, name: str) -> Path | None:
    """``folder/name`` or ``folder/name.gz``, whichever exists (plain first)."""
    for candidate in (folder / name, folder / f"{name}.gz"):
        if candidate.is_file():
            return candidate
    return None


def _search_root(found: DataFiles, root: Path) -> None:
    """Fill the splits still missing from ``found`` with files below ``root`` (all layouts)."""
    for key, spec in DATASETS.items():
        for sub in LAYOUTS[spec.dataset]:
            folder = root / sub
            if str(folder) not in found.searched:
                found.searched.append(str(folder))
            if key in found.files:
                continue
            found.searched_for.setdefault(key, []).append(str(folder))
            images, labels = _find_file(folder, spec.images_name), _find_file(folder, spec.labels_name)
            if images and labels:
                found.files[key] = (images, labels)


def _download(found: DataFiles, download_dir: Path) -> None:
    """Let torchvision fetch the datasets still missing into ``download_dir``; never raises."""
    try:
        from torchvision import datasets
    except ImportError as err:  # pragma: no cover - torchvision is a dependency
        found.notes.append(f"download impossible: {err}")
        return
    download_dir.mkdir(parents=True, exist_ok=True)
    loaders = {"fashionmnist": datasets.FashionMNIST, "mnist": datasets.MNIST}
    needed = {DATASETS[k].dataset for k in found.missing()}
    for dataset in sorted(needed):
        try:
            loaders[dataset](str(download_dir), train=False, download=True)
        except Exception as err:  # network errors come in many types
            reason = " ".join(str(err).split())  # torchvision's messages span several lines
            found.notes.append(f"download of {dataset} into {download_dir} failed ({type(err).__name__}: {reason})")
    _search_root(found, download_dir)


def search_data(data_dir: str | os.PathLike[str] | None, download: bool = False,
                download_dir: str | os.PathLike[str] | None = None) -> DataFiles:
    """Look for every split of :data:`DATASETS`; never fails for missing files (see :func:`locate_data`).

    Raises :class:`FevaeError` only when ``data_dir`` is given but is not an existing folder.
    """
    found = DataFiles()
    if data_dir is not None and str(data_dir) != "":
        root = Path(data_dir).expanduser()
        require(root.is_dir(), f"data folder paths.data_dir={data_dir} does not exist or is not a folder",
                "point paths.data_dir (or FEVAE_DATA_DIR) at a folder holding fashion-mnist/ and mnist/, "
                "or leave it unset to use the system data")
        _search_root(found, root)
    for root in SYSTEM_DIRS:
        _search_root(found, Path(root))
    if download and found.missing():
        require(download_dir is not None and str(download_dir) != "",
                "data.download=true needs a download folder", "set paths.download_dir (or FEVAE_DOWNLOAD_DIR)")
        _download(found, Path(download_dir).expanduser())
    return found


def missing_message(found: DataFiles, keys: list[str]) -> str:
    """One line: which splits are missing, every folder looked in, and the problems met."""
    parts = []
    for key in keys:
        spec = DATASETS[key]
        places = ", ".join(found.searched_for.get(key, [])) or "nowhere (no data_dir and no system folder)"
        parts.append(f"{key} ({spec.images_name}[.gz] + {spec.labels_name}[.gz]) not found; looked in: {places}")
    notes = f"; {'; '.join(found.notes)}" if found.notes else ""
    return "; ".join(parts) + notes


def locate_data(data_dir: str | os.PathLike[str] | None, download: bool = False,
                download_dir: str | os.PathLike[str] | None = None) -> DataFiles:
    """Find every required split (see the module doc for the search order) or raise one FevaeError."""
    found = search_data(data_dir, download=download, download_dir=download_dir)
    missing = found.missing()
    if missing:
        raise FevaeError(missing_message(found, missing), FIX)
    return found
