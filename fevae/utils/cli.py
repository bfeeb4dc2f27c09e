"""Helpers shared by the Hydra entry points (train, evaluate, score, data doctor)."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from fevae.errors import FevaeError

#: Absolute path of the repository's Hydra config folder (the package is installed editable).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")

log = logging.getLogger("fevae")

# Lightning 2.6 on torch 2.14 warns about its own use of a deprecated torch API on every run.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def user_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a :class:`FevaeError` raised by ``task`` into one line on stderr and exit status 2.

    Anything else propagates with its traceback: that is a bug, not a user error. In a multirun
    sweep, any error of a job is written to ``<job dir>/error.txt`` and logged instead, and the job
    returns NaN, so the other jobs go on (Optuna marks the trial failed) and the sweep summary
    shows the failed job as a row carrying its error. Under DDP, every rank leaves through
    :func:`release_process_group`, whether the task finished or failed.
    """

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            if not in_multirun():
                raise
            from hydra.core.hydra_config import HydraConfig

            from fevae.metrics import write_text_atomic

            message = f"{type(err).__name__}: {err}" if not isinstance(err, FevaeError) else str(err)
            log.exception("job failed: %s", message)
            write_text_atomic(Path(HydraConfig.get().runtime.output_dir) / "error.txt", message + "\n")
            return float("nan")  # a sweeper (Optuna) records a failed trial and goes on
        finally:
            release_process_group()

    return _exit_on_user_error(wrapper)


def _exit_on_user_error(task: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except FevaeError as err:
            log.debug("user error", exc_info=True)
            print(f"error: {err}", file=sys.stderr, flush=True)
            sys.exit(FevaeError.exit_code)

    return wrapper


def release_process_group() -> None:
    """Destroy the default ``torch.distributed`` process group, if this process has one.

    A process that exits with a live gloo group aborts at interpreter shutdown ("terminate called
    without an active exception", SIGABRT) whenever gloo's worker threads still hold work; under
    Lightning's DDP launcher rank 0 then kills every rank and the run fails after it had finished.
    Lightning's teardown does not destroy the group, so each entry point does it on its way out.
    Destroying is local (no collective), so a rank that is done never waits for the others.
    """
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def task_overrides(exclude: tuple[str, ...] = ()) -> list[str]:
    """The command line's ``key=value`` overrides of the current Hydra job, less the keys in ``exclude``.

    ``evaluate`` and ``score`` apply them on top of a finished run's stored config.
    """
    from hydra.core.hydra_config import HydraConfig

    return [o for o in HydraConfig.get().overrides.task if o.lstrip("+~").split("=")[0] not in exclude]


def is_rank_zero() -> bool:
    """True in the process that writes a run's files (rank 0 under DDP; always outside DDP)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``) sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
