"""One process per run folder, resume only with the same config, and a finished run's files checked before reuse."""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import yaml
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from fevae.errors import FevaeError
from fevae.features.fitting import mixture_file, mixture_layers
from fevae.features.mixture import MixtureArrays
from fevae.limits import load_yaml_config
from fevae.pipeline.runs import CONFIG_FILE
from fevae.training import checkpoint_dir, load_state_dict
from fevae.utils.io import write_bytes_atomic
from fevae.utils.signals import set_hint
from fevae.validation import build

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------- owning a run folder
#: fevae's own files in a run folder: the lock, who holds it, the config the run was started with
#: and a copy of the ``.hydra/`` files of that start
STATE_DIR = ".fevae"


#: settings that may differ when a run is resumed: where things are read from and written to, and
#: what is shown while training; none of them changes a trained weight or a score
RESUME_MAY_CHANGE = (
    "resume", "paths", "cache", "limits", "optimized_metric", "logger", "progress_every_s", "separation", "fe.n_jobs",
    "data.data_dir", "data.download", "data.download_dir", "data.num_workers", "data.pin_memory",
    "trainer.enable_progress_bar", "trainer.enable_model_summary", "trainer.log_every_n_steps",
    "budget.vae.trainer.log_every_n_steps", "budget.jigsaw.trainer.log_every_n_steps",
)


def launch_rank() -> int:
    """Global rank of this process as its launcher set it (0 outside DDP/SLURM/torchrun)."""
    for var in ("RANK", "SLURM_PROCID", "JSM_NAMESPACE_RANK", "LOCAL_RANK"):
        value = os.environ.get(var)
        if value not in (None, ""):
            try:
                return int(value)
            except ValueError:
                continue
    return 0


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _holder(state: Path) -> dict[str, Any] | None:
    try:
        holder = json.loads((state / "owner.json").read_text())
        return holder if isinstance(holder, dict) else None
    except (OSError, ValueError):
        return None


def _describe(holder: dict[str, Any] | None) -> str:
    if not holder:
        return "another process"
    return f"pid {holder.get('pid')} on host {holder.get('host')} (since {holder.get('started')})"


def _task_config(cfg: DictConfig) -> DictConfig:
    return OmegaConf.masked_copy(cfg, [k for k in cfg if k != "hydra"]) if "hydra" in cfg else cfg


def _flat(cfg: DictConfig) -> dict[str, Any]:
    try:
        plain = OmegaConf.to_container(_task_config(cfg), resolve=True)
    except OmegaConfBaseException:
        plain = OmegaConf.to_container(_task_config(cfg), resolve=False)
    out: dict[str, Any] = {}


    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, dict) and node:
            for k, v in node.items():
                walk(v, f"{prefix}.{k}" if prefix else str(k))
        else:
            out[prefix] = node


    walk(plain, "")
    return out


def config_differences(stored: DictConfig, requested: DictConfig, may_change: Iterable[str] = RESUME_MAY_CHANGE) -> list[str]:
    """Dotted keys whose values differ between two configs (added or removed keys count), less ``may_change``."""
    a, b = _flat(stored), _flat(requested)
    missing = object()
    keys = sorted(k for k in set(a) | set(b) if a.get(k, missing) != b.get(k, missing))
    return [k for k in keys if not any(k == m or k.startswith(m + ".") for m in may_change)]


def _hydra_wrote_files() -> bool:
    """True when Hydra wrote ``.hydra/`` itself at this process's startup (``hydra.output_subdir`` set)."""
    from hydra.core.hydra_config import HydraConfig


    return HydraConfig.initialized() and HydraConfig.get().output_subdir is not None


def _restore_hydra_files(run_dir: Path) -> None:
    """Put back the ``.hydra/`` files of the run's own start, where Hydra rewrote them for this refused call
    (only with an explicit ``hydra.output_subdir``: conf/train.yaml has Hydra write none at startup)."""
    backup = run_dir / STATE_DIR / "hydra"
    if backup.is_dir() and _hydra_wrote_files():
        for file in backup.iterdir():
            if file.is_file():
                write_bytes_atomic(run_dir / ".hydra" / file.name, file.read_bytes())


def write_hydra_files(run_dir: Path, cfg: DictConfig) -> None:
    """Write ``<run_dir>/.hydra/{config,hydra,overrides}.yaml`` as Hydra does, from this process's config.


    ``conf/train.yaml`` sets ``hydra.output_subdir: null``, so Hydra writes nothing at startup, before
    the run folder is claimed: only the process that holds the folder's lock writes these files, after
    taking it (:func:`own_run_folder`), so two trainings started at once into one folder never leave
    the refused one's settings in the winner's ``.hydra/config.yaml``. Outside a Hydra app: nothing.
    """
    from hydra.core.hydra_config import HydraConfig


    if not HydraConfig.initialized():
        return
    hydra_dir = Path(run_dir) / ".hydra"
    hydra_dir.mkdir(parents=True, exist_ok=True)
    write_bytes_atomic(hydra_dir / "config.yaml", OmegaConf.to_yaml(_task_config(cfg)).encode())
    write_bytes_atomic(hydra_dir / "hydra.yaml", OmegaConf.to_yaml(HydraConfig.instance().cfg).encode())
    write_bytes_atomic(hydra_dir / "overrides.yaml", OmegaConf.to_yaml(HydraConfig.get().overrides.task).encode())


def record_refused_start(run_dir: str | Path, cfg: DictConfig) -> None:
    """The ``.hydra/`` files of a start refused before it claimed ``run_dir`` (a bad setting), as Hydra
    wrote them before: only into a folder that no process holds and that holds no run (a sweep's
    failed job keeps its settings beside its ``error.txt``; a finished run's files are never touched)."""
    from filelock import FileLock, Timeout


    run_dir = Path(run_dir)
    if launch_rank() != 0 or not run_dir.is_dir() or _holds_a_run(run_dir):
        return
    state = run_dir / STATE_DIR
    try:
        state.mkdir(exist_ok=True)
        lock = FileLock(str(state / "lock"), timeout=0)
        lock.acquire()
    except (OSError, Timeout):
        return
    try:
        if not _holds_a_run(run_dir):
            write_hydra_files(run_dir, cfg)
    finally:
        lock.release()


def _holds_a_run(run_dir: Path) -> bool:
    return (run_dir / STATE_DIR / "config.yaml").is_file() or (run_dir / "checkpoints").is_dir()


@contextlib.contextmanager
def own_run_folder(run_dir: str | Path, cfg: DictConfig) -> Iterator[None]:
    """Hold ``run_dir`` for this process while it trains (train and resume).


    * A second process that wants the folder gets one :class:`FevaeError` at once, naming the
      holder's pid and host (``<run_dir>/.fevae/owner.json``). The lock is an OS file lock
      (:class:`filelock.FileLock`, ``flock``), which the OS drops when its holder dies, so a lock
      left by a killed run (its pid dead) is taken over, with a warning.
    * A run folder that already holds a run is not trained into again unless ``resume=true``.
    * ``resume=true`` compares the config the run was started with (``.fevae/config.yaml``) with
      the requested one and refuses, naming the keys, when any setting outside
      :data:`RESUME_MAY_CHANGE` differs; and compares the folder's own files with the requested
      config (:func:`check_artifacts`: each mixture's C, n, layer width and covariance type, each
      checkpoint's weight shapes), so a run whose ``.fevae/`` was deleted cannot mix configs either:
      the folder's weights, mixtures, scores and report then always describe one config.
    * The run's config files (``.fevae/config.yaml``, ``.hydra/``: :func:`write_hydra_files`) are
      written only here, by the lock's holder, after the checks: a refused process writes none.


    Only the process that writes the run's files takes part: under DDP the non-zero ranks (env
    ``RANK``/``LOCAL_RANK``/``SLURM_PROCID``) skip this, and each job of a multirun sweep owns its
    own job folder.
    """
    from filelock import FileLock, Timeout


    if launch_rank() != 0:
        yield
        return
    run_dir = Path(run_dir)
    state = run_dir / STATE_DIR
    state.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(state / "lock"), timeout=0)
    try:
        lock.acquire()
    except Timeout:
        _restore_hydra_files(run_dir)
        raise FevaeError(
            f"run folder {run_dir} is in use by {_describe(_holder(state))}",
            "wait for that run to finish, or train into another folder (hydra.run.dir=...)",
        ) from None
    try:
        stale = _holder(state)
        if stale is not None:
            same_host = stale.get("host") == socket.gethostname()
            log.warning("run folder %s: took over the lock of %s, which is gone%s", run_dir, _describe(stale),
                        "" if not same_host or not _pid_alive(int(stale.get("pid", -1))) else " (pid reused)")
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_bytes_atomic(state / "owner.json", json.dumps(holder).encode())
        try:
            _check_config(run_dir, cfg)
        except FevaeError:
            _restore_hydra_files(run_dir)
            raise


        set_hint(f"continue it with resume=true and hydra.run.dir={run_dir} (same settings)")
        yield
    finally:
        (state / "owner.json").unlink(missing_ok=True)
        lock.release()


def _check_config(run_dir: Path, cfg: DictConfig) -> None:
    """Refuse to mix two configs in one folder; record the config of a new run (see :func:`own_run_folder`)."""
    state = run_dir / STATE_DIR
    stored_path = state / "config.yaml"
    resume = bool(cfg.get("resume", False))
    if not resume and _holds_a_run(run_dir):
        raise FevaeError(
            f"run folder {run_dir} already holds a run",
            f"continue it with resume=true (same settings), or train into a new folder (hydra.run.dir=...)",
        )
    if resume and stored_path.is_file():
        try:
            stored = load_yaml_config(stored_path, "train into a new folder")  # bounded YAML aliases, as for .hydra/config.yaml
        except (OSError, UnicodeDecodeError, yaml.YAMLError, OmegaConfBaseException) as err:
            raise FevaeError(f"{stored_path} is not readable ({type(err).__name__})", "train into a new folder") from err
        differ = config_differences(stored, cfg)
        if differ:
            shown = ", ".join(differ[:8]) + (f" and {len(differ) - 8} more" if len(differ) > 8 else "")
            raise FevaeError(
                f"resume=true with other settings than run {run_dir} was started with: {shown}",
                "resume with the run's own settings (see its .fevae/config.yaml), or start a new run; "
                "to re-score with other fe.*/eval.* settings use `python -m fevae.evaluate run_dir=...`",
            )
        check_artifacts(run_dir, cfg)
        write_hydra_files(run_dir, cfg)
        return
    if resume:
        check_artifacts(run_dir, cfg)
    if resume and _holds_a_run(run_dir):
        log.warning("run folder %s has no %s: its settings cannot be compared with these (its files were checked against them)",
                    run_dir, stored_path.relative_to(run_dir))
    write_bytes_atomic(stored_path, OmegaConf.to_yaml(_task_config(cfg)).encode())
    write_hydra_files(run_dir, cfg)
    hydra_dir = run_dir / ".hydra"
    if hydra_dir.is_dir():
        backup = state / "hydra"
        shutil.rmtree(backup, ignore_errors=True)
        backup.mkdir()
        for file in hydra_dir.iterdir():
            if file.is_file():
                shutil.copy2(file, backup / file.name)


def _resume_fix(run_dir: Path) -> str:
    return (f"resume with the settings the run was trained with (see {run_dir / CONFIG_FILE}), or start a new run; "
            "to re-score with other fe.* settings use `python -m fevae.evaluate run_dir=...`, which refits the mixture")


def check_artifacts(run_dir: str | Path, cfg: DictConfig) -> None:
    """Refuse ``resume=true`` when a file already in ``run_dir`` was made under other settings than ``cfg``.


    Read from the files themselves, not from ``.fevae/config.yaml`` (which a user may have deleted):
    each feature mixture (``mixture.npz`` for ``fe.layer``, ``mixture_l<k>.npz`` for ``fe.extra_layers``)
    must have ``fe.C`` components, be fitted on ``fe.n`` images, with ``fe.covariance_type``, on as
    many features as its Jigsaw layer is wide (``model.jigsaw.hidden``); each checkpoint
    (``checkpoints/<model>/{best,last}.ckpt``) must hold the weights, with their shapes, of the model
    ``model.<model>`` builds. A mismatch is one :class:`FevaeError` naming both values.
    """
    run_dir = Path(run_dir)
    if not isinstance(cfg.get("fe"), DictConfig) or not isinstance(cfg.get("model"), DictConfig):
        return
    fe = cfg.fe
    hidden = [int(h) for h in (OmegaConf.select(cfg, "model.jigsaw.hidden") or [])]
    for layer in mixture_layers(fe):
        path = run_dir / mixture_file(layer, fe)
        if not path.is_file():
            continue
        arrays = MixtureArrays.load(path)
        checks = [("fe.C", arrays.n_components, int(fe.C)), ("fe.covariance_type", arrays.covariance_type, str(fe.covariance_type))]
        if arrays.n_samples_fit >= 0:  # (-1: a mixture written before the count was stored)
            checks.append(("fe.n", arrays.n_samples_fit, int(fe.n)))
        for key, have, want in checks:
            if have != want:
                raise FevaeError(f"resume=true: {path.name} was fitted with {key}={have}, but this run asks for {key}={want}", _resume_fix(run_dir))
        if 1 <= layer <= len(hidden) and arrays.n_features != hidden[layer - 1]:
            widths = [k + 1 for k, h in enumerate(hidden) if h == arrays.n_features]
            made = f" (layer {', '.join(map(str, widths))} of model.jigsaw.hidden={hidden})" if widths else ""
            setting = f"fe.layer={layer}" if layer == int(fe.layer) else f"fe.extra_layers' layer {layer}"
            raise FevaeError(f"resume=true: {path.name} was fitted on {arrays.n_features} features{made}, "
                             f"but {setting} has {hidden[layer - 1]} (model.jigsaw.hidden={hidden})", _resume_fix(run_dir))
    for name in ("vae", "jigsaw"):
        node = cfg.model.get(name)
        checkpoints = [p for p in (checkpoint_dir(run_dir, name) / f for f in ("last.ckpt", "best.ckpt")) if p.is_file()]
        if node is None or not checkpoints:
            continue
        expected = {k: tuple(v.shape) for k, v in build(f"model.{name}", node).state_dict().items()}
        for path in checkpoints:
            stored = {k: tuple(v.shape) for k, v in load_state_dict(path).items()}
            for key in sorted(set(expected) | set(stored)):
                have, want = stored.get(key), expected.get(key)
                if have != want:
                    show = lambda s: "no such weight" if s is None else f"shape {list(s)}"  # noqa: E731
                    raise FevaeError(f"resume=true: {path.relative_to(run_dir)} has {key} with {show(have)}, "
                                     f"but model.{name} as configured has {show(want)}", _resume_fix(run_dir))
