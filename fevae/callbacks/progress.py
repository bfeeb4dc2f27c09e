"""Progress that reads well in a log file: one line per epoch with its losses, and — where no progress
bar is shown (output not a terminal, or ``trainer.enable_progress_bar=false``) — a line at most every
``every_s`` seconds during training and scoring, plus each evaluation set's start and duration."""

from __future__ import annotations

import logging
import time
from typing import Any, Sequence

import lightning as L

from fevae.utils.log import duration

log = logging.getLogger("fevae.progress")


def _number(value: Any) -> float | None:
    try:
        return float(value)
    except (TypeError, ValueError):
        return None


def _total(value: Any) -> str:
    number = _number(value)
    return "?" if number is None or number == float("inf") else str(int(number))


class ProgressLog(L.Callback):
    """Log lines for a training (``name``: ``"vae"``, ``"jigsaw"``) or a scoring pass (``sets``: the
    names of the predict dataloaders, in order).

    Always: ``<name> epoch e/E: train/loss …, val/loss … (t s)`` at each training epoch's end.
    With ``plain=True`` also: ``<name> epoch e/E: batch b/B`` at most every ``every_s`` seconds,
    and during scoring ``scoring <set> (n batches) ...`` / ``scoring <set>: done in t`` per set
    with periodic ``batch b/B`` lines between them.
    """

    def __init__(self, name: str = "model", plain: bool = True, every_s: float = 30.0, sets: Sequence[str] = ()):
        self.name, self.plain, self.every_s, self.sets = name, plain, float(every_s), list(sets)
        self._epoch_start = self._last_line = 0.0
        self._set: int | None = None
        self._set_start = 0.0

    # ------------------------------------------------------------------ training
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = self._last_line = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.plain and self._due():
            log.info("%s epoch %d/%s: batch %d/%s", self.name, trainer.current_epoch + 1, _total(trainer.max_epochs),
                     batch_idx + 1, _total(trainer.num_training_batches))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        metrics = {k: _number(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
        shown = ", ".join(f"{k} {v:.4g}" for k, v in sorted(metrics.items(), key=lambda kv: (not kv[0].startswith("val/"), kv[0]))
                          if v is not None)
        log.info("%s epoch %d/%s: %s (%s)", self.name, trainer.current_epoch + 1, _total(trainer.max_epochs),
                 shown or "no metrics logged", duration(time.perf_counter() - self._epoch_start))

    # ------------------------------------------------------------------ scoring
    def on_predict_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int,
                               dataloader_idx: int = 0) -> None:
        if self.plain and dataloader_idx != self._set:
            self._finish_set()
            self._set, self._set_start = dataloader_idx, time.perf_counter()
            self._last_line = self._set_start
            log.info("scoring %s (%s batches) ...", self._set_name(dataloader_idx), self._batches(trainer, dataloader_idx))

    def on_predict_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int,
                             dataloader_idx: int = 0) -> None:
        if self.plain and self._due():
            log.info("scoring %s: batch %d/%s", self._set_name(dataloader_idx), batch_idx + 1, self._batches(trainer, dataloader_idx))

    def on_predict_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._finish_set()

    # ------------------------------------------------------------------ helpers
    def _due(self) -> bool:
        now = time.perf_counter()
        if now - self._last_line < self.every_s:
            return False
        self._last_line = now
        return True

    def _set_name(self, index: int) -> str:
        return self.sets[index] if index < len(self.sets) else f"set {index}"

    @staticmethod
    def _batches(trainer: L.Trainer, index: int) -> str:
        counts = trainer.num_predict_batches or []
        return _total(counts[index]) if index < len(counts) else "?"

    def _finish_set(self) -> None:
        if self._set is not None:
            log.info("scoring %s: done in %s", self._set_name(self._set), duration(time.perf_counter() - self._set_start))
            self._set = None
