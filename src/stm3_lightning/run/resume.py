"""Continue an interrupted run: ``stm3 train resume=<run dir> [overrides]`` or ``... paths.output_dir=<run dir> ckpt_path=last``.

A resume reuses the run's saved ``config.yaml`` (group choices may be repeated, not changed; overrides such as
``trainer.max_epochs=200`` apply and are recorded in ``config.resume-<k>.yaml``), writes into the same folder and
starts from ``checkpoints/last.ckpt`` (or ``ckpt_path=<file>``). Lightning restores the weights, optimizer,
scheduler, loop position and callback states; :mod:`stm3_lightning.data.resumable` and
:mod:`stm3_lightning.callbacks.rng_state` restore the data order and RNG streams, so on CPU with a fixed seed the
resumed run ends with exactly the metrics of an uninterrupted one.
"""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig

from stm3_lightning.config.compose import GROUPS, ConfigError, compose, compose_saved
from stm3_lightning.run.checkpoints import CheckpointError, last_checkpoint
from stm3_lightning.run.rundir import is_run_dir

log = logging.getLogger(__name__)


def _values(args: list[str]) -> dict[str, str]:
    return dict(a.split("=", 1) for a in args if "=" in a)


def resume_config(run_dir: str | Path, args: list[str]) -> DictConfig:
    """The saved config of ``run_dir`` with the dotlist ``args`` applied, set to continue in that folder."""
    run_dir = Path(run_dir)
    if not is_run_dir(run_dir):
        raise ConfigError(
            f"{run_dir} is not a run folder (no config.yaml); pass resume=<folder written by stm3 train>."
        )
    values = _values(args)
    output_dir = values.get("paths.output_dir")
    if output_dir and Path(output_dir).resolve() != run_dir.resolve():
        raise ConfigError(
            f"resume={run_dir} writes into that folder; drop paths.output_dir={output_dir} or start a new run."
        )
    skip = ("resume", "paths.output_dir", "ckpt_path", *GROUPS, "experiment", "exp")
    overrides = [a for a in args if a.split("=", 1)[0] not in skip]
    ckpt = values.get("ckpt_path") or "last"
    cfg = compose_saved(
        run_dir / "config.yaml",
        [*overrides, f"paths.output_dir={run_dir}", f"resume={run_dir}", f"ckpt_path={ckpt}"],
    )
    changed = [
        f"{k}={values[k]}"
        for k in (*GROUPS, "experiment", "exp")
        if k in values and values[k] != cfg.choices.get("experiment" if k == "exp" else k, "")
    ]
    if changed:
        raise ConfigError(
            f"resume={run_dir} continues the saved configuration, so {' '.join(changed)} cannot change; start a "
            "new run instead, or pass only key=value overrides such as trainer.max_epochs=200."
        )
    return cfg


def train_config(args: list[str]) -> DictConfig:
    """The config of ``stm3 train args``: a new run, or the continuation of the run named by ``resume=`` (or by
    ``paths.output_dir`` together with ``ckpt_path=last``, the form a requeued cluster job can always pass)."""
    values = _values(args)
    if values.get("resume"):
        return resume_config(values["resume"], args)
    cfg = compose(args)
    if cfg.ckpt_path != "last":
        return cfg
    if not cfg.paths.output_dir:
        raise ConfigError(
            "ckpt_path=last needs the run to continue: pass resume=<run dir> or paths.output_dir=<run dir>."
        )
    if is_run_dir(Path(cfg.paths.output_dir)):
        return resume_config(cfg.paths.output_dir, [a for a in args if not a.startswith("paths.output_dir=")])
    log.info("ckpt_path=last: %s holds no run yet; starting a new run there.", cfg.paths.output_dir)
    cfg.ckpt_path = ""
    return cfg


def resolve_ckpt_path(cfg: DictConfig, run_dir: Path) -> str | None:
    """The checkpoint training starts from: none, ``last`` = ``<run_dir>/checkpoints/last.ckpt``, or a file."""
    if not cfg.ckpt_path:
        return None
    if cfg.ckpt_path == "last":
        last = last_checkpoint(run_dir)
        if last is None:
            log.warning(
                "%s has no checkpoint yet (it stopped before the first one); training from the start.",
                run_dir,
            )
        return str(last) if last else None
    path = Path(cfg.ckpt_path)
    if not path.is_file():
        raise CheckpointError(f"ckpt_path={path} does not exist; pass a .ckpt file, `last`, or nothing.")
    return str(path)
