"""What the benchmark and its memory worker share: models, images, features, clocks, memory probes.

Only public pieces of :mod:`fevae` are used (models, mixtures, scoring, baselines, run folders);
the data module is instantiated from the config directly and Jigsaw features are extracted here,
so the benchmark does not depend on the training/evaluation modules.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import platform
import subprocess
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping

import numpy as np
import torch
from hydra.utils import instantiate
from omegaconf import DictConfig

from fevae.errors import FevaeError
from fevae.features.mixture import MixtureArrays
from fevae.features.bgm import fit_mixture
from fevae.utils.parallel import usable_cores
from fevae.utils.timing import total_seconds

REPO_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = REPO_ROOT / "conf"
DEFAULT_EXPERIMENT = "v2_gaussian"
MB = 1024.0 * 1024.0

#: Stage keys of ``timings.json``, in pipeline order. Runs before the split wrote
#: ``train_jigsaw_and_fit_mixture`` instead of ``train_jigsaw`` + ``fit_mixture``.
STAGES = ("train_side_by_side", "train_vae", "train_jigsaw", "fit_mixture", "train_jigsaw_and_fit_mixture", "score", "write_outputs")
OLD_STAGE = "train_jigsaw_and_fit_mixture"


# ---------------------------------------------------------------------------- models
@dataclass
class Models:
    """A VAE, a Jigsaw and the config they came from (a trained run's, or a fresh composition)."""

    cfg: DictConfig
    vae: torch.nn.Module
    jigsaw: torch.nn.Module
    mixture: MixtureArrays | None
    source: str  # "run" or "untrained"
    run_dir: Path | None = None
    #: Jigsaw layer -> mixture stored in the run (newer runs may hold ``fe.extra_layers``' too)
    layer_mixtures: dict[int, MixtureArrays] = field(default_factory=dict)

    @property
    def layer(self) -> int:
        return int(self.cfg.fe.layer)

    @property
    def pre_activation(self) -> bool:
        return bool(self.cfg.fe.pre_activation)

    def features_fn(self, layer: int | None = None) -> Callable[[torch.Tensor], torch.Tensor]:
        """``images [N, 1, 28, 28] -> [N, d]`` Jigsaw features of ``layer`` (default: the run's ``fe.layer``)."""
        layer = self.layer if layer is None else int(layer)
        return lambda images: self.jigsaw.features(images, layer=layer, pre_activation=self.pre_activation)

    def to(self, device: torch.device) -> Models:
        self.vae.to(device)
        self.jigsaw.to(device)
        return self


def has_trained_models(run_dir: Path) -> bool:
    """True if ``run_dir`` holds a config, both models' checkpoints and ``mixture.npz``."""
    ckpt = lambda name: any((run_dir / "checkpoints" / name / f).is_file() for f in ("best.ckpt", "last.ckpt"))  # noqa: E731
    return (run_dir / ".hydra" / "config.yaml").is_file() and ckpt("vae") and ckpt("jigsaw") and (run_dir / "mixture.npz").is_file()


def find_default_run(experiment: str = DEFAULT_EXPERIMENT, root: Path | None = None) -> Path | None:
    """Newest run folder ``outputs/train/<experiment>/<time>/`` with ``timings.json`` and trained models."""
    base = (root or REPO_ROOT / "outputs") / "train" / experiment
    if not base.is_dir():
        return None
    runs = [p for p in base.iterdir() if p.is_dir() and (p / "timings.json").is_file() and has_trained_models(p)]
    return max(runs, key=lambda p: (p.name, (p / "timings.json").stat().st_mtime)) if runs else None


def compose_config(experiment: str = DEFAULT_EXPERIMENT, overrides: Iterable[str] = ()) -> DictConfig:
    """``conf/train.yaml`` composed with ``+experiment=<experiment>`` and ``overrides`` (no Hydra run)."""
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra
    from hydra.errors import HydraException

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
            return compose(config_name="train", overrides=[f"+experiment={experiment}", *overrides])
    except HydraException as err:
        raise FevaeError(f"cannot compose the config with +experiment={experiment} {' '.join(overrides)}: {err}",
                         "check --experiment and --override (Hydra override syntax, e.g. fe.C=10)") from err
    finally:
        GlobalHydra.instance().clear()


def load_models(run_dir: Path | None, *, experiment: str = DEFAULT_EXPERIMENT, overrides: Iterable[str] = (),
                seed: int | None = None) -> Models:
    """The trained models of ``run_dir`` (``fevae.pipeline.runs.load_run``), or freshly initialised ones
    (seeded, eval mode) built from the composed config when ``run_dir`` is None."""
    overrides = list(overrides)
    if run_dir is not None:
        from fevae.pipeline.runs import load_run

        run = load_run(run_dir, overrides)
        stored = dict(getattr(run, "mixtures", None) or {})
        return Models(run.cfg, run.vae.eval(), run.jigsaw.eval(), run.mixture, "run", Path(run_dir), stored)
    cfg = compose_config(experiment, overrides)
    torch.manual_seed(int(cfg.seed if seed is None else seed))
    vae = instantiate(cfg.model.vae, _convert_="all").eval()
    jigsaw = instantiate(cfg.model.jigsaw, _convert_="all").eval()
    return Models(cfg, vae, jigsaw, None, "untrained")


# ---------------------------------------------------------------------------- data
def make_data(cfg: DictConfig):
    """The run's data module with every eval image in ``eval_sets`` (no validation part), set up."""
    dm = instantiate(cfg.data, batch_size=int(cfg.eval.batch_size), eval_batch_size=int(cfg.eval.batch_size),
                     eval_split={"val": 0, "test": None, "seed": 0})
    dm.setup()
    return dm


def eval_images(dm, n: int, sets: tuple[str, ...] = ("fashionmnist", "mnist")) -> tuple[torch.Tensor, str]:
    """``n`` eval images ``[n, 1, 28, 28]`` (the sets concatenated in order, repeated if too few)
    and a description of where they came from."""
    pool = torch.cat([dm.eval_sets[name].tensors[0] for name in sets])
    what = " + ".join(f"{name} test" for name in sets)
    if len(pool) >= n:
        return pool[:n].contiguous(), f"first {n} of {what}"
    reps = math.ceil(n / len(pool))
    return pool.repeat(reps, 1, 1, 1)[:n].contiguous(), f"{what} ({len(pool)} images) repeated {reps}x"


def train_images(dm, n: int, seed: int) -> torch.Tensor:
    """``min(n, len(train_set))`` seeded random training images (as the mixture fit selects them)."""
    x = dm.train_set.tensors[0]
    k = min(int(n), len(x))
    index = np.sort(np.random.default_rng(seed).choice(len(x), size=k, replace=False))
    return x[torch.from_numpy(index)]


@torch.no_grad()
def extract_features(fn: Callable[[torch.Tensor], torch.Tensor], images: torch.Tensor, device: torch.device,
                     batch_size: int = 2048) -> np.ndarray:
    """``fn`` on ``images`` in batches -> float64 ``[N, d]`` numpy."""
    out = [fn(images[i : i + batch_size].to(device)).double().cpu() for i in range(0, len(images), batch_size)]
    return torch.cat(out).numpy()


def fit_bench_mixture(features: np.ndarray, fe: Mapping[str, Any], seed: int, max_iter: int | None = None) -> MixtureArrays:
    """A mixture with the run's ``fe`` settings on ``features`` (C capped at the number of rows).

    Only its evaluation cost matters here, so a fit that stops at ``max_iter`` is not logged
    (``converged`` records it)."""
    mixture_log = logging.getLogger("fevae.features.mixture")
    level = mixture_log.level
    mixture_log.setLevel(logging.ERROR)
    try:
        return fit_mixture(
            features,
            n_components=min(int(fe["C"]), len(features)),
            covariance_type=str(fe["covariance_type"]),
            max_iter=int(max_iter or fe["max_iter"]),
            reg_covar=float(fe["reg_covar"]),
            n_init=1,
            random_state=seed,
        )
    finally:
        mixture_log.setLevel(level)


def sample_features(arrays: MixtureArrays, n: int, seed: int) -> np.ndarray:
    """``n`` draws from the mixture's Gaussian components (by weight): synthetic features."""
    rng = np.random.default_rng(seed)
    comp = rng.choice(arrays.n_components, size=n, p=arrays.weights / arrays.weights.sum())
    d = arrays.n_features
    cov = arrays.covariances
    out = np.empty((n, d))
    for c in np.unique(comp):
        rows = comp == c
        if arrays.covariance_type == "full":
            chol = np.linalg.cholesky(cov[c])
        elif arrays.covariance_type == "tied":
            chol = np.linalg.cholesky(cov)
        else:
            chol = np.diag(np.sqrt(np.broadcast_to(cov[c], (d,))))
        out[rows] = arrays.means[c] + rng.standard_normal((int(rows.sum()), d)) @ chol.T
    return out


# ---------------------------------------------------------------------------- clocks
def resolve_device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise FevaeError("--device cuda was asked for but torch sees no CUDA device", "use --device cpu")
    return torch.device(name)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device) -> float:
    """Wall seconds of ``fn()`` (device work included)."""
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


# ---------------------------------------------------------------------------- memory
def _status_kb(key: str) -> float | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return float(line.split()[1])
    except OSError:
        return None
    return None


def rss_mb() -> float | None:
    """Resident set size now (MB), from ``/proc/self/status``."""
    kb = _status_kb("VmRSS")
    return None if kb is None else kb / 1024.0


def peak_rss_mb() -> float | None:
    """Peak resident set size (``VmHWM``, MB) since the process started or :func:`reset_peak_rss`."""
    kb = _status_kb("VmHWM")
    if kb is None:
        import resource

        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return kb / 1024.0


def release_free_memory() -> None:
    """Give freed heap pages back to the OS (glibc ``malloc_trim``), so RSS is what is in use."""
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def reset_peak_rss() -> bool:
    """Reset ``VmHWM`` to the current RSS (``/proc/self/clear_refs``, Linux >= 4.0); False if impossible."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


# ---------------------------------------------------------------------------- timings.json
def stage_times(timings: Mapping[str, Any], source: str = "timings.json") -> dict[str, Any]:
    """Seconds and fraction of the total per stage of a run's ``timings.json`` (old and new keys)."""
    if not isinstance(timings, Mapping) or not timings:
        raise FevaeError(f"{source} holds no stage timings", "pass the timings.json a finished `python -m fevae.train` run wrote")
    seconds: dict[str, float] = {}
    for key in [*STAGES, *sorted(k for k in timings if k not in STAGES)]:
        if key not in timings:
            continue
        value = timings[key]
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value < 0:
            raise FevaeError(f"{source}: stage {key!r} has invalid time {value!r}", "rerun the training to rewrite timings.json")
        seconds[key] = float(value)
    if not seconds:
        raise FevaeError(f"{source} has none of the stages {', '.join(STAGES)}", "pass a timings.json of `python -m fevae.train`")
    total = total_seconds(seconds)  # a side-by-side run's per-model times are parts of train_side_by_side
    return {
        "source": source,
        "format": "old (train_jigsaw_and_fit_mixture combined)" if OLD_STAGE in seconds else "new",
        "seconds": seconds,
        "fraction": {k: (v / total if total > 0 else 0.0) for k, v in seconds.items()},  # of the wall time
        "total_seconds": total,
    }


# ---------------------------------------------------------------------------- machine
def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _git_commit() -> str | None:
    try:
        head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, timeout=10)
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO_ROOT,
                               capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    if head.returncode != 0:
        return None
    return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def machine_info(device: torch.device) -> dict[str, Any]:
    """CPU model, cores, threads, torch version, device, date: what the numbers depend on."""
    info: dict[str, Any] = {
        "date": datetime.now(timezone.utc).astimezone().isoformat(timespec="seconds"),
        "cpu": _cpu_model(),
        "cpu_cores": os.cpu_count(),
        "cpu_cores_usable": usable_cores(),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": str(device),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "load_average_start": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "git_commit": _git_commit(),
        "argv": sys.argv[1:],
    }
    return info
