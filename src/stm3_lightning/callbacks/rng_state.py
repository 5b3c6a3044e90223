"""Save the global RNG streams in checkpoints and restore them on resume (dropout, router noise)."""

from __future__ import annotations

from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


def capture_rng() -> dict[str, Any]:
    """The torch CPU RNG state and, when CUDA is in use, every device's state."""
    cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() and torch.cuda.is_initialized() else []
    return {"torch": torch.get_rng_state(), "cuda": list(cuda)}


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng`; CUDA states are restored only onto the same number of devices."""
    torch.set_rng_state(state["torch"])
    cuda = state.get("cuda") or []
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)


class RngState(Callback):
    """Puts the RNG state of the moment a checkpoint is written into it, and restores it when training resumes.

    The data order is handled by :mod:`stm3_lightning.data.resumable`; this covers random layers, so a resumed
    run draws the same dropout masks and noise as an uninterrupted one. The state is applied at
    ``on_train_start``, i.e. after the sanity check and right before the first resumed batch.

    Multi-process runs: Lightning's DDP set-up re-seeds every process (``reset_seed``) after the model was built,
    which a single process never does. The state of the moment this callback is created (after the model's
    initialisation) is put back in ``setup`` when there is more than one process, so DDP draws the same numbers
    as one process would (:mod:`stm3_lightning.models.global_batch`).
    """

    def __init__(self) -> None:
        self._pending: dict[str, Any] | None = None
        self._launch = capture_rng()

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if trainer.world_size > 1:
            restore_rng(self._launch)

    def state_dict(self) -> dict[str, Any]:
        return capture_rng()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._pending = dict(state_dict)

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._pending is not None:
            restore_rng(self._pending)
            self._pending = None
