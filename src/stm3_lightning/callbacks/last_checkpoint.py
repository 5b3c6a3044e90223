"""Keep ``last.ckpt`` current: the full training state a resume starts from."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Checkpoint


class LastCheckpoint(Checkpoint):
    """Writes ``path`` (atomically, through Lightning's checkpoint IO) at every epoch end, every
    ``every_n_train_steps`` optimizer steps (0 = never mid-epoch) and, in single-process runs, at the end of the
    batch during which the process received SIGTERM (cluster preemption, ``scancel``; Lightning then stops).

    Lightning's ``ModelCheckpoint(save_last=True)`` only refreshes ``last.ckpt`` when a best checkpoint is
    written, so after an epoch without improvement it would point back in time. Being a ``Checkpoint``, this
    callback runs after the other checkpoint, early-stopping and metric callbacks, so the state it saves already
    includes this epoch's best checkpoint and early-stopping counters.
    """

    def __init__(self, path: str | Path, every_n_train_steps: int = 0) -> None:
        self.path = Path(path)
        self.every_n_train_steps = every_n_train_steps
        self.last_model_path = ""
        self.sigterm_step: int | None = None

    def _save(self, trainer: L.Trainer) -> None:
        trainer.save_checkpoint(str(self.path), weights_only=False)
        self.last_model_path = str(self.path)

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if trainer.sanity_checking or trainer.fast_dev_run:
            return
        n = self.every_n_train_steps
        periodic = n > 0 and trainer.global_step % n == 0
        preempted = trainer.received_sigterm and trainer.world_size == 1 and self.sigterm_step is None
        if preempted:
            self.sigterm_step = trainer.global_step
        if periodic or preempted:
            self._save(trainer)

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.fast_dev_run:
            self._save(trainer)
