"""Worker processes: how many CPU cores this process may use, and pools whose workers never outlive it.

Every joblib pool fevae starts (the mixture fits, the figure worker) passes :func:`pool_args`: each
worker runs :func:`die_with_parent` first, a watchdog that ends the worker as soon as the process
that started it is gone, whatever ended that process (``SIGKILL`` included, where no clean-up of the
parent runs). Without it loky's idle workers live on for ``idle_worker_timeout`` (300 s), holding
the parent's stdout open, so whoever reads that pipe (``fevae.train_run``) waits for them.
On every exit of an entry point that Python sees (an error, ``SIGTERM``/``SIGINT``),
:func:`shutdown_worker_pools` ends the workers at once (:mod:`fevae.utils.signals`).
"""

from __future__ import annotations

import os
import threading
import time
from typing import Any

#: how often a worker checks that its parent is alive (seconds)
PARENT_CHECK_S = 0.5


def usable_cores() -> int:
    """The cores this process may run on: ``os.sched_getaffinity`` where available, else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def _watch_parent(parent_pid: int) -> None:
    while True:
        if os.getppid() != parent_pid:  # re-parented: the process that started this worker is gone
            os._exit(1)
        time.sleep(PARENT_CHECK_S)


def die_with_parent(parent_pid: int) -> None:
    """A pool worker's initializer: end this process when ``parent_pid`` (the pool's owner) is gone.

    A daemon thread compares ``os.getppid()`` with ``parent_pid`` every :data:`PARENT_CHECK_S`
    seconds (which also catches a parent that died before this ran) and leaves with ``os._exit``.
    Linux's ``prctl(PR_SET_PDEATHSIG)`` is not used: it fires when the *thread* that started the
    worker ends, and a reusable loky pool outlives the thread that first submitted to it.
    """
    if os.getppid() != parent_pid:
        os._exit(1)
    threading.Thread(target=_watch_parent, args=(parent_pid,), name="fevae-parent-watch", daemon=True).start()


def die_with_launcher() -> None:
    """In a DDP rank other than 0 (``LOCAL_RANK`` > 0: started from rank 0 by Lightning's launcher, or by torchrun's
    agent), :func:`die_with_parent` on the process that started it: a rank whose launcher was killed (``SIGKILL``:
    no clean-up there) would otherwise wait in its next collective call until gloo's/NCCL's timeout (30 min)."""
    if os.environ.get("LOCAL_RANK", "0") not in ("", "0"):
        die_with_parent(os.getppid())


def pool_args() -> dict[str, Any]:
    """``joblib.Parallel`` keyword arguments that make its process workers die with this process
    (:func:`die_with_parent`); ignored by the thread and sequential backends. The same arguments on
    every call, so joblib keeps reusing one loky pool."""
    return {"initializer": die_with_parent, "initargs": (os.getpid(),)}


def shutdown_worker_pools() -> None:
    """End joblib's reusable loky pool of this process now, killing its workers (running tasks included)."""
    try:
        from joblib.externals.loky import reusable_executor
    except ImportError:  # pragma: no cover - joblib always ships loky
        return
    executor = getattr(reusable_executor, "_executor", None)
    if executor is not None:
        try:
            executor.shutdown(wait=True, kill_workers=True)
        except Exception:  # a pool already broken by a dead worker: nothing left to end
            pass
