"""File reading and writing: atomic writes (a reader never sees a half-written file, a failure leaves
none behind), JSON results and the score files (one ``.npz`` of float64 arrays per set, no pickles)."""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any, Iterator

import numpy as np

from fevae.errors import FevaeError

#: name prefix of a score's per-image Monte-Carlo standard error in a score file
MCSE_PREFIX = "mcse__"
#: a score's per-image effective sample size of its S Monte-Carlo weights: ``ess__<score>`` in the score
#: files, and in a run's Monte-Carlo error mapping (``mc_se[set]["ess__<score>"]``) next to the score's SE
ESS_PREFIX = "ess__"
#: a detector scored on a subset of a set stores the dataset indices of the images it scored as
#: ``index__<score>`` next to ``<score>`` (same length, ascending): not a score, never a metrics column
INDEX_PREFIX = "index__"


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike[str], mode: str = "wb", **kwargs) -> Iterator[IO]:
    """Open a temp file beside ``path``; on success fsync it and ``os.replace`` it onto ``path``.

    On any exception (KeyboardInterrupt included) the temp file is removed and ``path`` is left
    as it was. The parent folder is created if needed. The file gets the permissions a plain
    ``open()`` would give it (``0o666`` less the umask; an existing file's own mode is kept), not
    the ``0600`` of :func:`tempfile.mkstemp`.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, _file_mode(path))
        with os.fdopen(fd, mode, **kwargs) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def current_umask() -> int:
    """The process umask, read without changing it where Linux allows (``/proc/self/status``)."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # elsewhere: set and restore (not thread-safe, but only a fallback)
    os.umask(mask)
    return mask


def _file_mode(path: Path) -> int:
    try:
        if path.is_file():
            return path.stat().st_mode & 0o7777
    except OSError:
        pass
    return 0o666 & ~current_umask()


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    with atomic_open(path, "wb") as handle:
        handle.write(data)
    return Path(path)


# --------------------------------------------------------------------------------------------
# Atomic files
# --------------------------------------------------------------------------------------------
def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` via a temp file in the same folder + ``os.replace``."""
    data = text.encode("utf-8")
    return write_bytes_atomic(path, data)


def write_json_atomic(path: str | Path, obj: Any) -> Path:
    """Write ``obj`` as indented JSON atomically; NaN/inf are refused (strict JSON)."""
    try:
        text = json.dumps(obj, indent=2, allow_nan=False) + "\n"
    except ValueError as err:
        raise FevaeError(
            f"cannot write {path}: {err}", "metrics must be finite numbers; check the scores"
        ) from err
    return write_text_atomic(path, text)


# --------------------------------------------------------------------------------------------
# Score files (one .npz per set, one array per score)
# --------------------------------------------------------------------------------------------
def full_length_scores(scores: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Every score column of one set as a float64 array over all its images, NaN where a detector scored on a
    subset did not score: at the positions ``index__<score>`` names (the images' dataset indices, which for a
    scored input are their positions), else after its first ``len`` images. The ``index__`` arrays themselves
    are dropped."""
    n = max(len(v) for k, v in scores.items() if not k.startswith(INDEX_PREFIX))
    out = {}
    for name, values in scores.items():
        if name.startswith(INDEX_PREFIX):
            continue
        full = np.full(n, np.nan, dtype=np.float64)
        where = scores.get(INDEX_PREFIX + name)
        full[np.asarray(where, dtype=np.int64) if where is not None else slice(0, len(values))] = np.asarray(values, dtype=np.float64)
        out[name] = full
    return out


def save_scores(path: str | Path, scores_for_one_set: Mapping[str, np.ndarray],
                mc_se: Mapping[str, np.ndarray] | None = None) -> Path:
    """Save one set's scores to ``path`` (``.npz``, one float64 array per score), atomically; each
    ``mc_se[name]`` (a score's per-image Monte-Carlo standard error) as ``mcse__<name>``, and each
    ``mc_se["ess__<name>"]`` (its effective sample size) as ``ess__<name>``."""
    if not scores_for_one_set:
        raise FevaeError(f"no scores to save to {path}", "pass at least one score array")
    arrays = {}
    both = {**scores_for_one_set, **{k if k.startswith(ESS_PREFIX) else MCSE_PREFIX + k: v for k, v in dict(mc_se or {}).items()}}
    for name, arr in both.items():
        if not name or "/" in name or name.startswith("."):
            raise FevaeError(f"invalid score name {name!r}", "use names like 'log_p_vae_pr'")
        arrays[name] = np.asarray(arr, dtype=np.float64)
    set_size(str(path), arrays)  # every array of a set is one value per image
    with atomic_open(path, "wb") as fh:
        np.savez(fh, **arrays)
    return Path(path)


def load_scores(path: str | Path, mc_se: bool = False) -> dict[str, np.ndarray]:
    """Load a score file written by :func:`save_scores` (no pickles): the scores, or with
    ``mc_se=True`` only their Monte-Carlo standard errors (keyed by score name) and effective sample
    sizes (keyed ``ess__<score>``)."""
    path = Path(path)
    if not path.is_file():
        raise FevaeError(f"score file {path} does not exist", "run the scoring stage first")
    try:
        with np.load(path, allow_pickle=False) as npz:
            out = {name: np.asarray(npz[name], dtype=np.float64) for name in npz.files}
    except (OSError, ValueError, EOFError, KeyError, zipfile.BadZipFile) as err:
        raise FevaeError(
            f"score file {path} is corrupt or not a score file ({type(err).__name__}: {err})",
            "delete it and re-run the scoring stage",
        ) from err
    errors = {k[len(MCSE_PREFIX):]: out.pop(k) for k in [k for k in out if k.startswith(MCSE_PREFIX)]}
    errors.update({k: out.pop(k) for k in [k for k in out if k.startswith(ESS_PREFIX)]})
    if not out:
        raise FevaeError(f"score file {path} contains no scores", "re-run the scoring stage")
    return errors if mc_se else out


def load_all_scores(scores_dir: str | Path) -> dict[str, dict[str, np.ndarray]]:
    """Load every ``<set>.npz`` in ``scores_dir`` into ``{set: {score: array}}``."""
    scores_dir = Path(scores_dir)
    if not scores_dir.is_dir():
        raise FevaeError(f"scores folder {scores_dir} does not exist", "run the scoring stage first")
    files = sorted(p for p in scores_dir.glob("*.npz") if not p.name.startswith("."))
    if not files:
        raise FevaeError(f"no score files (*.npz) in {scores_dir}", "run the scoring stage first")
    return {p.stem: load_scores(p) for p in files}


def set_size(set_name: str, arrays: Mapping[str, Any]) -> int:
    """Number of examples of a set: the longest score array. A shorter array covers the set's
    *first* ``len`` examples (a detector scored on a subset, e.g. ``likelihood_regret``)."""
    sizes = {}
    for name, a in arrays.items():
        if np.ndim(a) != 1:
            raise FevaeError(
                f"set {set_name!r} score {name!r}: expected a 1-D array, got shape {np.shape(a)}",
                "store one score per example",
            )
        sizes[name] = int(np.shape(a)[0])
    if not sizes:
        raise FevaeError(f"set {set_name!r} has no scores", "score the set or remove it")
    return max(sizes.values())
