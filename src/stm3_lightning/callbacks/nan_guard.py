"""Stop training at the first non-finite loss, gradient or weight, before any checkpoint stores the damage."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback, Checkpoint


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss, gradient or weight."""


def first_nonfinite(named: Iterable[tuple[str, torch.Tensor | None]]) -> str | None:
    """Name of the first tensor holding a NaN/inf (``None`` entries are skipped), or ``None``; one device sync."""
    items = [(name, t) for name, t in named if t is not None]
    if not items:
        return None
    finite = torch.stack([torch.isfinite(t).all() for _, t in items])
    if bool(finite.all()):
        return None
    return items[int((~finite).nonzero()[0, 0])][0]


def last_good_checkpoint(trainer: L.Trainer) -> Path | None:
    """The most recently written checkpoint of the run (all were saved before the failure), or ``None``."""
    paths = {
        Path(p)
        for cb in trainer.callbacks
        if isinstance(cb, Checkpoint)
        for p in (getattr(cb, "last_model_path", ""), getattr(cb, "best_model_path", ""))
        if p
    }
    existing = [p for p in paths if p.is_file()]
    return max(existing, key=lambda p: p.stat().st_mtime_ns) if existing else None


class NanGuard(Callback):
    """Raises :class:`NonFiniteError` naming the step, the epoch, what became non-finite and the last good checkpoint.

    Checks run before ``backward`` (loss), before the optimizer step (gradients) and after it (weights, before
    the checkpoint callbacks of that step run), so every checkpoint on disk holds finite weights.
    """

    def _fail(self, trainer: L.Trainer, step: int, what: str, fix: str) -> None:
        ckpt = last_good_checkpoint(trainer)
        kept = (
            f"the last good checkpoint is {ckpt}, continue from it with resume=<run dir> once fixed"
            if ckpt
            else "no checkpoint had been written yet"
        )
        raise NonFiniteError(
            f"Training stopped at step {step} (epoch {trainer.current_epoch}) because {what}; {kept} ({fix})."
        )

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        if not bool(torch.isfinite(loss.detach()).all()):
            value = loss.detach().float().flatten()[0].item()
            self._fail(
                trainer,
                trainer.global_step,
                f"the training loss became {value}",
                "lower optim.lr, set trainer.gradient_clip_val, or check the data for extreme values",
            )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        name = first_nonfinite((n, p.grad) for n, p in pl_module.named_parameters())
        if name is not None:
            self._fail(
                trainer,
                trainer.global_step,
                f"the gradient of '{name}' became non-finite",
                "lower optim.lr or set trainer.gradient_clip_val",
            )

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        name = first_nonfinite(pl_module.named_parameters())
        if name is not None:
            self._fail(
                trainer,
                trainer.global_step - 1,
                f"the weight '{name}' became non-finite in that step's optimizer update",
                "lower optim.lr",
            )
