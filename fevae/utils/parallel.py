"""How many CPU cores this process may use (its affinity mask where the OS has one)."""

from __future__ import annotations

import os


def usable_cores() -> int:
    """The cores this process may run on: ``os.sched_getaffinity`` where available, else ``os.cpu_count()``."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1
