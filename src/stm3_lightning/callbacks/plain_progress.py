"""``PlainProgress``: training progress as one plain line every N steps, for logs that are not a terminal.

Rich and tqdm bars redraw one line with control characters; in a SLURM log, a pipe or CI they show nothing useful
until the end. This bar prints, on the global-zero process only, lines such as::

    epoch 1/100  step 50/164  train/loss=23.41  1.9 it/s  eta 0:01:02
    epoch 1/100  validation  val/loss=21.07  val/mae=21.07  val/rmse=33.12  (12.4 s)
"""

from __future__ import annotations

import math
import sys
import time
from datetime import timedelta
from typing import Any, TextIO

import lightning as L
from lightning.pytorch.callbacks.progress.progress_bar import ProgressBar

# Validation metrics shown on the validation line (whichever are logged).
VALIDATION_KEYS: tuple[str, ...] = ("val/loss", "val/mae", "val/rmse", "val/mape")


def format_metric(key: str, value: object) -> str:
    """``key=value`` with 4 significant digits for numbers."""
    number = float(value) if hasattr(value, "__float__") else None
    return f"{key}={number:.4g}" if number is not None else f"{key}={value}"


def format_eta(seconds: float) -> str:
    """``0:01:02`` (whole seconds), or ``?`` when unknown."""
    return str(timedelta(seconds=round(seconds))) if math.isfinite(seconds) else "?"


class PlainProgress(ProgressBar):
    """One line every ``every_n_steps`` training steps (and at the last step of an epoch), one per validation."""

    def __init__(self, every_n_steps: int = 50, stream: TextIO | None = None) -> None:
        super().__init__()
        if every_n_steps < 1:
            raise ValueError(f"callbacks.progress_every_n_steps must be >= 1, got {every_n_steps}.")
        self.every_n_steps = every_n_steps
        self.stream = stream
        self._enabled = True
        self._epoch_start: float | None = None
        self._first_done = 0
        self._val_start = 0.0

    def disable(self) -> None:
        self._enabled = False

    def enable(self) -> None:
        self._enabled = True

    def _write(self, line: str) -> None:
        if self._enabled:
            print(line, file=self.stream or sys.stdout, flush=True)

    def _epoch(self, trainer: L.Trainer) -> str:
        total = f"/{trainer.max_epochs}" if trainer.max_epochs and trainer.max_epochs > 0 else ""
        return f"epoch {trainer.current_epoch + 1}{total}"

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = None

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ) -> None:
        """Start the clock at the first step this process runs in the epoch: a resumed run skips
        ``on_train_epoch_start`` (Lightning restarts on the epoch's end) and may begin mid-epoch."""
        if self._epoch_start is None:
            self._epoch_start, self._first_done = time.perf_counter(), batch_idx

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        done = batch_idx + 1
        total = self.total_train_batches
        last = isinstance(total, int) and done == total
        if done % self.every_n_steps and not last:
            return
        elapsed = time.perf_counter() - (self._epoch_start or time.perf_counter())
        rate = (done - self._first_done) / elapsed if elapsed > 0 else float("nan")
        left = (total - done) / rate if isinstance(total, int) and rate > 0 else float("nan")
        of = f"/{total}" if isinstance(total, int) else ""
        metrics = self.get_metrics(trainer, pl_module)
        shown = [format_metric(k, v) for k, v in metrics.items() if k.startswith("train/")]
        self._write(
            f"{self._epoch(trainer)}  step {done}{of}  {'  '.join(shown)}  {rate:.2g} it/s  eta {format_eta(left)}"
        )

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        metrics = trainer.callback_metrics
        shown = [format_metric(k, metrics[k]) for k in VALIDATION_KEYS if k in metrics]
        seconds = time.perf_counter() - self._val_start
        self._write(f"{self._epoch(trainer)}  validation  {'  '.join(shown)}  ({seconds:.1f} s)")
