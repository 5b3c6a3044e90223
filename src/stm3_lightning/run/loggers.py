"""Experiment loggers: CSV always, Weights & Biases through Lightning's ``WandbLogger``.

W&B never blocks or breaks a run: ``online`` falls back to ``offline`` when no credentials exist, when the W&B
server (``WANDB_BASE_URL``, through ``HTTPS_PROXY`` when set) does not answer an HTTP request within a few
seconds (no network, firewalled cluster node), or when ``wandb.init`` fails (bad API key, server error);
``disabled`` writes nothing. A resumed run appends to its ``metrics.csv`` and continues the W&B run whose id
the run folder stores (``wandb_run_id``).
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import secrets
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from stm3_lightning.config.schema import WandbConfig
from stm3_lightning.run.results import atomic_write_text

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.wandb.ai"
PROBE_TIMEOUT_S = 3.0
WANDB_ID_FILE = "wandb_run_id"


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


def wandb_run_id(run_dir: Path, resuming: bool) -> str:
    """The W&B run id of this run: the one stored in ``<run_dir>/wandb_run_id`` when resuming, else a new one.

    A new id is drawn from ``secrets`` (never from the seeded global RNGs) and stored by :func:`build_wandb_logger`.
    """
    path = run_dir / WANDB_ID_FILE
    if resuming and path.is_file():
        return path.read_text().strip()
    return secrets.token_hex(4)


@rank_zero_only
def _store_run_id(run_dir: Path, run_id: str) -> None:
    atomic_write_text(run_dir / WANDB_ID_FILE, run_id + "\n")


def _wandb_logger(cfg: DictConfig, run_dir: Path, mode: str, run_id: str) -> Logger:
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
    run_id = wandb_run_id(run_dir, resuming)
    _store_run_id(run_dir, run_id)

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
        # The failed online run keeps its id reserved in the W&B service: the offline run gets a new one.
        run_id = wandb_run_id(run_dir, resuming=False)
        _store_run_id(run_dir, run_id)
        return _wandb_logger(cfg, run_dir, "offline", run_id)
    # Sweeps optimise the run summary: make it the best validation loss, not the last one.
    logger.experiment.define_metric("val/loss", summary="min")
    return logger


@rank_zero_only
def continue_csv_log(logger: CSVLogger, until_step: int) -> None:
    """Let a resumed run's ``logger`` continue its ``metrics.csv``: the rows logged up to ``until_step`` (the resumed
    checkpoint's step) are kept, later ones are logged again by the resumed run.

    Lightning's writer deletes an existing ``metrics.csv`` when it is created, so the kept rows are read first and
    written back (atomically) once the writer exists; its ``metrics_keys`` then make later saves keep their columns.
    """
    path = Path(logger.log_dir) / ExperimentWriter.NAME_METRICS_FILE
    fields: list[str] = []
    rows: list[dict[str, str]] = []
    if path.is_file():
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            fields = list(reader.fieldnames or [])
            rows = [r for r in reader if r.get("step", "").isdigit() and int(r["step"]) <= until_step]
        path.unlink()
    writer = logger.experiment
    if not fields:
        return
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", newline="") as handle:
        out = csv.DictWriter(handle, fieldnames=fields)
        out.writeheader()
        out.writerows(rows)
    os.replace(tmp, path)
    writer.metrics_keys = fields


def build_loggers(cfg: DictConfig, run_dir: Path, resume_step: int | None = None) -> list[Logger]:
    """CSV logger (``<run_dir>/csv/metrics.csv``) and, unless disabled, a ``WandbLogger`` given the resolved config.

    ``resume_step``: the global step of the checkpoint a resumed run continues from (``None`` for a new run).
    """
    loggers: list[Logger] = []
    if cfg.logger.csv:
        csv_logger = CSVLogger(save_dir=str(run_dir), name="csv", version="")
        if resume_step is not None:
            continue_csv_log(csv_logger, resume_step)
        loggers.append(csv_logger)
    wandb_logger = build_wandb_logger(cfg, run_dir, resuming=resume_step is not None)
    if wandb_logger is not None:
        loggers.append(wandb_logger)
    return loggers
