"""Wall-clock accounting of the scoring stages (what each detector costs per image)."""

from __future__ import annotations

import time
from collections import defaultdict
from contextlib import contextmanager
from typing import Iterator

import torch


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
