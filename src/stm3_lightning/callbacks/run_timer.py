"""Lightning's ``Timer`` that also records which part of a resumed run it has timed.

A run's training wall time is the Timer's elapsed time, carried across resumes in the checkpoints. A checkpoint
written without a Timer state (a run started before the Timer was added, or a foreign checkpoint) restarts the
clock at its step, and an old Timer state does not say where its clock started; either way the wall time is then
a lower bound. :attr:`RunTimer.timed_from_step` says so: ``0`` when the clock has run since the first step, the
global step where it started otherwise, ``None`` when a checkpoint's Timer state does not record it.
"""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Timer


class RunTimer(Timer):
    """``Timer`` plus :attr:`timed_from_step`; its state keeps the key ``Timer`` so older checkpoints restore it."""

    def __init__(self) -> None:
        super().__init__()
        self.timed_from_step: int | None = 0

    @property
    def state_key(self) -> str:
        return "Timer"

    def state_dict(self) -> dict[str, Any]:
        return {**super().state_dict(), "timed_from_step": self.timed_from_step}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        super().load_state_dict(state_dict)
        self.timed_from_step = state_dict.get("timed_from_step")

    def on_load_checkpoint(
        self, trainer: L.Trainer, pl_module: L.LightningModule, checkpoint: dict[str, Any]
    ) -> None:
        if self.state_key not in checkpoint.get("callbacks", {}):
            self.timed_from_step = int(checkpoint.get("global_step", 0))

    def coverage(self) -> str:
        """``full`` (every step timed), ``from step <k>`` or ``unknown`` (see the module docstring)."""
        if self.timed_from_step is None:
            return "unknown"
        return "full" if self.timed_from_step == 0 else f"from step {self.timed_from_step}"
