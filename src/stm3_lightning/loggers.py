"""Experiment loggers: CSV always, Weights & Biases through Lightning's ``WandbLogger``.

W&B never blocks a run: ``online`` falls back to ``offline`` when no credentials exist or the W&B server does not
answer a TCP connect within a few seconds (no network, firewalled cluster node); ``disabled`` writes nothing.
"""

from __future__ import annotations

import logging
import netrc
import os
import socket
from pathlib import Path
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger
from omegaconf import DictConfig, OmegaConf

from stm3_lightning.config.schema import WandbConfig

log = logging.getLogger(__name__)
DEFAULT_BASE_URL = "https://api.wandb.ai"


def has_wandb_credentials() -> bool:
    """True when an API key is configured (``WANDB_API_KEY`` or a netrc entry for the W&B host)."""
    if os.environ.get("WANDB_API_KEY"):
        return True
    host = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL)).hostname or ""
    try:
        return netrc.netrc().authenticators(host) is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def wandb_reachable(timeout: float = 3.0) -> bool:
    """True when a TCP connection to the W&B base URL (``WANDB_BASE_URL``) opens within ``timeout`` seconds."""
    url = urlparse(os.environ.get("WANDB_BASE_URL", DEFAULT_BASE_URL))
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        with socket.create_connection((url.hostname or "", port), timeout=timeout):
            return True
    except OSError:
        return False


def resolve_wandb_mode(cfg: WandbConfig) -> str:
    """The mode a run will really use: ``WANDB_MODE`` wins, then the config with the offline fallbacks."""
    mode = os.environ.get("WANDB_MODE", cfg.mode)
    if mode in ("dryrun",):
        mode = "offline"
    if mode == "online":
        if not has_wandb_credentials():
            log.warning("W&B: no API key configured (run `wandb login`); logging offline, sync later with `wandb sync`.")
            return "offline"
        if not wandb_reachable():
            log.warning("W&B: server unreachable; logging offline, sync later with `wandb sync`.")
            return "offline"
    return mode if mode in ("online", "offline", "disabled") else "offline"


def build_loggers(cfg: DictConfig, run_dir: Path) -> list[Logger]:
    """CSV logger (``<run_dir>/csv/metrics.csv``) and, unless disabled, a ``WandbLogger`` given the resolved config."""
    loggers: list[Logger] = []
    if cfg.logger.csv:
        loggers.append(CSVLogger(save_dir=str(run_dir), name="csv", version=""))
    wcfg = cfg.logger.wandb
    mode = resolve_wandb_mode(wcfg)
    if mode != "disabled":
        import wandb
        from lightning.pytorch.loggers import WandbLogger

        os.environ["WANDB_MODE"] = mode
        loggers.append(
            WandbLogger(
                project=wcfg.project,
                entity=wcfg.entity or None,
                group=wcfg.group or None,
                name=wcfg.name or run_dir.name,
                tags=list(wcfg.tags) + list(cfg.tags),
                save_dir=str(run_dir),
                offline=mode == "offline",
                config=OmegaConf.to_container(cfg, resolve=True),
                settings=wandb.Settings(init_timeout=wcfg.init_timeout, silent=True),
            )
        )
    return loggers
