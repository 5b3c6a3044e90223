"""Experiment loggers: CSV always, Weights & Biases through Lightning's ``WandbLogger``.

W&B never blocks or breaks a run: ``online`` falls back to ``offline`` when no credentials exist, when the W&B
server (``WANDB_BASE_URL``, through ``HTTPS_PROXY`` when set) does not answer an HTTP request within a few
seconds (no network, firewalled cluster node), or when ``wandb.init`` fails (bad API key, server error);
``disabled`` writes nothing, and without the ``wandb`` package the run logs to CSV only (one info line). A
resumed run appends to its ``metrics.csv`` and continues the W&B run whose id the run folder stores
(``wandb_run_id``).

A W&B run is named from the run (:func:`run_identity`: group ``<data>-<model>[-<experiment>][-<variant>]``,
name ``<group>-seed<k>``, tags, ``job_type`` = the task), keeps the best ``val/loss`` as its summary (online and
offline), optionally uploads checkpoints (``logger.wandb.log_model``) and gets ``test_metrics.json`` and the
horizon plot attached (:func:`attach_results`).
"""

from __future__ import annotations

import csv
import logging
import netrc
import os
import secrets
import shutil
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from lightning.pytorch.loggers import CSVLogger, Logger, WandbLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, ListConfig, OmegaConf

from stm3_lightning.config.schema import WandbConfig
from stm3_lightning.models.registry import model_schema
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


@dataclass(frozen=True)
class RunIdentity:
    """How a run appears in W&B."""

    name: str
    group: str
    job_type: str
    tags: list[str]


def model_variant(model_cfg: DictConfig) -> list[str]:
    """``key=value`` for each of the model's switches (its schema's ``VARIANT_KEYS``) that differs from the
    faithful default, e.g. ``["contrastive=repaired"]``; empty for the faithful model and for the baselines."""
    schema = model_schema(str(model_cfg.name))
    keys = getattr(schema, "VARIANT_KEYS", ())
    defaults = OmegaConf.structured(schema)
    out = []
    for key in keys:
        value, default = OmegaConf.select(model_cfg, key), OmegaConf.select(defaults, key)
        if isinstance(value, ListConfig):
            value, default = list(value), list(default)
        if value != default:
            shown = ",".join(map(str, value)) if isinstance(value, list) else str(value).lower()
            out.append(f"{key}={shown}")
    return out


def run_identity(cfg: DictConfig) -> RunIdentity:
    """The W&B name, group, job type and tags of a run; ``logger.wandb.{name,group,job_type}`` override them.

    group: ``<data>-<model>[-<experiment>][-<variant>]`` (the runs compared across seeds, e.g.
    ``pems08-stm3-reproduce-pems08-contrastive=repaired``); name: ``<group>-seed<seed>``; job_type: ``task``;
    tags: data, model, experiment, each variant switch and ``seed<seed>``, then ``tags`` and ``logger.wandb.tags``.
    """
    wcfg = cfg.logger.wandb
    experiment = str(cfg.choices.get("experiment", "") or "")
    variant = model_variant(cfg.model)
    parts = [str(cfg.data.name), str(cfg.model.name), experiment.replace("/", "-"), "+".join(variant)]
    group = wcfg.group or "-".join(p for p in parts if p)
    tags = [str(cfg.data.name), str(cfg.model.name), *([experiment] if experiment else []), *variant]
    tags += [f"seed{cfg.seed}", *cfg.tags, *wcfg.tags]
    return RunIdentity(
        name=wcfg.name or f"{group}-seed{cfg.seed}",
        group=group,
        job_type=wcfg.job_type or str(cfg.task),
        tags=list(dict.fromkeys(tags)),  # W&B tags are at most 64 characters
    )


def _wandb_logger(cfg: DictConfig, run_dir: Path, mode: str, run_id: str) -> Logger:
    import wandb

    wcfg = cfg.logger.wandb
    identity = run_identity(cfg)
    logger = WandbLogger(
        project=wcfg.project,
        entity=wcfg.entity or None,
        group=identity.group,
        name=identity.name,
        job_type=identity.job_type,
        id=run_id,
        tags=[tag[:64] for tag in identity.tags],
        save_dir=str(run_dir),
        # Lightning refuses log_model with offline=True, but wandb logs artifacts offline too (`wandb sync` uploads
        # them): the mode then comes from the settings alone.
        offline=mode == "offline" and not wcfg.log_model,
        log_model=wcfg.log_model,
        config=OmegaConf.to_container(cfg, resolve=True, enum_to_str=True),
        settings=wandb.Settings(mode=mode, init_timeout=wcfg.init_timeout, silent=True),
    )
    # Lightning always passes ``anonymous`` to wandb.init, which then warns that the setting has no effect.
    getattr(logger, "_wandb_init", {}).pop("anonymous", None)
    return logger


def wandb_available() -> bool:
    """Whether the ``wandb`` package can be imported (GPU boxes may lack it)."""
    try:
        import wandb  # noqa: F401
    except ImportError:
        return False
    return True


def build_wandb_logger(cfg: DictConfig, run_dir: Path, resuming: bool = False) -> Logger | None:
    """A started ``WandbLogger`` (online or offline) or ``None`` when disabled or ``wandb`` is not installed.

    Online runs are started here, so a failing ``wandb.init`` (bad API key, server error, timeout) is caught
    and the run continues offline instead of crashing at the first log call.
    """
    mode = resolve_wandb_mode(cfg.logger.wandb)
    if mode == "disabled":
        return None
    if not wandb_available():
        log.info(
            "W&B: the wandb package is not installed; logging to CSV only (pip install wandb to add W&B)."
        )
        return None
    run_id = wandb_run_id(run_dir, resuming)
    _store_run_id(run_dir, run_id)
    import wandb

    if wandb.run is not None:
        # WandbLogger would attach to a run left open by an earlier run in this process and write there.
        wandb.finish()
    logger = _wandb_logger(cfg, run_dir, mode, run_id)
    try:
        logger.experiment  # noqa: B018  (starts the W&B run)
    except Exception as exc:  # wandb raises CommError, AuthenticationError, UsageError, timeouts, ...
        if mode != "online":
            raise
        log.warning(
            "W&B: could not start an online run (%s); logging offline, sync later with `wandb sync`.", exc
        )
        wandb.finish()
        # The failed online run keeps its id reserved in the W&B service: the offline run gets a new one.
        run_id = wandb_run_id(run_dir, resuming=False)
        _store_run_id(run_dir, run_id)
        logger = _wandb_logger(cfg, run_dir, "offline", run_id)
    # Sweeps optimise the run summary: make it the best validation loss, not the last one (offline runs too).
    logger.experiment.define_metric("val/loss", summary="min")
    return logger


def active_wandb_runs(loggers: list[Logger]) -> list[Any]:
    """The started, recording W&B runs of ``loggers`` (rank 0 only; none when W&B is disabled or absent)."""
    runs = []
    for lg in loggers:
        if isinstance(lg, WandbLogger):
            run = lg.experiment
            if run is not None and not getattr(run, "disabled", False) and hasattr(run, "save"):
                runs.append(run)
    return runs


def attach_results(loggers: list[Logger], run_dir: Path, files: list[Path]) -> None:
    """Attach result ``files`` (``test_metrics.json``, ``horizon_mae.png``) to the W&B run; PNGs also as images."""
    runs = active_wandb_runs(loggers)
    if not runs:
        return
    import wandb

    present = [path for path in files if path.is_file()]
    for run in runs:
        for (
            path
        ) in present:  # files in the run's folder are uploaded with it (online at the end, or by wandb sync)
            shutil.copy2(path, Path(run.dir) / path.relative_to(run_dir))
        images = {f"test/{p.stem}": wandb.Image(str(p)) for p in present if p.suffix == ".png"}
        if images:
            run.log(images)


def mark_preempting(loggers: list[Logger]) -> None:
    """Tell W&B that the run was preempted (SIGTERM): a sweep then hands its configuration out again, and
    ``stm3 ablations`` continues the interrupted cell from its folder."""
    for run in active_wandb_runs(loggers):
        run.mark_preempting()


def wandb_locations(loggers: list[Logger]) -> list[str]:
    """Lines naming where each W&B run is: the URL online; offline, its folder and the ``wandb sync`` command."""
    lines = []
    for run in active_wandb_runs(loggers):
        if run.offline:
            folder = Path(run.settings.sync_dir)
            lines.append(f"W&B offline run: {folder}")
            lines.append(f"upload it with:  wandb sync {folder}")
        else:
            lines.append(f"W&B run: {run.url}")
    return lines


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
