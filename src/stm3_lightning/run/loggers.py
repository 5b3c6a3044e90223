"""Experiment loggers: CSV always, Weights & Biases through Lightning's ``WandbLogger``.

W&B never blocks or breaks a run: ``online`` falls back to ``offline`` when no credentials exist, when the W&B
server (``WANDB_BASE_URL``, through ``HTTPS_PROXY`` when set) does not answer an HTTP request within a few
seconds (no network, firewalled cluster node), or when ``wandb.init`` fails (bad API key, server error);
``disabled`` writes nothing. A resumed run appends to its ``metrics.csv`` and continues its W&B run id.
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment
from omegaconf import DictConfig, OmegaConf

from stm3_lightning.config.schema import WandbConfig

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0


def wandb_base_url() -> str:
    return os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)


def has_wandb_credentials() -> bool:
    """True when an API key is configured (``WANDB_API_KEY`` or a netrc entry for the W&B host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(wandb_base_url()).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = PROBE_TIMEOUT_S) -> bool:
    """True when the W&B base URL answers an HTTP request (any status) within ``timeout`` seconds.

    Uses the environment's proxy settings, as ``wandb`` does.
    """
    request = urllib.request.Request(wandb_base_url(), method="HEAD")
    try:
        with urllib.request.urlopen(request, timeout=timeout):
            return True
    except urllib.error.HTTPError:
        return True  # the server answered (401, 404, ...): it is reachable
    except (urllib.error.URLError, OSError, ValueError):
        return False


def resolve_wandb_mode(cfg: WandbConfig) -> str:
    """The mode a run will really use: ``WANDB_MODE`` wins, then the config with the offline fallbacks."""
    mode = os.environ.get("WANDB_MODE", str(cfg.mode))
    if mode == "dryrun":
        mode = "offline"
    if mode == "online":
        if not has_wandb_credentials():
            log.warning(
                "W&B: no API key configured (run `wandb login`); logging offline, sync later with `wandb sync`."
            )
            return "offline"
        if not wandb_reachable():
            log.warning(
                "W&B: %s unreachable; logging offline, sync later with `wandb sync`.", wandb_base_url()
            )
            return "offline"
    return mode if mode in ("online", "offline", "disabled") else "offline"


def previous_wandb_id(run_dir: Path) -> str | None:
    """The W&B run id of an earlier session of this run (``<run_dir>/wandb/[offline-]run-<stamp>-<id>``)."""
    runs = sorted(
        (p for p in (run_dir / "wandb").glob("*run-*-*") if p.is_dir() and not p.is_symlink()),
        key=lambda p: p.name.removeprefix("offline-"),
    )
    return runs[-1].name.rsplit("-", 1)[1] if runs else None


def _wandb_logger(cfg: DictConfig, run_dir: Path, mode: str, run_id: str | None) -> Logger:
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    wcfg = cfg.logger.wandb
    return WandbLogger(
        project=wcfg.project,
        entity=wcfg.entity or None,
        group=wcfg.group or None,
        name=wcfg.name or run_dir.name,
        id=run_id,
        tags=list(wcfg.tags) + list(cfg.tags),
        save_dir=str(run_dir),
        offline=mode == "offline",
        config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        settings=wandb.Settings(mode=mode, init_timeout=wcfg.init_timeout, silent=True),
    )


def build_wandb_logger(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> Logger | None:
    """A started ``WandbLogger`` (online or offline) or ``None`` when disabled or ``wandb`` is not installed.

    Online runs are started here, so a failing ``wandb.init`` (bad API key, server error, timeout) is caught
    and the run continues offline instead of crashing at the first log call.
    """
    mode = resolve_wandb_mode(cfg.logger.wandb)
    if mode == "disabled":
        return None
    try:
        import wandb
    except ImportError:
        log.warning(
            "W&B: the wandb package is not installed; logging to CSV only (`pip install wandb` for W&B)."
        )
        return None
    run_id = previous_wandb_id(run_dir) if resuming else None

    if wandb.run is not None:
        # WandbLogger would attach to a run left open by an earlier run in this process and write there.
        wandb.finish()
    logger = _wandb_logger(cfg, run_dir, mode, run_id)
    if mode != "online":
        return logger
    try:
        logger.experiment  # noqa: B018  (starts the W&B run)
    except Exception as exc:  # wandb raises CommError, AuthenticationError, UsageError, timeouts, ...
        log.warning(
            "W&B: could not start an online run (%s); logging offline, sync later with `wandb sync`.", exc
        )
        wandb.finish()
        logger = _wandb_logger(cfg, run_dir, "offline", run_id)
        return logger
    # Sweeps optimise the run summary: make it the best validation loss, not the last one.
    logger.experiment.define_metric("val/loss", summary="min")
    return logger


class _ContinuedWriter(ExperimentWriter):
    """CSV writer that keeps the rows of ``metrics.csv`` logged up to ``until_step`` and appends after them.

    Lightning's writer deletes an existing ``metrics.csv``; a resumed run instead keeps its history up to the
    checkpoint it resumes from (rows logged after it are logged again by the resumed run).
    """

    def __init__(self, log_dir: str, until_step: int) -> None:
        self._until_step = until_step
        super().__init__(log_dir)

    def _check_log_dir_exists(self) -> None:
        path = Path(self.metrics_file_path)
        if not path.is_file():
            return
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= self._until_step]
        tmp = path.with_name(f".{path.name}.tmp")
        with tmp.open("w", newline="") as handle:
            writer = csv.DictWriter(handle, fieldnames=fields)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, path)
        self.metrics_keys = fields


class ContinuedCSVLogger(CSVLogger):
    """``CSVLogger`` for a resumed run: continues ``metrics.csv`` from the resumed checkpoint's step."""

    def __init__(self, save_dir: str, until_step: int, **kwargs: Any) -> None:
        super().__init__(save_dir, **kwargs)
        self._until_step = until_step

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ContinuedWriter(self.log_dir, self._until_step)
        return self._experiment


def build_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> list[Logger]:
    """CSV logger (``<run_dir>/csv/metrics.csv``) and, unless disabled, a ``WandbLogger`` given the resolved config.

    ``resume_step``: the global step of the checkpoint a resumed run continues from (``None`` for a new run).
    """
    loggers: list[Logger] = []
    if cfg.logger.csv:
        if resume_step is None:
            loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
        else:
            loggers.append(ContinuedCSVLogger(str(run_dir), resume_step, name="csv", version=""))
    wandb_logger = build_wandb_logger(cfg, run_dir, resuming=resume_step is not None)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    return loggers
