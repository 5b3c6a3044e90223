"""``callbacks.test_every_epoch``: the test split scored after every validation, logged as ``test_curve/*``.

The release evaluates the test split every epoch and keeps the checkpoint with the lowest *test* loss
(``best_test_model``) next to the validation-selected one. This callback records the same curve so that the two
can be compared on one run (``stm3 results``' protocol checks). It never influences training: checkpoints and
early stopping monitor ``val/loss``, and the pass runs under :func:`seeded_rng`, which restores the RNG, so a run
with the callback draws exactly the random numbers of a run without it.
"""

from __future__ import annotations

import lightning as L
from lightning.pytorch.callbacks import Callback

from stm3_lightning.lit.forecaster import Forecaster
from stm3_lightning.run.seeded_eval import evaluate_loader

PREFIX = "test_curve/"


class TestCurve(Callback):
    """Logs ``test_curve/<metric>`` (overall and at the report horizons) after each validation epoch.

    ``seed`` seeds the pass (the run's ``eval_seed``), ``limit`` is ``trainer.limit_test_batches``: at the
    best-validation epoch the logged values equal those of the final test of that checkpoint.
    """

    def __init__(self, seed: int, limit: int | float = 1.0) -> None:
        self.seed = seed
        self.limit = limit

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not isinstance(pl_module, Forecaster):
            return
        loader = trainer.datamodule.test_dataloader()
        scored = evaluate_loader(pl_module, loader, self.seed, self.limit)
        pl_module.log_dict({f"{PREFIX}{k}": v for k, v in scored.metrics.items()}, sync_dist=False)
