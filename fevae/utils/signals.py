"""``SIGTERM`` and ``SIGINT`` at the command line: stop, keep what can be resumed, say so in one line.

Every entry point (train, evaluate, score, the data doctor: :func:`fevae.utils.cli.user_errors`)
runs its task under :func:`exit_on_signal`. The first ``SIGTERM`` (what SLURM and most schedulers
send) or ``SIGINT`` (Ctrl-C) raises :class:`Interrupted` in the main thread, wherever it is, so the
task unwinds as from any error: Lightning's fit stops (its ``on_exception`` hooks run, checkpoints
are written atomically, so ``last.ckpt`` is the last finished epoch's), the run folder's lock is
released, file writes are atomic (nothing half-written), joblib's worker processes are killed
(:func:`fevae.utils.parallel.shutdown_worker_pools`). Then one line goes to stderr,

    error: interrupted by SIGTERM during <stage> — <how to continue>

(the stage: the outermost :func:`fevae.utils.log.stage` running when the signal came), and the
process exits with status 128 + the signal's number: 143 for ``SIGTERM``, 130 for ``SIGINT``, so a
scheduler records a failure, never a success. A second signal while unwinding ends the process at
once (same line, same status). Training keeps what a resume needs (``checkpoints/<model>/last.ckpt``
of each finished epoch, ``mixture*.npz`` once fitted): ``resume=true`` with the same settings
continues, and the line says so once the run folder is held (:func:`set_hint`).
"""

from __future__ import annotations

import functools
import os
import signal
import sys
import threading
from typing import Any, Callable

from fevae.utils.log import running_stages
from fevae.utils.parallel import shutdown_worker_pools

#: the signals turned into :class:`Interrupted`
SIGNALS = (signal.SIGTERM, signal.SIGINT)
#: the hint of an interrupted command that has no run folder to resume
RUN_AGAIN = "run the command again"


class Interrupted(BaseException):
    """Raised in the main thread by the first ``SIGTERM``/``SIGINT`` (a ``BaseException``, like
    ``KeyboardInterrupt``, so no ``except Exception`` swallows it)."""

    def __init__(self, signum: int, stage: str | None):
        self.signum = int(signum)
        self.stage = stage
        super().__init__(f"interrupted by {signal.Signals(signum).name}" + (f" during {stage}" if stage else ""))

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


_received: list[Interrupted] = []
_hint = [RUN_AGAIN]


def set_hint(text: str) -> None:
    """What the interrupted line tells the user to do (:func:`fevae.pipeline.folders.own_run_folder` sets the resume command)."""
    _hint[0] = text


def _current_stage() -> str | None:
    stages = running_stages()
    return stages[0] if stages else None


def message(err: Interrupted) -> str:
    return f"error: {err} — {_hint[0]}"


def _handler(signum: int, frame: Any) -> None:
    if _received:  # a second signal while unwinding from the first: stop now
        print(message(_received[0]), file=sys.stderr, flush=True)
        os._exit(128 + signum)
    err = Interrupted(signum, _current_stage())
    _received.append(err)
    raise err


def exit_on_signal(task: Callable[..., Any]) -> Callable[..., Any]:
    """Run ``task`` with ``SIGTERM``/``SIGINT`` turned into one ``error:`` line and exit status
    128 + signum (see the module doc); the previous handlers are back afterwards. Outside the main
    thread (where Python cannot set handlers) ``task`` runs as it is."""

    @functools.wraps(task)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        if threading.current_thread() is not threading.main_thread():
            return task(*args, **kwargs)
        previous = {s: signal.getsignal(s) for s in SIGNALS}
        _received.clear()
        _hint[0] = RUN_AGAIN
        for s in SIGNALS:
            signal.signal(s, _handler)
        try:
            return task(*args, **kwargs)
        except BaseException as err:
            if not _received:
                raise
            # interrupted: whatever the unwinding raised on its way (a DataLoader worker killed by the
            # same signal, Lightning's exit), the signal is the reason

            shutdown_worker_pools()
            print(message(_received[0]), file=sys.stderr, flush=True)
            if err is not _received[0]:
                import logging

                logging.getLogger("fevae").debug("while stopping on %s", _received[0], exc_info=err)
            sys.exit(_received[0].exit_code)
        finally:
            for s, handler in previous.items():
                if handler is not None:
                    signal.signal(s, handler)

    return wrapper
