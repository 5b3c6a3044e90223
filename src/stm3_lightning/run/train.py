"""Thin training entry point: compose config -> build objects -> fit -> test the best-validation checkpoint.

Order matters for reliability: the run folder is planned and checked (writable, not another run's) first, the
data and model are built next (bad input fails here, before any file is written), a checkpoint to start from is
checked against the model, and only then is the folder created and the config recorded.
"""

from __future__ import annotations

import logging
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.utilities.exceptions import SIGTERMException
from omegaconf import DictConfig

from stm3_lightning.callbacks.run_timer import RunTimer
from stm3_lightning.config.compose import ConfigError
from stm3_lightning.config.safety import harden_resolvers
from stm3_lightning.lit.forecaster import Forecaster
from stm3_lightning.run.builders import (
    build_callbacks,
    build_datamodule,
    build_forecaster,
    build_trainer,
    load_before_writing,
)
from stm3_lightning.run.checkpoints import check_compatible, run_metadata
from stm3_lightning.run.loggers import attach_results, build_loggers, mark_preempting, wandb_locations
from stm3_lightning.run.machine import machine_info
from stm3_lightning.run.results import write_horizon_plot, write_predictions, write_test_metrics
from stm3_lightning.run.resume import resolve_ckpt_path
from stm3_lightning.run.rundir import (
    MIN_FREE_BYTES,
    check_writable,
    claim_run_dir,
    claim_subdir,
    is_worker_process,
    plan_run_dir,
    release_run_dir,
    save_config,
)
from stm3_lightning.run.seeded_eval import eval_seed, seeded_rng

log = logging.getLogger(__name__)
harden_resolvers()


def test_and_report(cfg: DictConfig, trainer: L.Trainer, module, dm, run_dir: Path, ckpt: str | None) -> dict:
    """Test ``ckpt`` (or the module's current weights) with the RNG seeded by the run's ``eval_seed`` and write
    the run's result files on rank 0 (with the training wall time and the machine). The wall time is read before
    testing: testing a checkpoint restores the Timer's state from it, which would add that checkpoint's time."""
    timer = next((c for c in trainer.callbacks if isinstance(c, RunTimer)), None)
    wall = {}
    if timer is not None and timer.start_time("train") is not None:
        wall = {
            "train_wall_s": round(timer.time_elapsed("train"), 1),
            "train_wall_coverage": timer.coverage(),
        }
    with seeded_rng(eval_seed(cfg)):
        trainer.test(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
    results = module.test_results
    if trainer.is_global_zero:
        extra = {
            "dataset": cfg.data.name,
            "model": cfg.model.name,
            "experiment": cfg.choices.get("experiment", ""),
            "seed": cfg.seed,
            "eval_seed": eval_seed(cfg),
            "input_len": cfg.data.input_len,
            "horizon": cfg.data.horizon,
            "checkpoint": ckpt or "final weights",
            "windows": dm.window_counts,
            "machine": machine_info(),
        }
        extra.update(wall)
        scored, total = results.get("scored_windows"), dm.window_counts.get("test")
        if scored is not None and total is not None and scored < total:
            log.info("Scored %d of the %d test windows (trainer.limit_test_batches).", scored, total)
        written = [write_test_metrics(run_dir, results, extra)]
        if cfg.metrics.save_predictions and module.test_outputs:
            write_predictions(run_dir, module.test_outputs)
        if cfg.callbacks.plots:
            title = f"{cfg.data.name} {cfg.model.name} {cfg.data.input_len}->{cfg.data.horizon}"
            written.append(write_horizon_plot(run_dir, results["per_step"], title))
        attach_results(trainer.loggers, run_dir, written)
    return results


def where_things_are(trainer: L.Trainer, run_dir: Path) -> str:
    """The lines printed at the end of a run: its folder, its checkpoints and its W&B run (with the sync command)."""
    folder = run_dir / "checkpoints"
    best = Path(getattr(trainer.checkpoint_callback, "best_model_path", "") or "")
    names = [f"best {best.name}"] if best.name else []
    names += ["last last.ckpt"] if (folder / "last.ckpt").is_file() else []
    lines = [f"run folder:      {run_dir.resolve()}"]
    if names:
        lines.append(f"checkpoints:     {folder.resolve()} ({', '.join(names)})")
    return "\n".join(lines + wandb_locations(trainer.loggers))


def required_bytes(cfg: DictConfig, module: Forecaster, num_test_windows: int, num_nodes: int) -> int:
    """Disk space a run needs: its checkpoints (weights + two AdamW moments, best ones + last + a temporary
    copy while writing) and the saved predictions, with a margin."""
    weights = sum(t.numel() * t.element_size() for t in module.state_dict().values())
    ckpt = 3 * weights + 2**20
    total = ckpt * (max(cfg.callbacks.checkpoint.save_top_k, 0) + 2)
    if cfg.metrics.save_predictions:
        total += 2 * 4 * num_test_windows * cfg.data.horizon * num_nodes
    return max(MIN_FREE_BYTES, total + 10 * 2**20)


# Launchers that fit and test in worker processes only: the test results never reach the process that writes them.
WORKER_ONLY_STRATEGIES: tuple[str, ...] = ("ddp_spawn", "ddp_fork", "ddp_notebook")


def check_strategy(cfg: DictConfig) -> None:
    """Refuse ``trainer.strategy`` values whose results stay in worker processes (use ``ddp``)."""
    strategy = str(cfg.trainer.strategy)
    if strategy.startswith(WORKER_ONLY_STRATEGIES):
        raise ConfigError(
            f"trainer.strategy={strategy} runs training and testing in worker processes whose results stm3 cannot "
            "write; use trainer.strategy=ddp (as trainer=ddp and trainer=ddp_cpu do)."
        )
    devices = cfg.trainer.devices
    multi = cfg.trainer.num_nodes > 1 or (isinstance(devices, int) and devices > 1)
    multi = multi or (not isinstance(devices, (int, str)) and len(devices) > 1)
    if cfg.metrics.save_predictions and multi:
        raise ConfigError(
            "metrics.save_predictions=true needs a single process (each DDP rank sees only its shard of the test "
            "windows); test the checkpoint afterwards with `stm3 eval ckpt=... metrics.save_predictions=true`."
        )


def train(cfg: DictConfig) -> dict:
    """Run one experiment end to end and return the test results (also written to ``test_metrics.json``)."""
    check_strategy(cfg)
    resuming = bool(cfg.resume)
    worker = is_worker_process()
    planned = plan_run_dir(cfg, resuming)
    L.seed_everything(cfg.seed, workers=True)
    # Denormal floats make CPU arithmetic up to 10x slower in the decaying scan; flush them to zero.
    torch.set_flush_denormal(True)
    dm = build_datamodule(cfg)
    if not worker:
        load_before_writing(dm)
    module = build_forecaster(cfg, dm.info)
    trainable = any(p.requires_grad for p in module.parameters())
    ckpt = resolve_ckpt_path(cfg, planned) if trainable else None
    resume_step = None
    if ckpt:
        resume_step = int(check_compatible(ckpt, module, run_metadata(cfg, dm.info)).get("global_step", 0))
    check_writable(planned, required_bytes(cfg, module, dm.window_counts.get("test", 0), dm.info.num_nodes))
    run_dir = claim_run_dir(cfg, planned)
    try:
        save_config(cfg, run_dir, resuming, worker)
        loggers = build_loggers(cfg, run_dir, resume_step if resuming else None)
        callbacks = build_callbacks(cfg, run_dir, dm, module.model)
        trainer = build_trainer(cfg, run_dir, loggers, callbacks, module.model)
        try:
            if trainable:
                trainer.fit(module, datamodule=dm, ckpt_path=ckpt, weights_only=True)
                best = trainer.checkpoint_callback.best_model_path if trainer.checkpoint_callback else ""
            else:
                log.info("%s has no trainable parameters: skipping fit, testing directly.", cfg.model.name)
                best = ""
            results = test_and_report(cfg, trainer, module, dm, run_dir, best or None)
            if trainer.is_global_zero:
                print(where_things_are(trainer, run_dir), flush=True)
            return results
        except SIGTERMException as exc:
            exc.run_dir = run_dir  # type: ignore[attr-defined]  (the CLI names it in its message)
            mark_preempting(trainer.loggers)
            raise
        finally:
            finish(trainer)
    finally:
        release_run_dir(run_dir)


def finish(trainer: L.Trainer) -> None:
    """Close W&B runs and the process group so multi-run sweeps and DDP exit cleanly."""
    if any(isinstance(lg, WandbLogger) for lg in trainer.loggers):
        import wandb

        wandb.finish()
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def evaluate(cfg: DictConfig, ckpt: str, run_dir: Path | None = None) -> dict:
    """Test a checkpoint (``make eval CKPT=...``) after checking that it fits the configured model.

    Results go to ``<run_dir>/eval/<checkpoint name>/`` when the checkpoint belongs to a run (the training run's
    own ``test_metrics.json`` is never rewritten), else to a new run folder as for training.
    """
    check_strategy(cfg)
    worker = is_worker_process()
    planned = plan_run_dir(cfg) if run_dir is None else run_dir / "eval" / Path(ckpt).stem
    check_writable(planned)
    dm = build_datamodule(cfg)
    if not worker:
        load_before_writing(dm)
    module = build_forecaster(cfg, dm.info)
    check_compatible(ckpt, module, run_metadata(cfg, dm.info))
    if run_dir is None:
        out = claim_run_dir(cfg, planned)
        save_config(cfg, out, resuming=False, is_worker=worker)
    else:
        out = claim_subdir(planned.parent, planned.name)
    try:
        trainer = build_trainer(cfg, out, [], [], module.model)
        try:
            return test_and_report(cfg, trainer, module, dm, out, ckpt)
        finally:
            finish(trainer)
    finally:
        release_run_dir(out)
