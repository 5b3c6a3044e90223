"""``Forecaster``: the one LightningModule that trains and evaluates any model of the zoo."""

from __future__ import annotations

import warnings

import lightning as L
import numpy as np
import torch
from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler
from torch import nn

from stm3_lightning.config.schema import MetricsConfig, OptimConfig
from stm3_lightning.metrics.forecasting import ForecastMetrics, valid_mask
from stm3_lightning.models.global_batch import GlobalBatch, use_global_batch

# Epoch-level metrics come from torchmetrics states already summed over processes, so Lightning's advice to
# pass sync_dist=True (which would average identical values again) does not apply.
warnings.filterwarnings("ignore", message=r".*sync_dist=True.*when logging on epoch level.*")


class Forecaster(L.LightningModule):
    """Wraps ``model(x) -> (pred, aux)`` with the release's objective and the configured metrics.

    - Loss: L1 between prediction and truth in *metric units*: original units when ``real_value`` (the
      prediction is inverse-scaled), z-scored units otherwise. Under ``metrics.protocol=masked`` missing
      entries (``null_val``) are excluded from the loss too.
    - Auxiliary losses returned by the model are added to the training objective and logged one by one
      (``train/aux/<name>``); ``train/loss`` is the prediction loss alone, as the release logs it, per step, and
      ``train/loss_epoch`` its mean over the epoch.
    - ``val/loss`` (early stopping, checkpoint selection) is the validation MAE; test metrics are never used
      for selection.

    - Under DDP every step runs inside :func:`~stm3_lightning.models.global_batch.use_global_batch`, which tells
      the model where its samples sit in the global batch, so batch-coupled losses and random draws are those of
      one process running the global batch.

    Shapes: ``x: [B, L, N, C]``, ``y: [B, H, N, 1]`` in original units; ``mean, std: [N]`` (replaced in
    :meth:`setup` by the datamodule's scaler when the module runs in a Trainer with a datamodule).
    """

    def __init__(
        self,
        model: nn.Module,
        optim: OptimConfig,
        metrics: MetricsConfig,
        horizon: int,
        mean: torch.Tensor,
        std: torch.Tensor,
        real_value: bool = True,
        null_val: float = 0.0,
    ) -> None:
        super().__init__()
        self.model = model
        self.optim_cfg, self.metrics_cfg = optim, metrics
        self.real_value, self.null_val = real_value, float(null_val)
        self.register_buffer("mean", mean.float().clone())
        self.register_buffer("std", std.float().clone())
        self.horizon = horizon
        self.val_metrics = self.new_metrics()
        self.test_metrics = self.new_metrics()
        self.test_outputs: list[tuple[np.ndarray, np.ndarray]] = []
        self.test_results: dict[str, object] = {}

    def setup(self, stage: str) -> None:
        """Take the scaler the datamodule fitted on its training rows (``mean, std: [N]``) once it is set up."""
        scaler = getattr(self.trainer.datamodule, "scaler", None)
        if scaler is not None:
            mean, std = scaler.tensors()
            self.mean.copy_(mean)
            self.std.copy_(std)

    def new_metrics(self) -> ForecastMetrics:
        """A fresh metric accumulator with this module's protocol, horizon and report horizons."""
        cfg = self.metrics_cfg
        return ForecastMetrics(
            horizon=self.horizon,
            protocol=cfg.protocol,
            null_val=self.null_val,
            mape_eps=cfg.mape_eps,
            horizons=list(cfg.horizons),
        )

    # ----------------------------------------------------------------------------------------------- units
    def _scale(self, t: torch.Tensor) -> torch.Tensor:
        """``t: [B, H, N, C]`` original units -> z-scored."""
        return (t - self.mean[:, None]) / self.std[:, None]

    def _unscale(self, t: torch.Tensor) -> torch.Tensor:
        """``t: [B, H, N, C]`` z-scored -> original units."""
        return t * self.std[:, None] + self.mean[:, None]

    def predict_units(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Model prediction in metric units: ``x: [B, L, N, C]`` -> ``[B, H, N, C_out]`` and the aux losses."""
        pred, aux = self.model(x)
        return (self._unscale(pred) if self.real_value else pred), aux

    def target_units(self, y: torch.Tensor) -> torch.Tensor:
        """``y: [B, H, N, 1]`` original units -> metric units (missing entries keep ``null_val``)."""
        if self.real_value:
            return y
        return torch.where(valid_mask(y, self.null_val), self._scale(y), y)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x: [B, L, N, C]`` -> prediction in metric units ``[B, H, N, C_out]``."""
        return self.predict_units(x)[0]

    def prediction_loss(self, pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean absolute error, masked under the ``masked`` protocol."""
        if self.metrics_cfg.protocol == "masked":
            mask = valid_mask(target, self.null_val)
            err = torch.where(mask, pred - target, torch.zeros_like(pred)).abs()
            return err.sum() / mask.sum().clamp_min(1)
        return (pred - target).abs().mean()

    # ------------------------------------------------------------------------------------- global batch
    def global_batch(self, local_size: int, batch_idx: int, stage: str) -> GlobalBatch | None:
        """The global batch this step's ``local_size`` samples belong to under DDP (``None`` for one process).

        Training: every process holds ``local_size`` samples of a global batch of ``world * local_size``, dealt
        strided by the training sampler. Evaluation: global batch ``batch_idx`` of the strided
        ``UnrepeatedDistributedSampler`` (``None`` for any other sampler, whose layout is unknown).
        """
        trainer = self._trainer
        if trainer is None or trainer.world_size == 1:
            return None
        world, rank = trainer.world_size, trainer.global_rank
        if stage == "train":
            return GlobalBatch(world * local_size, world, rank, collective=True)
        loaders = trainer.val_dataloaders if stage == "val" else trainer.test_dataloaders
        loader = loaders[0] if isinstance(loaders, list | tuple) else loaders
        if not isinstance(getattr(loader, "sampler", None), UnrepeatedDistributedSampler):
            return None
        step = world * loader.batch_size
        return GlobalBatch(min(step, len(loader.dataset) - batch_idx * step), world, rank, collective=False)

    # ------------------------------------------------------------------------------------------- training
    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        x, y = batch
        with use_global_batch(self.global_batch(x.shape[0], batch_idx, "train")):
            pred, aux = self.predict_units(x)
        loss = self.prediction_loss(pred, self.target_units(y))
        total = loss + sum(aux.values()) if aux else loss
        bs = x.shape[0]
        self.log("train/loss", loss, prog_bar=True, batch_size=bs)
        # The epoch mean too (over all processes): Lightning's own ``_epoch`` suffix, ``train/loss`` unchanged.
        self.log("train/loss_epoch", loss, on_step=False, on_epoch=True, sync_dist=True, batch_size=bs)
        for name, value in aux.items():
            self.log(f"train/aux/{name}", value, batch_size=bs)
        if aux:
            self.log("train/total_loss", total, batch_size=bs)
        return total

    def _eval_step(
        self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int, stage: str, metrics: ForecastMetrics
    ) -> torch.Tensor:
        x, y = batch
        with use_global_batch(self.global_batch(x.shape[0], batch_idx, stage)):
            pred = self(x)
        target = self.target_units(y)
        metrics.update(pred, target)
        return pred

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        self._eval_step(batch, batch_idx, "val", self.val_metrics)

    def on_validation_epoch_end(self) -> None:
        values = self.val_metrics.compute()
        self.log("val/loss", values["mae"], prog_bar=True, sync_dist=False)
        self.log_dict({f"val/{k}": v for k, v in values.items()}, sync_dist=False)
        self.val_metrics.reset()

    def on_test_epoch_start(self) -> None:
        self.test_outputs = []

    def test_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        pred = self._eval_step(batch, batch_idx, "test", self.test_metrics)
        if self.metrics_cfg.save_predictions:
            target = self.target_units(batch[1])
            self.test_outputs.append((pred.detach().cpu().numpy(), target.detach().cpu().numpy()))

    def on_test_epoch_end(self) -> None:
        values = self.test_metrics.compute()
        per_step = self.test_metrics.per_step()
        scored = self.test_metrics.scored_windows()
        self.log_dict({f"test/{k}": v for k, v in values.items()}, sync_dist=False)
        self.test_results = {
            "protocol": self.metrics_cfg.protocol,
            "units": "original" if self.real_value else "z-scored",
            "overall": {k: values[k] for k in ("mae", "rmse", "mape", "wape")},
            "horizons": {k: v for k, v in values.items() if "@" in k},
            "per_step": per_step,
            "scored_windows": scored,
        }
        self.test_metrics.reset()

    def configure_optimizers(self) -> dict[str, object]:
        cfg = self.optim_cfg
        opt = torch.optim.AdamW(
            self.parameters(), lr=cfg.lr, eps=cfg.eps, weight_decay=cfg.weight_decay, amsgrad=False
        )
        sched = torch.optim.lr_scheduler.MultiStepLR(opt, milestones=list(cfg.milestones), gamma=cfg.gamma)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "epoch"}}
