"""Helpers shared by the Hydra entry points (train, evaluate, score, data doctor)."""

from __future__ import annotations

import functools
import logging
import sys
import warnings
from pathlib import Path
from typing import Any, Callable

from fevae.errors import FevaeError
from fevae.limits import configure
from fevae.utils.io import write_text_atomic
from fevae.utils.metric_names import metric_direction
from fevae.utils.parallel import die_with_launcher
from fevae.utils.signals import exit_on_signal

#: Absolute path of the Hydra config folder: the checkout's ``conf/`` when the package runs from a
#: checkout (editable install, ``python -m fevae.train`` in the repository), else the copy of it that
#: a wheel or ``pip install .`` installs as package data, ``fevae/conf`` (see pyproject.toml).
CONFIG_DIR = str(Path(__file__).resolve().parents[2] / "conf")
if not Path(CONFIG_DIR, "train.yaml").is_file():
    CONFIG_DIR = str(Path(__file__).resolve().parents[1] / "conf")

log = logging.getLogger("fevae")


def first_ood_set(ood_sets: Any) -> str:
    """``${first_ood_set:${data.ood_sets}}`` (conf/train.yaml's ``optimized_metric``): the name of the
    first OOD set a data config lists (``mnist`` for FashionMNIST, ``svhn`` for CIFAR-10), or
    ``none`` when it lists none, so the default selection metric follows the data config."""
    names = [str(k) for k, v in (ood_sets or {}).items() if v is not None]
    return names[0] if names else "none"


def optimized_direction(key: Any) -> str:
    """``${optimized_direction:${optimized_metric}}`` (conf/hparams_search/optuna.yaml's ``direction``):
    ``minimize`` for a metric where lower is better (``.../fpr95``), else ``maximize``; an unknown
    ending is left to :func:`fevae.evaluation.settings.check_optimized_metric`'s error, so it maximises here."""
    try:
        return metric_direction(None if key is None else str(key))
    except ValueError:
        return "maximize"


def _register_resolvers() -> None:
    from omegaconf import OmegaConf

    if not OmegaConf.has_resolver("first_ood_set"):
        OmegaConf.register_new_resolver("first_ood_set", first_ood_set)
    if not OmegaConf.has_resolver("optimized_direction"):
        OmegaConf.register_new_resolver("optimized_direction", optimized_direction)


_register_resolvers()

# Lightning 2.6 on torch 2.14 warns about its own use of a deprecated torch API on every run.
warnings.filterwarnings("ignore", message=r".*isinstance\(treespec, LeafSpec\).*")


def as_user_error(err: BaseException) -> FevaeError | None:
    """The :class:`FevaeError` ``err`` stands for, or ``None`` when it is not a user error.

    A :class:`FevaeError` itself; Hydra's ``InstantiationException`` (or any exception) whose
    chained cause is one (a constructor's check, run by ``hydra.utils.instantiate``); a missing
    mandatory value (``run_dir=???``); an ``InstantiationException`` whose cause is a
    ``ValueError``/``TypeError`` (Lightning's ``MisconfigurationException`` is one): the settings of
    the instantiated object are wrong.
    """
    from hydra.errors import InstantiationException
    from omegaconf.errors import InterpolationResolutionError, MissingMandatoryValue

    seen: set[int] = set()
    chain: list[BaseException] = []
    cur: BaseException | None = err
    while cur is not None and id(cur) not in seen:
        seen.add(id(cur))
        chain.append(cur)
        cur = cur.__cause__ or cur.__context__
    for e in chain:
        if isinstance(e, FevaeError):
            return e
    if isinstance(err, MissingMandatoryValue):
        key = getattr(err, "full_key", None) or "a required setting"
        return FevaeError(f"{key} is required but was not given", f"pass {key}=... on the command line")
    if isinstance(err, InterpolationResolutionError):  # a value with ${...} that names nothing: input='x${y}.npy'
        key = getattr(err, "full_key", None) or "a setting"
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return FevaeError(f"{key}: {first}", f"fix the ${{...}} interpolation, or write a literal '$' as '\\$' ({key}='a\\${{b}}.npy')")
    if isinstance(err, InstantiationException):
        cause = err.__cause__
        if isinstance(cause, (ValueError, TypeError)) or type(cause).__name__ == "MisconfigurationException":  # Lightning's
            first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
            where = str(err).strip().splitlines()[0] if str(err).strip() else "building an object from the config"
            return FevaeError(f"{where.rstrip(':')}: {first}", "fix the settings of that config group")
    return None


def user_errors(task: Callable[..., Any]) -> Callable[..., Any]:
    """Turn a user error raised by ``task`` (see :func:`as_user_error`) into one line on stderr and exit status 2.

    Anything else propagates with its traceback: that is a bug, not a user error. In a multirun
    sweep, any error of a job is written to ``<job dir>/error.txt`` and logged instead, and the job
    returns the text ``"failed: <error>"``: Hydra's Optuna sweeper (1.3) cannot record a NaN
    (``study.tell`` refuses it and the sweep dies), but records a value that is not a number as a
    failed trial, logs it and goes on;
    the sweep summary shows the failed job as a row carrying its error. Under DDP, every rank
    leaves through :func:`release_process_group`, whether the task finished or failed.
    """

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        global _task_started
        _task_started = True
        die_with_launcher()  # a DDP rank > 0 ends with the process that launched it
        try:
            _apply_limits(args[0] if args else None)
            return task(*args, **kwargs)
        except Exception as err:
            if not in_multirun():
                raise
            from hydra.core.hydra_config import HydraConfig


            user = as_user_error(err)
            message = str(user) if user is not None else f"{type(err).__name__}: {err}"
            log.exception("job failed: %s", message)
            write_text_atomic(Path(HydraConfig.get().runtime.output_dir) / "error.txt", message + "\n")
            # not a number: Optuna records the trial as failed (logging this text) and goes on; it refuses NaN
            return f"failed: {message}"
        finally:
            release_process_group()

    return exit_on_signal(_exit_on_user_error(wrapper))  # SIGTERM/SIGINT: one line, exit 128+signum (fevae/utils/signals.py)


def _exit_on_user_error(task: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return task(*args, **kwargs)
        except Exception as err:
            user = as_user_error(err)
            if user is None:
                raise
            log.debug("user error", exc_info=True)
            print(f"error: {one_line(str(user))}", file=sys.stderr, flush=True)
            sys.exit(FevaeError.exit_code)

    return wrapper


#: set when a :func:`user_errors` task starts: an exception after that is the task's, not Hydra's composition
_task_started = False


def _apply_limits(cfg: Any) -> None:
    """Put the command's ``limits`` settings (:mod:`fevae.limits`) in force for this process."""

    node = cfg.get("limits") if hasattr(cfg, "get") else None
    configure(node)


def hydra_error(err: BaseException, prog: str = "") -> FevaeError | None:
    """The one-line :class:`FevaeError` of an error Hydra raises while composing a command line's config
    (an unknown key or config-group option, an override it cannot parse), or ``None`` for any other."""
    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    if not isinstance(err, (HydraException, OmegaConfBaseException)):
        return None
    text = one_line(str(err).replace("\t", " "))
    cause = err.__cause__
    if isinstance(cause, OmegaConfBaseException):
        first = (str(cause).strip().splitlines() or [""])[0]
        if first and first not in text:
            text = f"{text} ({first})"
    show = f"`python -m {prog} --cfg job` prints the settings, `--help` the config groups" if prog else "`--cfg job` prints the settings"
    if type(err).__name__ == "OverrideParseException":
        first = (str(err).strip().splitlines() or [type(err).__name__])[0]
        return FevaeError(f"cannot parse the override in: {first}",
                          "quote a value with spaces, non-ASCII letters or special characters, e.g. "
                          "\"input='/data/é x.npy'\" (the outer quotes for the shell)")
    return FevaeError(text, f"check the key or option against conf/ ({show}); a new key needs a leading +")


#: the multirun in progress: ``{"dir": sweep folder}`` (set by :class:`fevae.outputs.sweep.SweepSummary`)
SWEEP: dict[str, str] = {}


def failed_sweep_error(err: BaseException) -> FevaeError | None:
    """The one-line error of a sweep none of whose trials finished: Optuna's ``study.best_trial`` then raises
    ``ValueError('No trials are completed yet.')`` after the last trial; each job's own error is in its
    ``error.txt`` (:func:`user_errors`), and the first of them is quoted. ``None`` for any other error."""
    if not isinstance(err, ValueError) or "No trials are completed yet" not in str(err):
        return None
    sweep = Path(SWEEP["dir"]) if SWEEP.get("dir") else None
    errors = sorted(sweep.glob("*/error.txt"), key=lambda p: int(p.parent.name) if p.parent.name.isdigit() else 0) if sweep else []
    first = f" (job {errors[0].parent.name}: {one_line(errors[0].read_text())})" if errors else ""
    return FevaeError(f"every trial of the sweep failed, so there is no best trial{first}",
                      f"fix that setting or the search space (hydra.sweeper.params); each job's error is in {sweep or '<sweep dir>'}/<job>/error.txt")


def run_cli(main: Callable[[], Any]) -> Any:
    """Run a ``@hydra.main`` entry point so that an error Hydra raises before the task starts (an unknown
    key ``foo=1``, an unknown option ``data=imagenet``, an override it cannot parse) is one line
    ``error: ...`` and exit status 2, like every other user error, instead of Hydra's multi-line report.

    Hydra's own reporting is switched off for the call (``HYDRA_FULL_ERROR=1``), so its exceptions reach
    here; an exception raised once the task has started is the task's (:func:`user_errors` already handled
    the user errors among them) and propagates with its traceback.
    """
    import os

    global _task_started
    _task_started = False
    saved = os.environ.get("HYDRA_FULL_ERROR")
    os.environ["HYDRA_FULL_ERROR"] = "1"
    try:
        return main()
    except Exception as err:
        spec = getattr(sys.modules.get("__main__"), "__spec__", None)
        user = None if _task_started else hydra_error(err, getattr(spec, "name", "") or "")
        user = user or failed_sweep_error(err)
        if user is None:
            raise
        print(f"error: {one_line(str(user))}", file=sys.stderr, flush=True)
        sys.exit(FevaeError.exit_code)
    finally:
        if saved is None:
            os.environ.pop("HYDRA_FULL_ERROR", None)
        else:
            os.environ["HYDRA_FULL_ERROR"] = saved


def one_line(text: str) -> str:
    """``text`` with its line breaks folded into spaces (an error is one line)."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


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


def override_key(override: str) -> str:
    """The dotted config key a command-line override sets: ``+data.ood_sets.mine.path=X`` ->
    ``data.ood_sets.mine.path``; ``trainer@x=ddp`` -> ``trainer``; ``hydra/launcher=joblib`` -> ``hydra.launcher``."""
    return override.lstrip("+~").partition("=")[0].split("@")[0].replace("/", ".")


def task_overrides(exclude: tuple[str, ...] = ()) -> list[str]:
    """The command line's ``key=value`` overrides of the current Hydra job, less the keys in ``exclude``.

    ``evaluate`` and ``score`` apply them on top of a finished run's stored config.
    """
    from hydra.core.hydra_config import HydraConfig

    return [o for o in HydraConfig.get().overrides.task if override_key(o) not in exclude]


def is_rank_zero() -> bool:
    """True in the process that writes a run's files (rank 0 under DDP; always outside DDP)."""
    from lightning.fabric.utilities.rank_zero import rank_zero_only

    return getattr(rank_zero_only, "rank", 0) == 0


def in_multirun() -> bool:
    """True inside a job of a Hydra multirun (``-m``) sweep."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    return HydraConfig.initialized() and HydraConfig.get().mode == RunMode.MULTIRUN
