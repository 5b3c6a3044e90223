"""``launcher=<name>`` and ``launcher.<key>=<value>``: how ``stm3 train -m`` runs its jobs, validated by a schema.

``configs/launcher/<name>.yaml`` sets the values, the dataclasses here own the keys, types and defaults, and the
command line overrides them (``launcher=submitit_slurm launcher.partition=gpu launcher.gpus=1``). An unknown key or
a wrong type fails in one sentence before any job starts, as for the run configuration. The launcher is not part of
a run's config: each job's ``config.yaml`` is the config of one ``stm3 train`` run.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, fields, make_dataclass
from typing import Any

from omegaconf import DictConfig, OmegaConf

from stm3_lightning.config.compose import ConfigError, _group_file, _load_yaml, _merge, _parse_dotlist

GROUP = "launcher"
DEFAULT = "basic"


@dataclass
class BasicLauncherConfig:
    """``launcher=basic`` (the default): the jobs one after the other on this machine, each its own process."""

    name: str = "basic"
    # Folder of the sweep (one sub-folder per job); empty = ``<paths.root_dir>/multirun/<timestamp>``.
    sweep_dir: str = ""
    # Stop at the first failed job (the remaining ones are reported as not run); default: run them all.
    fail_fast: bool = False


@dataclass
class SubmititLocalConfig(BasicLauncherConfig):
    """``launcher=submitit_local``: every job at once as a local submitit job (the SLURM code path, without SLURM)."""

    name: str = "submitit_local"
    # Wall-clock limit of a job in minutes (``[D-]HH:MM[:SS]`` is accepted on the command line); before it ends the
    # job saves its state and is requeued, continuing from its last checkpoint.
    time: int = 60
    gpus: int = 0  # per node
    cpus_per_task: int = 0  # 0 = the executor's default
    # Wait for the jobs and print their results (false: print the job ids and return once they are submitted).
    wait: bool = True
    poll_s: float = 1.0  # how often finished jobs are looked for while waiting
    # Seconds between the "about to time out" signal and the end of the job's time.
    signal_delay_s: int = 90


@dataclass
class SubmititSlurmConfig(SubmititLocalConfig):
    """``launcher=submitit_slurm``: one SLURM job array through submitit (``pip install -e ".[slurm]"``)."""

    name: str = "submitit_slurm"
    partition: str = ""
    nodes: int = 1
    # srun tasks per node; 0 = one per GPU (at least one), as Lightning's SLURM environment expects.
    tasks_per_node: int = 0
    mem_gb: float = 0.0  # 0 = the partition's default
    account: str = ""
    qos: str = ""
    constraint: str = ""
    # How many jobs of the array may run at the same time.
    array_parallelism: int = 256
    # Shell lines run before the job (``module load cuda``, ``source .venv/bin/activate``).
    setup: list[str] = field(default_factory=list)
    # Any other ``#SBATCH`` option, e.g. ``{exclude: node12, mail_type: END}``.
    additional_parameters: dict[str, Any] = field(default_factory=dict)
    poll_s: float = 15.0


LAUNCHERS: dict[str, type] = {
    "basic": BasicLauncherConfig,
    "submitit_local": SubmititLocalConfig,
    "submitit_slurm": SubmititSlurmConfig,
}


def is_launcher_arg(arg: str) -> bool:
    key = arg.partition("=")[0]
    return key == GROUP or key.startswith(GROUP + ".")


def slurm_minutes(text: str) -> int:
    """SLURM's time formats -> whole minutes: ``90``, ``MM:SS``, ``HH:MM:SS``, ``D-HH``, ``D-HH:MM[:SS]``."""
    match = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text.strip())
    if not match:
        raise ConfigError(
            f"launcher.time={text} is not a time; write minutes (launcher.time=90) or [D-]HH:MM:SS (04:00:00)."
        )
    days, first, second, third = (int(g) if g else None for g in match.groups())
    if days is not None:  # D-HH[:MM[:SS]]
        seconds = ((days * 24 + first) * 60 + (second or 0)) * 60 + (third or 0)
    elif third is not None:  # HH:MM:SS
        seconds = (first * 60 + second) * 60 + third
    elif second is not None:  # MM:SS
        seconds = first * 60 + second
    else:  # MM
        seconds = first * 60
    return max(1, math.ceil(seconds / 60))


def _normalise(arg: str) -> str:
    """``launcher.time=04:00:00`` -> ``launcher.time=240`` (YAML would read ``30:00`` as the number 1800)."""
    key, _, value = arg.partition("=")
    return f"{key}={slurm_minutes(value)}" if key == f"{GROUP}.time" else arg


def _check(cfg: DictConfig) -> None:
    minimums = {
        "time": 1,
        "gpus": 0,
        "cpus_per_task": 0,
        "nodes": 1,
        "tasks_per_node": 0,
        "array_parallelism": 1,
    }
    for key, low in minimums.items():
        value = cfg.get(key)
        if value is not None and value < low:
            raise ConfigError(f"launcher.{key} must be at least {low}, got {value}.")
    if cfg.get("poll_s", 1.0) <= 0 or cfg.get("mem_gb", 0.0) < 0:
        raise ConfigError("launcher.poll_s must be positive and launcher.mem_gb zero (default) or positive.")


def _check_keys_belong(name: str, dotlist: list[str]) -> None:
    """A key of another launcher (``launcher.gpus`` with ``launcher=basic``) fails saying which launchers have it."""
    own = {f.name for f in fields(LAUNCHERS[name])}
    for arg in dotlist:
        key = arg.partition("=")[0].removeprefix(f"{GROUP}.").split(".")[0]
        owners = [n for n, schema in LAUNCHERS.items() if key in {f.name for f in fields(schema)}]
        if key not in own and owners:
            raise ConfigError(
                f"launcher.{key} is a key of launcher={' and launcher='.join(owners)}, not of launcher={name}; "
                "choose that launcher or drop the key."
            )


def compose_launcher(args: list[str]) -> DictConfig:
    """The launcher config of the ``launcher=``/``launcher.*`` arguments (``launcher=basic`` when none)."""
    name = DEFAULT
    dotlist: list[str] = []
    for arg in args:
        key, _, value = arg.partition("=")
        if key == GROUP:
            name = value
        else:
            dotlist.append(_normalise(arg))
    path = _group_file(GROUP, name)
    schema = LAUNCHERS.get(name)
    if schema is None:
        raise ConfigError(f"{path} has no schema; launchers are {', '.join(LAUNCHERS)}.")
    _check_keys_belong(name, dotlist)
    root = make_dataclass("LauncherRoot", [(GROUP, schema, field(default_factory=schema))])
    cfg = OmegaConf.structured(root)
    cfg = _merge(cfg, OmegaConf.create({GROUP: _load_yaml(path)}), str(path), schema=root)
    cfg = _merge(cfg, _parse_dotlist(dotlist), "command line", schema=root)
    launcher = cfg[GROUP]
    if launcher.name != name:
        raise ConfigError(f"launcher.name is set by launcher={name}; drop launcher.name={launcher.name}.")
    _check(launcher)
    return launcher
