"""Stop training at the first non-finite loss or gradient, before the optimizer step corrupts the weights."""

from __future__ import annotations

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback


class NonFiniteError(RuntimeError):
    """Training produced a NaN/inf loss or gradient."""


class NanGuard(Callback):
    """Raises :class:`NonFiniteError` naming the global step and the first offending tensor.

    The check runs before ``backward`` (loss) and before the optimizer step (gradients), so the weights and every
    checkpoint written so far stay those of the last good step.
    """

    def on_before_backward(self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor) -> None:
        if not torch.isfinite(loss).all():
            raise NonFiniteError(
                f"The training loss became {loss.item()} at step {trainer.global_step} (epoch {trainer.current_epoch}); "
                "lower optim.lr, check the data for extreme values, or resume from the last good checkpoint."
            )

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: torch.optim.Optimizer
    ) -> None:
        for name, param in pl_module.named_parameters():
            if param.grad is not None and not torch.isfinite(param.grad).all():
                raise NonFiniteError(
                    f"The gradient of '{name}' became non-finite at step {trainer.global_step} "
                    f"(epoch {trainer.current_epoch}); lower optim.lr or set trainer.gradient_clip_val."
                )
