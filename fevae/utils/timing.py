"""Wall-clock accounting: a run's stage times (``timings.json``) and the scoring stages (what each
detector costs per image)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator, Mapping

import torch


#: a ``timings.json`` key ``<stage>/<part>`` is a part of ``<stage>`` that ran alongside the others
#: (each model's training inside ``train_side_by_side``): shown, not added to the total
INSIDE = "/"


def total_seconds(timings: Mapping[str, float]) -> float:
    """A run's wall time from its ``timings.json``: the sum of its top-level stages (keys without ``/``)."""
    return float(sum(float(v) for k, v in timings.items() if INSIDE not in k))


class Stopwatch:
    """Sums wall time per key: ``with sw("APO/decode"): ...``. Waits for queued CUDA work at both
    ends of a section so asynchronous kernels are charged to the section that launched them."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)

    @staticmethod
    def _sync() -> None:
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            torch.cuda.synchronize()

    @contextmanager
    def __call__(self, key: str) -> Iterator[None]:
        self._sync()
        start = time.perf_counter()
        try:
            yield
        finally:
            self._sync()
            self.seconds[key] += time.perf_counter() - start


@contextmanager
def no_timing(key: str) -> Iterator[None]:
    """A :class:`Stopwatch` stand-in that measures nothing."""
    yield
