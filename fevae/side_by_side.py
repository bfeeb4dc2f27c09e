"""The run's models trained side by side: one forked process per model, each on its own thread budget.

The VAE, the likelihood ratio's background VAE and the Jigsaw do not depend on one another until
scoring. On a CPU, one model's training does not use two cores well (the VAE's step takes 120 ms
on two threads, 144 ms on one, here), so training them in one process each, ``threads`` torch
threads apiece, finishes the set in about the time of the longest alone rather than the sum
(``make bench``'s training section measures it).

Each model's training depends only on its own config and its thread count: :func:`fevae.training.fit_model`
seeds the global RNGs before building the module, and the child is a fork of the process that
holds the data. So side by side gives the same weights, bit for bit, as training the models one
after another with the same ``training.threads`` (tested), but not the same as one after another on
*more* threads (float sums are ordered by thread).

Settings (``training`` in ``conf/train.yaml``):

- ``side_by_side``: ``auto`` (on where it helps: a one-device CPU trainer, at least two usable cores
  and two models to train), ``true`` or ``false``;
- ``threads``: torch threads per model, ``auto`` = the usable cores divided among the models trained
  at once (at least 1), or all cores when they are trained one after another.

A child writes what a sequential training writes (``checkpoints/<model>/``, TensorBoard, the
mixtures at the Jigsaw's end) and sends back only its timings and extra numbers; the parent then
loads each model's best checkpoint. A child's failure ends the others and is raised in the parent
as one :class:`~fevae.errors.FevaeError` naming the model; a ``SIGTERM``/``SIGINT`` to the parent
ends the children too (they stop at once; each model's ``last.ckpt`` of its last finished epoch
stays for ``resume=true``).
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
import traceback
from multiprocessing.connection import wait
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from threadpoolctl import threadpool_limits

from fevae.errors import FevaeError
from fevae.utils.parallel import die_with_parent, usable_cores

log = logging.getLogger(__name__)

#: values of ``training.side_by_side``
SIDE_BY_SIDE = ("auto", True, False)


@dataclass
class TrainJob:
    """One model to train: ``run()`` trains it (and returns extra numbers to report, e.g. the mixture
    fit's seconds); ``load()`` gives the trained module afterwards, in the process that scores."""

    name: str
    run: Callable[[], Mapping[str, float]]
    load: Callable[[], torch.nn.Module] | None = None
    #: what ``run()`` returned (filled by :func:`train_jobs`)
    extra: dict[str, float] = field(default_factory=dict)


def check_training_config(training: Any) -> None:
    """``training.side_by_side`` and ``training.threads`` are valid, else one :class:`FevaeError`."""
    training = training or {}
    value = training.get("side_by_side", "auto")
    if isinstance(value, str):
        value = value.lower()
    if value not in SIDE_BY_SIDE or (not isinstance(value, (bool, str))):
        raise FevaeError(f"training.side_by_side={training.get('side_by_side')!r} is invalid", "set training.side_by_side=auto, true or false")
    threads = training.get("threads", "auto")
    if threads != "auto" and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise FevaeError(f"training.threads={threads!r} is not a number of threads", "set training.threads=auto or an integer >= 1")


def _one_cpu_device(trainer: Any) -> bool:
    accelerator = str(trainer.get("accelerator", "auto")).lower()
    if accelerator == "auto":
        accelerator = "gpu" if torch.cuda.is_available() else "cpu"
    devices = trainer.get("devices", 1)
    strategy = str(trainer.get("strategy", "auto")).lower()
    one_device = devices in (1, "1") or (devices == "auto" and accelerator == "cpu")
    return accelerator == "cpu" and one_device and "ddp" not in strategy


def plan(training: Any, trainer: Any, n_models: int, cores: int | None = None) -> tuple[bool, int | None]:
    """``(side by side?, torch threads per model or None for torch's default)`` for ``n_models``
    models under ``training`` and ``trainer`` settings, on ``cores`` usable cores (this process's)."""
    check_training_config(training)
    training = training or {}
    cores = usable_cores() if cores is None else cores
    setting = training.get("side_by_side", "auto")
    setting = setting.lower() if isinstance(setting, str) else setting
    if setting == "auto":
        side = n_models >= 2 and cores >= 2 and _one_cpu_device(trainer)
    else:
        side = bool(setting) and n_models >= 2
    threads = training.get("threads", "auto")
    if threads == "auto":
        threads = max(1, cores // n_models) if side else None
    return side, threads


def _child(job: TrainJob, threads: int | None, conn: Any, parent: int) -> None:
    """A forked child: train ``job`` on ``threads`` threads, send ``("ok", extra)`` or ``("error", text)``.
    It ends with its parent, however the parent ended (``SIGKILL`` included)."""
    for s in (signal.SIGTERM, signal.SIGINT):  # the parent's handlers raise into the parent's stack: end plainly here
        signal.signal(s, signal.SIG_DFL)
    die_with_parent(parent)
    code = 0
    try:
        if threads is not None:
            torch.set_num_threads(threads)
        # libgomp is not fork-safe: once the parent has run an OpenMP region (sklearn's KMeans, inside a mixture
        # fit), a child's next multi-threaded region waits forever for the parent's pool threads, which fork did
        # not copy. sklearn's OpenMP regions here run on one thread (torch passes its own thread count per region).
        threadpool_limits(1, user_api="openmp")
        conn.send(("ok", dict(job.run() or {})))
    except BaseException as err:  # noqa: BLE001 - every failure goes back to the parent as text
        text = str(err).splitlines()[0] if str(err) else type(err).__name__
        if isinstance(err, FevaeError):
            text = str(err)
        log.debug("%s training failed in its process:\n%s", job.name, traceback.format_exc())
        try:
            conn.send(("error", f"{type(err).__name__}: {text}" if not isinstance(err, FevaeError) else text))
        except Exception:
            pass
        code = 1
    finally:
        conn.close()
        logging.shutdown()
        os._exit(code)


def train_jobs(jobs: Sequence[TrainJob], side_by_side: bool, threads: int | None) -> None:
    """Run every job's ``run()``: in this process one after another (on ``threads`` threads, restored
    afterwards), or each in a forked child at once. Fills each job's ``extra``."""
    if not side_by_side:
        before = torch.get_num_threads()
        try:
            if threads is not None:
                torch.set_num_threads(threads)
            for job in jobs:
                job.extra = dict(job.run() or {})
        finally:
            torch.set_num_threads(before)
        return
    ctx = multiprocessing.get_context("fork")  # the children share the data already in memory
    running: list[tuple[TrainJob, Any, Any]] = []
    try:
        for job in jobs:
            receive, send = ctx.Pipe(duplex=False)
            process = ctx.Process(target=_child, args=(job, threads, send, os.getpid()), name=f"fevae-train-{job.name}")
            process.start()
            send.close()
            running.append((job, process, receive))
        failures = []
        waiting = {receive: (job, process) for job, process, receive in running}
        while waiting and not failures:  # whichever finishes first; a failure ends the others at once
            for receive in wait(list(waiting)):
                job, process = waiting.pop(receive)
                try:
                    status, payload = receive.recv()
                except EOFError:  # the child died without a word (killed, out of memory)
                    status, payload = "error", None
                process.join()
                if status == "ok":
                    job.extra = payload
                else:
                    failures.append((job.name, payload or f"its process ended with exit status {process.exitcode} before it finished"))
        if failures:
            name, text = failures[0]
            raise FevaeError(f"training the {name} model failed: {text}",
                             "see train.log for its messages; fix the cause and run again (resume=true continues the models that finished)")
    finally:
        _end(running)


def _end(running: Sequence[tuple[TrainJob, Any, Any]]) -> None:
    """Stop every child still running (``SIGTERM``, then ``SIGKILL`` after 10 s) and reap it."""
    for _, process, _ in running:
        if process.is_alive():
            process.terminate()
    for _, process, _ in running:
        process.join(timeout=10)
        if process.is_alive():
            process.kill()
            process.join()
