"""Limits checked before anything is read or allocated: input sizes, file kinds, YAML alias expansion.

A file's header says how much it holds: a ``.npy`` header its shape and dtype, a PNG header its
width and height, an IDX header its dimensions. fevae reads that header first and refuses, with one
:class:`~fevae.errors.FevaeError`, a file that declares more than the limits below, before the
pixels are read, decompressed or allocated (a 200-byte ``.npy`` claiming 1e9 images, a PNG claiming
30000×30000 pixels, a 4 MB gzip expanding to 4 GB). The limits are the ``limits`` settings of the
command lines (``conf/train.yaml``, ``conf/score.yaml``; :func:`configure` applies them for the
process, :func:`fevae.utils.cli.user_errors` calls it) and default to :data:`DEFAULTS`.

Only regular files are read (:func:`regular_file`, an ``os.stat`` before any ``open``): a named
pipe or a device would block a read forever or never end.

A run folder's ``.hydra/config.yaml`` is read by :func:`load_yaml_config`: YAML aliases are
allowed, but the document they expand to may hold at most :data:`MAX_CONFIG_NODES` nodes (a run's
own config has a few hundred), counted on the composed node graph before anything is built, so a
"billion laughs" file of < 1 KB is refused at once instead of expanding for hours.
"""

from __future__ import annotations

import contextlib
import math
import os
import stat
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Iterator

from fevae.errors import FevaeError

#: expanded nodes a run folder's YAML config may hold (a run's own config has ~300-600)
MAX_CONFIG_NODES = 20_000
#: bytes a run folder's YAML config may take on disk
MAX_CONFIG_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True)
class Limits:
    """What one input may hold (the ``limits`` config node; see the module docstring)."""

    #: images in one input (a file's first dimension, the PNGs of a folder)
    max_images: int = 1_000_000
    #: pixel values per image, H×W×C (an array's image dimensions, a PNG header's width × height × bands)
    max_pixels_per_image: int = 16_777_216
    #: bytes of one input once read and decompressed (a ``.npy`` array, an ``.npz`` member, an IDX file)
    max_bytes: int = 2 * 1024**3


#: the shipped defaults (the same numbers as ``limits`` in conf/train.yaml and conf/score.yaml)
DEFAULTS = Limits()
_current = DEFAULTS


def current() -> Limits:
    """The limits in force in this process (:func:`configure`'s, else :data:`DEFAULTS`)."""
    return _current


def from_config(node: Any) -> Limits:
    """:class:`Limits` from a ``limits`` config node (missing keys take the defaults); bad values are one error."""
    if node is None:
        return DEFAULTS
    names = [f.name for f in fields(Limits)]
    try:
        items = dict(node.items())
    except AttributeError:
        raise FevaeError(f"limits={node!r} is not a mapping", f"set limits.<key>=<int> for the keys {names}") from None
    unknown = sorted(set(map(str, items)) - set(names))
    if unknown:
        raise FevaeError(f"limits.{unknown[0]} is not a limit", f"use one of limits.{', limits.'.join(names)}")
    values = {}
    for name in names:
        value = items.get(name, getattr(DEFAULTS, name))
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise FevaeError(f"limits.{name}={value!r} is invalid", f"set it to a positive integer (default {getattr(DEFAULTS, name)})")
        values[name] = value
    return Limits(**values)


def configure(node: Any) -> Limits:
    """Put the limits of a ``limits`` config node (``None``: the defaults) in force for this process."""
    global _current
    _current = from_config(node)
    return _current


@contextlib.contextmanager
def using(limits: Limits) -> Iterator[Limits]:
    """``limits`` in force inside the block (tests, library callers), the previous ones after it."""
    global _current
    saved, _current = _current, limits
    try:
        yield limits
    finally:
        _current = saved


def _raise_fix(name: str, value: int) -> str:
    return f"if the input is meant to be this large, raise limits.{name} (now {value}) on the command line; else check the file"


def check_size(what: str, n_images: int, per_image: int, itemsize: int = 1) -> None:
    """Refuse an input ``what`` (e.g. ``input=x.npy``) that declares ``n_images`` images of
    ``per_image`` values of ``itemsize`` bytes beyond the limits in force; nothing has been read yet."""
    limits = current()
    if n_images > limits.max_images:
        raise FevaeError(f"{what} declares {n_images} images, more than limits.max_images={limits.max_images}",
                         _raise_fix("max_images", limits.max_images))
    if per_image > limits.max_pixels_per_image:
        raise FevaeError(f"{what} declares {per_image} pixel values per image, more than "
                         f"limits.max_pixels_per_image={limits.max_pixels_per_image}",
                         _raise_fix("max_pixels_per_image", limits.max_pixels_per_image))
    total = n_images * per_image * itemsize
    if total > limits.max_bytes:
        raise FevaeError(f"{what} declares {total} bytes of data ({total / 1024**3:.3g} GiB), more than "
                         f"limits.max_bytes={limits.max_bytes}", _raise_fix("max_bytes", limits.max_bytes))


def check_shape(what: str, shape: tuple[int, ...], itemsize: int = 1) -> None:
    """:func:`check_size` for an array of ``shape`` (images along the first dimension)."""
    if not shape:
        return
    check_size(what, int(shape[0]), math.prod(int(d) for d in shape[1:]), itemsize)


# ----------------------------------------------------------------------------- file kinds
def _kind(mode: int) -> str:
    for test, name in ((stat.S_ISFIFO, "a named pipe"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
                       (stat.S_ISSOCK, "a socket"), (stat.S_ISDIR, "a folder")):
        if test(mode):
            return name
    return "not a regular file"


def regular_file(path: str | os.PathLike[str], key: str = "input", allow_dir: bool = False,
                 fix: str = "give a regular file (a pipe, device or socket is never read)") -> os.stat_result:
    """``os.stat`` of ``path`` (following links), which must be a regular file (or, with ``allow_dir``, a
    folder), checked before any ``open``: a named pipe or a device would hang a read or never end."""
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise FevaeError(f"{key}={path} does not exist", "check the path") from None
    except OSError as err:
        raise FevaeError(f"{key}={path} cannot be read ({err.strerror or err})", "check the path and its permissions") from None
    if stat.S_ISREG(info.st_mode) or (allow_dir and stat.S_ISDIR(info.st_mode)):
        return info
    raise FevaeError(f"{key}={path} is {_kind(info.st_mode)}, not a regular file", fix)


# ----------------------------------------------------------------------------- YAML
def _loader_class() -> type:
    """OmegaConf's own YAML loader (its float and duplicate-key rules), unchanged; composed here so
    the node graph can be measured before it is built into Python objects."""
    from omegaconf._utils import get_yaml_loader

    return get_yaml_loader()


def expanded_nodes(node: Any, limit: int = MAX_CONFIG_NODES) -> int:
    """Nodes of a composed YAML node graph with every alias expanded (what building it would copy);
    counting stops past ``limit``. A node that contains itself (a recursive alias) raises ``ValueError``."""
    import yaml

    memo: dict[int, int] = {}
    active: set[int] = set()

    def size(n: Any) -> int:
        key = id(n)
        if key in memo:
            return memo[key]
        if key in active:
            raise ValueError("a YAML alias refers to a node that contains it")
        active.add(key)
        if isinstance(n, yaml.MappingNode):
            total = 1
            for k, v in n.value:
                total += size(k) + size(v)
                if total > limit:
                    break
        elif isinstance(n, yaml.SequenceNode):
            total = 1
            for v in n.value:
                total += size(v)
                if total > limit:
                    break
        else:
            total = 1
        active.discard(key)
        memo[key] = total
        return total

    return size(node)


def load_yaml_config(path: str | os.PathLike[str], fix: str) -> Any:
    """A run folder's YAML config as an OmegaConf container, read as :func:`omegaconf.OmegaConf.load`
    reads it, but only from a regular file of at most :data:`MAX_CONFIG_BYTES` whose aliases expand to at
    most :data:`MAX_CONFIG_NODES` nodes. Any problem is one :class:`FevaeError` (``fix`` says what to do);
    YAML and OmegaConf errors propagate for the caller to word."""
    from omegaconf import OmegaConf

    path = Path(path)
    info = regular_file(path, "config", fix=fix)
    if info.st_size > MAX_CONFIG_BYTES:
        raise FevaeError(f"{path} is {info.st_size} bytes, more than a run config's {MAX_CONFIG_BYTES}", fix)
    text = path.read_text(encoding="utf-8")
    loader = _loader_class()(text)
    try:
        node = loader.get_single_node()
        if node is not None:
            try:
                n = expanded_nodes(node)
            except ValueError as err:
                raise FevaeError(f"{path}: {err}", fix) from None
            if n > MAX_CONFIG_NODES:
                raise FevaeError(f"{path} expands (through YAML aliases) to more than {MAX_CONFIG_NODES} nodes, "
                                 "far more than a run's config", fix)
        obj = loader.construct_document(node) if node is not None else None
    finally:
        loader.dispose()
    if obj is None:
        return OmegaConf.create()
    if not isinstance(obj, (dict, list)):
        raise FevaeError(f"{path} holds a {type(obj).__name__}, not a config mapping", fix)
    return OmegaConf.create(obj)
