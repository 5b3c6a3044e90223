"""Locate the configuration a checkpoint was trained with."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from stm3_lightning.config.compose import ConfigError, compose_saved


def run_dir_of(ckpt: str | Path) -> Path:
    """``<run>/checkpoints/x.ckpt`` -> ``<run>``."""
    path = Path(ckpt)
    if not path.is_file():
        raise ConfigError(f"Checkpoint {path} does not exist; pass the path of a .ckpt file written by a run.")
    return path.parent.parent if path.parent.name == "checkpoints" else path.parent


def config_for_checkpoint(ckpt: str | Path, overrides: list[str]) -> DictConfig:
    """The saved config of the checkpoint's run, with ``overrides`` applied; results go to the same run dir."""
    run_dir = run_dir_of(ckpt)
    cfg = compose_saved(run_dir / "config.yaml", [*overrides, f"paths.output_dir={run_dir}"])
    return cfg
