"""Build the run's objects from a validated config: data, model, LightningModule, callbacks, trainer."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import TextIO

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    Callback,
    EarlyStopping,
    ModelCheckpoint,
    RichProgressBar,
    TQDMProgressBar,
)
from omegaconf import DictConfig, OmegaConf
from torch import nn

from stm3_lightning.callbacks.analysis import has_routing
from stm3_lightning.callbacks.last_checkpoint import LastCheckpoint
from stm3_lightning.callbacks.nan_guard import NanGuard
from stm3_lightning.callbacks.plain_progress import PlainProgress
from stm3_lightning.callbacks.rng_state import RngState
from stm3_lightning.callbacks.run_timer import RunTimer
from stm3_lightning.data.datamodule import SpatioTemporalDataModule
from stm3_lightning.data.resumable import ResumableDataModule
from stm3_lightning.lit.forecaster import Forecaster
from stm3_lightning.models.registry import build_model
from stm3_lightning.run.checkpoints import CheckpointMetadata, run_metadata
from stm3_lightning.types import DataInfo

log = logging.getLogger(__name__)


def build_datamodule(cfg: DictConfig) -> SpatioTemporalDataModule:
    """The data module, not set up (the Trainer runs ``prepare_data`` on rank 0 and ``setup`` on every rank);
    its training order is a function of ``cfg.seed`` and the epoch (resumable)."""
    return ResumableDataModule(cfg.data, cfg.paths.data_dir, cfg.seed)


def load_before_writing(dm: SpatioTemporalDataModule) -> None:
    """Prepare and set up ``dm`` in the launching process, so bad data fails in one sentence before the run folder
    is written; the Trainer's own ``prepare_data``/``setup`` calls then find the work done. DDP workers skip this:
    they set up inside the Trainer, after rank 0 has prepared the files."""
    dm.prepare_data()
    dm.setup("fit")


def build_forecaster(cfg: DictConfig, info: DataInfo) -> Forecaster:
    """The LightningModule for a model sized by ``info``; it takes the datamodule's scaler in ``setup``."""
    return Forecaster(
        model=build_model(cfg.model, info),
        optim=cfg.optim,
        metrics=cfg.metrics,
        horizon=cfg.data.horizon,
        mean=torch.zeros(info.num_nodes),
        std=torch.ones(info.num_nodes),
        real_value=cfg.data.real_value,
        null_val=cfg.data.null_val,
    )


def build_checkpoint_callbacks(cfg: DictConfig, run_dir: Path) -> list[Callback]:
    """``best-<epoch>.ckpt`` selected on validation (first, so ``trainer.checkpoint_callback`` is it) and
    ``last.ckpt``, rewritten at every epoch end, every ``callbacks.checkpoint.every_n_train_steps`` steps and on
    SIGTERM. Lightning writes checkpoints atomically (temporary file, then rename): a kill never leaves a
    partial one."""
    ck = cfg.callbacks.checkpoint
    folder = run_dir / "checkpoints"
    out: list[Callback] = [
        ModelCheckpoint(
            dirpath=str(folder),
            filename="best-{epoch:03d}",
            monitor=ck.monitor,
            mode=ck.mode,
            save_top_k=ck.save_top_k,
            save_last=False,
            auto_insert_metric_name=False,
            enable_version_counter=False,
        )
    ]
    if ck.save_last or ck.every_n_train_steps > 0:
        out.append(LastCheckpoint(folder / "last.ckpt", ck.every_n_train_steps))
    return out


def build_resilience_callbacks(cfg: DictConfig, dm: SpatioTemporalDataModule) -> list[Callback]:
    """Checkpoint metadata, RNG state for exact resumes, the training wall clock (Lightning's ``Timer``, carried
    across resumes in the checkpoints) and the non-finite guard."""
    out: list[Callback] = [CheckpointMetadata(run_metadata(cfg, dm.info)), RngState(), RunTimer()]
    if cfg.callbacks.nan_guard:
        out.append(NanGuard())
    return out


def build_callbacks(
    cfg: DictConfig, run_dir: Path, dm: SpatioTemporalDataModule, model: nn.Module | None = None
) -> list[Callback]:
    """Every callback of a run; ``model`` (the network) decides whether the analysis callbacks apply."""
    cb = cfg.callbacks
    out = build_checkpoint_callbacks(cfg, run_dir) + build_resilience_callbacks(cfg, dm)
    if cb.early_stopping.enabled:
        es = cb.early_stopping
        out.append(EarlyStopping(monitor=es.monitor, patience=es.patience, mode=es.mode))
    bar = progress_bar(cb.progress_bar, cb.progress_every_n_steps)
    if bar is not None:
        out.append(bar)
    if model is not None:
        out += build_analysis_callbacks(cfg, run_dir, model)
    return out


def progress_bar(kind: str, every_n_steps: int, stdout: TextIO | None = None) -> Callback | None:
    """The progress bar ``callbacks.progress_bar`` names; ``auto``: rich on a terminal, else one plain line every
    ``every_n_steps`` steps (logs, pipes, CI). ``None`` for ``none``."""
    if kind == "auto":
        kind = "rich" if (stdout or sys.stdout).isatty() else "plain"
    if kind == "rich":
        return RichProgressBar()
    if kind == "tqdm":
        return TQDMProgressBar()
    if kind == "plain":
        return PlainProgress(every_n_steps)
    return None


def build_analysis_callbacks(cfg: DictConfig, run_dir: Path, model: nn.Module) -> list[Callback]:
    """The per-epoch test curve and the routing-smoothness / disentanglement instrumentation, when enabled and
    ``model`` routes (one info line says so when it does not)."""
    out: list[Callback] = []
    if cfg.callbacks.test_every_epoch:
        from stm3_lightning.callbacks.test_curve import TestCurve
        from stm3_lightning.run.seeded_eval import eval_seed

        out.append(TestCurve(eval_seed(cfg), cfg.trainer.limit_test_batches))
    wanted = cfg.callbacks.routing.enabled or cfg.callbacks.disentanglement.enabled
    if wanted and not has_routing(model):
        log.info("Routing and disentanglement analysis skipped: %s has no router.", cfg.model.name)
        return out
    if cfg.callbacks.routing.enabled:
        from stm3_lightning.callbacks.routing import RoutingSmoothnessCallback

        out.append(RoutingSmoothnessCallback(cfg.callbacks.routing, run_dir))
    if cfg.callbacks.disentanglement.enabled:
        from stm3_lightning.callbacks.disentanglement import ExpertDisentanglementCallback

        out.append(ExpertDisentanglementCallback(cfg.callbacks.disentanglement, run_dir))
    return out


def trainer_kwargs(cfg: DictConfig, routed: bool = False) -> dict:
    """``cfg.trainer`` as ``L.Trainer`` keyword arguments. ``routed`` (the model routes rows to experts): plain
    ``strategy=ddp`` becomes ``ddp_find_unused_parameters_true``, since with top-1 routing an expert can receive no
    rows on one process in a step, which plain DDP refuses mid-run; DDP then reduces a zero gradient for that
    process and leaves an expert unused by every process untouched, as one process would."""
    kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    if kwargs.get("val_check_interval") is None:
        kwargs.pop("val_check_interval", None)
    if cfg.callbacks.progress_bar == "none":
        kwargs["enable_progress_bar"] = False
    if routed and kwargs.get("strategy") == "ddp":
        kwargs["strategy"] = "ddp_find_unused_parameters_true"
        log.info(
            "trainer.strategy=ddp with a routed model runs as ddp_find_unused_parameters_true: an expert can get no "
            "rows on a process in a step (pass trainer.strategy=ddp_find_unused_parameters_false to refuse that)."
        )
    return kwargs


def build_trainer(
    cfg: DictConfig, run_dir: Path, loggers: list, callbacks: list[Callback], model: nn.Module | None = None
) -> L.Trainer:
    """The run's ``L.Trainer``; ``model`` (the network) decides the DDP flavour (:func:`trainer_kwargs`)."""
    return L.Trainer(
        **trainer_kwargs(cfg, routed=bool(getattr(model, "has_router", False))),
        default_root_dir=str(run_dir),
        logger=loggers or False,
        callbacks=callbacks,
        use_distributed_sampler=False,
    )
