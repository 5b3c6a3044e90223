"""Run directories: one folder per run, never reused, checked writable before any work."""

from __future__ import annotations

import os
import shutil
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from stm3_lightning.config.compose import ConfigError

RUN_DIR_ENV = "STM3_RUN_DIR"
MIN_FREE_BYTES = 50 * 2**20


def _fresh(path: Path) -> Path:
    candidate, i = path, 1
    while candidate.exists():
        candidate = path.with_name(f"{path.name}-{i}")
        i += 1
    return candidate


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def check_writable(path: Path) -> None:
    """Fail before training when ``path`` cannot be written or its disk is (nearly) full."""
    try:
        path.mkdir(parents=True, exist_ok=True)
        probe = path / ".write_probe"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise ConfigError(f"Cannot write to the output folder {path} ({exc.strerror}); choose another paths.output_dir.")
    free = shutil.disk_usage(path).free
    if free < MIN_FREE_BYTES:
        raise ConfigError(
            f"The disk holding {path} has only {free // 2**20} MiB free; free space or choose another paths.output_dir."
        )


def make_run_dir(cfg: DictConfig, resuming: bool = False) -> Path:
    """Create (or, on DDP worker processes and resumes, reuse) the run's folder and return it.

    ``paths.output_dir`` is used as given but must not hold another run unless resuming; otherwise the folder is
    ``<root_dir>/<data>/<model>/<timestamp>`` with a numeric suffix when that name exists already.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    if cfg.paths.output_dir:
        path = Path(cfg.paths.output_dir)
        if is_run_dir(path) and not resuming:
            raise ConfigError(
                f"{path} already holds a run; choose another paths.output_dir or continue it with resume={path}."
            )
    else:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        path = _fresh(Path(cfg.paths.root_dir) / cfg.data.name / cfg.model.name / stamp)
    check_writable(path)
    os.environ[RUN_DIR_ENV] = str(path.resolve())
    return path
