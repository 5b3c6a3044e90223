"""Run directories: one folder per run, never reused, checked writable (and roomy enough) before any work.

A run's folder is first *planned* (:func:`plan_run_dir`: chosen and checked, nothing created), then *claimed*
(:func:`claim_run_dir`) only once the data and the model have been built, so a run that fails on bad input leaves
no folder behind. Claiming is atomic: two runs started at the same second get different folders, and two runs
given the same ``paths.output_dir`` cannot both write ``config.yaml``.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stm3_lightning.config.compose import ConfigError

# Rank 0 exports its run folder here so that DDP worker processes (re-launched with the same command) use it.
RUN_DIR_ENV = "STM3_RUN_DIR"
MIN_FREE_BYTES = 50 * 2**20
_CLAIMED: set[str] = set()


def is_run_dir(path: Path) -> bool:
    return (path / "config.yaml").is_file()


def _existing_ancestor(path: Path) -> Path:
    path = path.absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def check_writable(path: Path, required_bytes: int = MIN_FREE_BYTES) -> None:
    """Fail when ``path`` (or the folder it would be created in) cannot be written or lacks ``required_bytes``.

    Creates nothing: the write test is a temporary file in the nearest existing folder, removed at once.
    """
    base = _existing_ancestor(path)
    if not base.is_dir():
        raise ConfigError(
            f"Cannot create the output folder {path} because {base} is a file, not a folder; choose another "
            "paths.output_dir."
        )
    try:
        fd, probe = tempfile.mkstemp(prefix=".stm3-write-probe-", dir=base)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise ConfigError(
            f"Cannot write to {base} ({exc.strerror}), so the run folder {path} cannot be created there; fix its "
            "permissions or choose another paths.output_dir."
        ) from exc
    free = shutil.disk_usage(base).free
    if free < required_bytes:
        raise ConfigError(
            f"The disk holding {base} has {free / 2**20:.0f} MiB free but this run needs about "
            f"{required_bytes / 2**20:.0f} MiB (checkpoints and results); free space or choose another "
            "paths.output_dir."
        )


def is_worker_process() -> bool:
    """True in a DDP worker: launched by rank 0 (it inherits the exported folder; rank 0 clears it after a run), or
    started by a cluster launcher as a rank > 0 (``srun`` sets ``SLURM_PROCID``, torchrun sets ``RANK``)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited and inherited not in _CLAIMED:
        return True
    return any(int(os.environ.get(var, "0") or 0) > 0 for var in ("SLURM_PROCID", "RANK"))


def plan_run_dir(cfg: DictConfig, resuming: bool = False) -> Path:
    """The folder this run will write to, checked but not created.

    ``paths.output_dir`` is used as given: resuming needs a run there; a new run needs it absent or empty.
    Otherwise the folder is ``<root_dir>/<data>/<model>/<timestamp>`` (a numeric suffix is added at claim time
    when that name is taken). DDP worker processes get rank 0's folder from ``STM3_RUN_DIR``.
    """
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    if cfg.paths.output_dir and is_worker_process():
        # srun/torchrun rank > 0: rank 0 owns (creates, checks) the shared folder.
        return Path(cfg.paths.output_dir)
    if cfg.paths.output_dir:
        path = Path(cfg.paths.output_dir)
        if resuming and not is_run_dir(path):
            raise ConfigError(
                f"{path} holds no run to continue (no config.yaml); pass the folder that `stm3 train` wrote."
            )
        if not resuming and is_run_dir(path):
            raise ConfigError(
                f"{path} already holds a run; choose another paths.output_dir or continue it with resume={path}."
            )
        if not resuming and path.exists() and (not path.is_dir() or any(path.iterdir())):
            raise ConfigError(
                f"{path} exists and is not an empty folder; choose a new or empty folder for paths.output_dir."
            )
    else:
        stamp = datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        path = Path(cfg.paths.root_dir) / cfg.data.name / cfg.model.name / stamp
    check_writable(path)
    return path


def _claim_fresh(path: Path) -> Path:
    """Create ``path`` (or ``path-1``, ``path-2``, ... when taken) atomically and return the one created."""
    path.parent.mkdir(parents=True, exist_ok=True)
    candidate, i = path, 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            candidate = path.with_name(f"{path.name}-{i}")
            i += 1


def claim_run_dir(cfg: DictConfig, planned: Path) -> Path:
    """Create the planned folder and export it to DDP workers; returns the folder really used."""
    if os.environ.get(RUN_DIR_ENV):
        return planned
    try:
        if cfg.paths.output_dir:
            planned.mkdir(parents=True, exist_ok=True)
            path = planned
        else:
            path = _claim_fresh(planned)
    except OSError as exc:
        raise ConfigError(
            f"Cannot create the run folder {planned} ({exc.strerror}); choose another paths.output_dir."
        ) from exc
    return _export(path)


def _export(path: Path) -> Path:
    resolved = str(path.resolve())
    os.environ[RUN_DIR_ENV] = resolved
    _CLAIMED.add(resolved)
    return path


def claim_subdir(parent: Path, name: str) -> Path:
    """Create ``parent/name`` (or ``name-1``, ...) without touching an existing folder, and export it to DDP
    workers (which get the exported one)."""
    inherited = os.environ.get(RUN_DIR_ENV)
    if inherited:
        return Path(inherited)
    return _export(_claim_fresh(parent / name))


def release_run_dir(path: Path) -> None:
    """Forget the exported folder after a run, so the next run in this process gets its own."""
    resolved = str(path.resolve())
    if resolved in _CLAIMED:
        _CLAIMED.discard(resolved)
        if os.environ.get(RUN_DIR_ENV) == resolved:
            del os.environ[RUN_DIR_ENV]


def _write_exclusive(path: Path, text: str) -> bool:
    """Write ``text`` to ``path`` unless it exists (atomic: complete content or no file); False when it existed."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError:  # a filesystem without hard links: exclusive create, then write
        try:
            out = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(out, "w") as handle:
            handle.write(text)
        return True
    finally:
        os.unlink(tmp)


def save_config(cfg: DictConfig, run_dir: Path, resuming: bool, is_worker: bool) -> Path | None:
    """Record the resolved config: ``config.yaml`` for a new run, ``config.resume-<k>.yaml`` for the k-th resume.

    The original ``config.yaml`` is never rewritten; worker processes write nothing.
    """
    if is_worker:
        return None
    text = OmegaConf.to_yaml(cfg)
    if not resuming:
        path = run_dir / "config.yaml"
        if not _write_exclusive(path, text):
            raise ConfigError(
                f"{run_dir} already holds a run; choose another paths.output_dir or continue it with "
                f"resume={run_dir}."
            )
        return path
    k = 1
    while not _write_exclusive(run_dir / f"config.resume-{k}.yaml", text):
        k += 1
    return run_dir / f"config.resume-{k}.yaml"
