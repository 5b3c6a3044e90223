"""Thin training entry point: compose config -> build objects -> fit -> test the best-validation checkpoint."""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from omegaconf import DictConfig, OmegaConf

from stm3_lightning.builders import build_callbacks, build_datamodule, build_forecaster, build_trainer
from stm3_lightning.loggers import build_loggers
from stm3_lightning.results import plot_horizon_mae, write_predictions, write_test_metrics
from stm3_lightning.rundir import make_run_dir

log = logging.getLogger(__name__)


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """``ckpt_path``: empty -> None, ``last`` -> ``<run_dir>/checkpoints/last.ckpt`` when it exists."""
    if not cfg.ckpt_path:
        return None
    if cfg.ckpt_path == "last":
        last = run_dir / "checkpoints" / "last.ckpt"
        return str(last) if last.is_file() else None
    return cfg.ckpt_path


def test_and_report(cfg: DictConfig, trainer: L.Trainer, module, dm, run_dir: Path, ckpt: str | None) -> dict:
    """Test ``ckpt`` (or the module's current weights) and write the run's result files on rank 0."""
    trainer.test(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    results = module.test_results
    if trainer.is_global_zero:
        extra = {
            "dataset": cfg.data.name,
            "model": cfg.model.name,
            "experiment": cfg.choices.get("experiment", ""),
            "seed": cfg.seed,
            "input_len": cfg.data.input_len,
            "horizon": cfg.data.horizon,
            "checkpoint": ckpt or "final weights",
            "windows": dm.window_counts,
        }
        write_test_metrics(run_dir, results, extra)
        if cfg.metrics.save_predictions and module.test_outputs:
            write_predictions(run_dir, module.test_outputs)
        if cfg.callbacks.plots:
            title = f"{cfg.data.name} {cfg.model.name} {cfg.data.input_len}->{cfg.data.horizon}"
            plot_horizon_mae(results["per_step"], run_dir / "horizon_mae.png", title)
    return results


def train(cfg: DictConfig) -> dict:
    """Run one experiment end to end and return the test results (also written to ``test_metrics.json``)."""
    run_dir = make_run_dir(cfg, resuming=bool(cfg.resume))
    L.seed_everything(cfg.seed, workers=True)
    dm = build_datamodule(cfg)
    module = build_forecaster(cfg, dm)
    if not (run_dir / "config.yaml").is_file():
        OmegaConf.save(cfg, run_dir / "config.yaml")
    trainer = build_trainer(cfg, run_dir, build_loggers(cfg, run_dir), build_callbacks(cfg, run_dir))
    try:
        if any(p.requires_grad for p in module.parameters()):
            trainer.fit(module, datamodule=dm, ckpt_path=resolve_ckpt_path(cfg, run_dir), weights_only=True)
            best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
        else:
            log.info("%s has no trainable parameters: skipping fit, testing directly.", cfg.model.name)
            best = ""
        return test_and_report(cfg, trainer, module, dm, run_dir, best or None)
    finally:
        finish(trainer)


def finish(trainer: L.Trainer) -> None:
    """Close W&B runs and the process group so multi-run sweeps and DDP exit cleanly."""
    for lg in trainer.loggers:
        if lg.__class__.__name__ == "WandbLogger":
            import wandb

            wandb.finish()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def evaluate(cfg: DictConfig, ckpt: str) -> dict:
    """Test a checkpoint with the config it was trained with (``make eval CKPT=...``)."""
    run_dir = make_run_dir(cfg, resuming=True)
    dm = build_datamodule(cfg)
    module = build_forecaster(cfg, dm)
    trainer = build_trainer(cfg, run_dir, [], [])
    try:
        return test_and_report(cfg, trainer, module, dm, run_dir, ckpt)
    finally:
        finish(trainer)
