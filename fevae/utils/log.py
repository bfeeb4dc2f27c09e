"""What a run tells its log (``<run>/train.log`` and the console): the composed config at the start,
each long stage's start and duration, and — from :class:`fevae.callbacks.progress.ProgressLog` —
each epoch's losses and periodic progress lines where no terminal shows a progress bar.

Lightning's own loggers (``lightning``, ``lightning.pytorch``, ``lightning.fabric``) keep private console handlers
and do not propagate when they are imported before logging is configured; ``conf/hydra/default.yaml``
routes them to Hydra's handlers, and :func:`route_lightning_logs` does the same outside Hydra.
"""

from __future__ import annotations

import logging
import sys
import time
import warnings
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator, MutableMapping

from omegaconf import DictConfig, OmegaConf
from fevae.utils.io import write_bytes_atomic

log = logging.getLogger("fevae")

#: the loggers Lightning configures for itself on import
LIGHTNING_LOGGERS = ("lightning", "lightning.pytorch", "lightning.fabric")
#: the file the config tree is saved to, in the run folder
CONFIG_TREE_FILE = "config_tree.log"


@contextmanager
def lightning_quiet() -> Iterator[None]:
    """Lightning's per-Trainer notices ("Seed set to", "GPU available", tips) and its warning that the scorer's
    ``predict_step`` returns nothing, hidden while the block runs: noise for a library call (:mod:`fevae.api`) or a
    command that prints a table (``python -m fevae.recommend``). Its warnings and errors still show."""
    loggers = [logging.getLogger(name) for name in LIGHTNING_LOGGERS[1:]]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.WARNING)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r".*predict returned None.*")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def route_lightning_logs() -> None:
    """Send Lightning's messages through the root logger's handlers (the run's log file included), and keep the
    log to rank 0's lines under DDP (:class:`RankFilter`)."""
    for name in LIGHTNING_LOGGERS:
        logger = logging.getLogger(name)
        for handler in list(logger.handlers):
            logger.removeHandler(handler)
        logger.propagate = True
    logging.captureWarnings(True)  # Python warnings (Lightning's hints among them) reach the log file too
    for handler in logging.getLogger().handlers:
        if not any(isinstance(f, RankFilter) for f in handler.filters):
            handler.addFilter(RankFilter())


class RankFilter(logging.Filter):
    """Under DDP every rank runs the whole command and writes to the same log file. Rank 0 (and a process outside
    DDP) logs as usual; any other rank only its warnings and errors, each tagged ``[rank N]``, so ``train.log``
    holds each message once and says which process a warning came from (lightning-hydra-template's
    ``RankedLogger`` does the same per logger; this is one filter on the run's handlers)."""

    def __init__(self, rank: int | None = None):
        super().__init__()
        if rank is None:
            from lightning.fabric.utilities.rank_zero import rank_zero_only

            rank = getattr(rank_zero_only, "rank", 0)
        self.rank = int(rank)

    def filter(self, record: logging.LogRecord) -> bool:
        if self.rank == 0:
            return True
        if record.levelno < logging.WARNING:
            return False
        if not getattr(record, "rank_tagged", False):
            record.msg, record.rank_tagged = f"[rank {self.rank}] {record.msg}", True
        return True


def interactive() -> bool:
    """True when a person watches the output (a terminal), so a redrawn progress bar is readable."""
    stream = sys.stderr
    return bool(getattr(stream, "isatty", lambda: False)())


def duration(seconds: float) -> str:
    """``"12.3 s"``, ``"4 min 05 s"``."""
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(int(round(seconds)), 60)
    return f"{minutes} min {secs:02d} s"


#: the stages running now, outermost first (what an interrupted run names: fevae.utils.signals)
_running: list[str] = []


def running_stages() -> list[str]:
    """The names of the :func:`stage` blocks running now, outermost first."""
    return list(_running)


@contextmanager
def stage(name: str, timings: MutableMapping[str, float] | None = None, key: str | None = None,
          logger: logging.Logger = log) -> Iterator[None]:
    """Log ``name …`` at the start and ``name: done in <duration>`` at the end (``failed after`` on an
    exception); add the seconds to ``timings[key]`` when given."""
    start = time.perf_counter()
    ok = False
    _running.append(name)
    try:
        logger.info("%s ...", name)
        yield
        ok = True
    finally:
        _running.remove(name)
        seconds = time.perf_counter() - start
        if timings is not None and key is not None:
            timings[key] = timings.get(key, 0.0) + seconds
        logger.info("%s: %s %s", name, "done in" if ok else "failed after", duration(seconds))


def config_tree(cfg: DictConfig, skip: tuple[str, ...] = ("hydra",)) -> str:
    """The composed config as a text tree: one branch per top-level key, its YAML below (values resolved
    where they resolve, e.g. the data folder; as written otherwise)."""
    plain = OmegaConf.masked_copy(cfg, [k for k in cfg if k not in skip])
    try:
        container = OmegaConf.to_container(plain, resolve=True)
    except Exception:  # an interpolation that needs a running Hydra app (e.g. ${hydra:...}) or a missing value
        container = OmegaConf.to_container(plain, resolve=False)
    keys = [k for k in container if k not in skip]
    lines = ["config"]
    for i, key in enumerate(keys):
        last = i == len(keys) - 1
        value = container[key]
        if isinstance(value, (dict, list)) and value:
            lines.append(("└── " if last else "├── ") + str(key))
            body = OmegaConf.to_yaml(OmegaConf.create(value)).rstrip("\n").splitlines()
            lines += [("    " if last else "│   ") + line for line in body]
        else:
            lines.append(("└── " if last else "├── ") + f"{key}: {OmegaConf.to_yaml(OmegaConf.create({'v': value})).split(':', 1)[1].strip()}")
    return "\n".join(lines)


def log_config(cfg: DictConfig, run_dir: Path | None = None, logger: logging.Logger = log) -> str:
    """Log the config tree (console and the run's log file) and save it as ``<run_dir>/config_tree.log``."""
    text = config_tree(cfg)
    logger.info("composed config (also in .hydra/config.yaml):\n%s", text)
    if run_dir is not None:

        write_bytes_atomic(Path(run_dir) / CONFIG_TREE_FILE, (text + "\n").encode())
    return text
