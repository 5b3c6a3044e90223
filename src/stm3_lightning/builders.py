"""Build the run's objects from a validated config: data, model, LightningModule, callbacks, trainer."""

from __future__ import annotations

from pathlib import Path

import lightning as L
from lightning.pytorch.callbacks import Callback, EarlyStopping, ModelCheckpoint, RichProgressBar, TQDMProgressBar
from omegaconf import DictConfig, OmegaConf

from stm3_lightning.callbacks.nan_guard import NanGuard
from stm3_lightning.data.datamodule import SpatioTemporalDataModule
from stm3_lightning.lit.forecaster import Forecaster
from stm3_lightning.models.registry import build_model


def build_datamodule(cfg: DictConfig) -> SpatioTemporalDataModule:
    dm = SpatioTemporalDataModule(cfg.data, cfg.paths.data_dir)
    dm.setup()
    return dm


def build_forecaster(cfg: DictConfig, dm: SpatioTemporalDataModule) -> Forecaster:
    mean, std = dm.scaler.tensors()
    return Forecaster(
        model=build_model(cfg.model, dm.info),
        optim=cfg.optim,
        metrics=cfg.metrics,
        horizon=cfg.data.horizon,
        mean=mean,
        std=std,
        real_value=cfg.data.real_value,
        null_val=cfg.data.null_val,
    )


def build_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    cb = cfg.callbacks
    out: list[Callback] = [
        ModelCheckpoint(
            dirpath=str(run_dir / "checkpoints"),
            filename="best-{epoch:03d}",
            monitor=cb.checkpoint.monitor,
            mode=cb.checkpoint.mode,
            save_top_k=cb.checkpoint.save_top_k,
            save_last=cb.checkpoint.save_last,
            auto_insert_metric_name=False,
        )
    ]
    if cb.checkpoint.every_n_train_steps > 0:
        out.append(
            ModelCheckpoint(
                dirpath=str(run_dir / "checkpoints"),
                every_n_train_steps=cb.checkpoint.every_n_train_steps,
                save_top_k=0,
                save_last=True,
            )
        )
    if cb.early_stopping.enabled:
        es = cb.early_stopping
        out.append(EarlyStopping(monitor=es.monitor, patience=es.patience, mode=es.mode))
    if cb.nan_guard:
        out.append(NanGuard())
    if cb.progress_bar == "rich":
        out.append(RichProgressBar())
    elif cb.progress_bar == "tqdm":
        out.append(TQDMProgressBar())
    out += build_analysis_callbacks(cfg, run_dir)
    return out


def build_analysis_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """Routing-smoothness / disentanglement instrumentation, when enabled."""
    out: list[Callback] = []
    if cfg.callbacks.routing.enabled:
        from stm3_lightning.callbacks.routing import RoutingSmoothnessCallback

        out.append(RoutingSmoothnessCallback(cfg.callbacks.routing, run_dir))
    if cfg.callbacks.disentanglement.enabled:
        from stm3_lightning.callbacks.disentanglement import ExpertDisentanglementCallback

        out.append(ExpertDisentanglementCallback(cfg.callbacks.disentanglement, run_dir))
    return out


def trainer_kwargs(cfg: DictConfig) -> dict:
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if kwargs.get("val_check_interval") is None:
        kwargs.pop("val_check_interval", None)
    if cfg.callbacks.progress_bar == "none":
        kwargs["enable_progress_bar"] = False
    return kwargs


def build_trainer(cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list[Callback]) -> L.Trainer:
    return L.Trainer(
        **trainer_kwargs(cfg),
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=callbacks,
        use_distributed_sampler=False,
    )
