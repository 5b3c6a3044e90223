"""Locate the configuration a checkpoint was trained with (``stm3 eval ckpt=...``)."""

from __future__ import annotations

from pathlib import Path

from omegaconf import DictConfig

from stm3_lightning.config.compose import GROUPS, ConfigError, compose, compose_saved
from stm3_lightning.data.datamodule import SpatioTemporalDataModule
from stm3_lightning.lit.forecaster import Forecaster
from stm3_lightning.run.builders import build_datamodule, build_forecaster
from stm3_lightning.run.checkpoints import CheckpointError, check_compatible, run_metadata
from stm3_lightning.run.rundir import is_run_dir


def run_dir_of(ckpt: str | Path) -> Path | None:
    """The run folder a checkpoint belongs to (``<run>/checkpoints/x.ckpt`` or ``<run>/x.ckpt``), or ``None``."""
    path = Path(ckpt)
    if not path.is_file():
        raise CheckpointError(
            f"Checkpoint {path} does not exist; pass the path of a .ckpt file written by a run."
        )
    for candidate in (
        (path.parent.parent, path.parent) if path.parent.name == "checkpoints" else (path.parent,)
    ):
        if is_run_dir(candidate):
            return candidate
    return None


def config_for_checkpoint(ckpt: str | Path, overrides: list[str]) -> tuple[DictConfig, Path | None]:
    """The config to evaluate ``ckpt`` with, and its run folder.

    A checkpoint inside a run folder uses that run's saved config with the dotlist ``overrides`` applied (group
    choices cannot change: the model must stay the trained one); a checkpoint outside any run (e.g. converted
    release weights) uses the config composed from ``overrides``, as ``stm3 train`` would.
    """
    run_dir = run_dir_of(ckpt)
    if run_dir is None:
        return compose(overrides), None
    groups = [a for a in overrides if a.split("=", 1)[0] in (*GROUPS, "experiment", "exp")]
    if groups:
        raise ConfigError(
            f"{ckpt} belongs to the run {run_dir}, whose saved config is used, so {' '.join(groups)} cannot change; "
            "pass only key=value overrides such as data.eval_batch_size=16."
        )
    return compose_saved(run_dir / "config.yaml", overrides), run_dir


def load_for_eval(
    ckpt: str | Path, overrides: list[str]
) -> tuple[DictConfig, Forecaster, SpatioTemporalDataModule]:
    """The config (the run's own, with dotlist ``overrides``), the module with the checkpoint's weights, and the
    data of ``ckpt``; fails in one sentence when the checkpoint does not fit."""
    cfg, _ = config_for_checkpoint(ckpt, overrides)
    dm = build_datamodule(cfg)
    dm.prepare_data()
    dm.setup("test")
    module = build_forecaster(cfg, dm.info)  # the checkpoint's buffers carry the run's scaler
    state = check_compatible(ckpt, module, run_metadata(cfg, dm.info))
    module.load_state_dict(state["state_dict"])
    return cfg, module, dm
