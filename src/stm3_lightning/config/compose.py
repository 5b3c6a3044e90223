"""Compose a run configuration from the YAML groups under ``configs/`` and validate it.

Order (later wins): the schema defaults, ``configs/data/<data>.yaml``, ``configs/model/<model>.yaml``,
``configs/trainer/<trainer>.yaml``, ``configs/logger/<logger>.yaml``, ``configs/callbacks/<callbacks>.yaml``,
the experiment file, then the CLI dotlist overrides. Group choices come from ``configs/config.yaml``'s
``defaults``, then the experiment's ``defaults``, then ``group=name`` arguments on the command line.
"""

from __future__ import annotations

import difflib
import math
import os
import re
from dataclasses import fields, is_dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import ConfigKeyError, OmegaConfBaseException, ValidationError

from stm3_lightning.config.safety import harden_resolvers
from stm3_lightning.config.schema import RunConfig
from stm3_lightning.models.registry import available_models, model_schema, validate_model_config

# OmegaConf's message for a value that is not a member of an Enum field.
_CHOICE_ERROR = re.compile(r"Invalid value '(.*)', expected one of \[(.*)\]")
GROUPS: tuple[str, ...] = ("data", "model", "trainer", "logger", "callbacks")
harden_resolvers()


class ConfigError(ValueError):
    """A configuration problem, described in one sentence that says how to fix it."""


def project_root() -> Path:
    """The folder holding ``configs/`` (the repository root, or ``STM3_CONFIG_ROOT``)."""
    env = os.environ.get("STM3_CONFIG_ROOT")
    if env:
        return Path(env)
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "configs" / "config.yaml").is_file():
            return parent
    return Path.cwd()


def config_dir() -> Path:
    return project_root() / "configs"


def group_options(group: str) -> list[str]:
    """Names of the YAML files available for a config group."""
    return sorted(p.stem for p in (config_dir() / group).glob("*.yaml"))


def experiment_options() -> list[str]:
    """Experiment names: ``configs/experiment/<x>.yaml`` and ``experiments/<sub>/<x>.yaml`` as ``<sub>/<x>``."""
    names = group_options("experiment")
    root = project_root() / "experiments"
    names += sorted(
        str(p.relative_to(root).with_suffix(""))
        for p in root.rglob("*.yaml")
        if p.parent.name not in ("sweeps", "slurm")
    )
    return names


def closest_names(name: str, options: list[str], n: int = 3) -> list[str]:
    """Up to ``n`` options close to ``name``: by spelling of the whole name, of its last path part (``no_agcn``
    finds ``ablations/no_agccn``) and by containing it (``hidden`` finds ``ablations/hidden_router``)."""
    by_tail: dict[str, list[str]] = {}
    for option in options:
        by_tail.setdefault(option.rsplit("/", 1)[-1], []).append(option)
    tail = name.rsplit("/", 1)[-1]
    close = difflib.get_close_matches(name, options, n=n, cutoff=0.5)
    close += [o for t in difflib.get_close_matches(tail, list(by_tail), n=n, cutoff=0.6) for o in by_tail[t]]
    close += [o for o in options if tail and tail.lower() in o.lower()]
    return list(dict.fromkeys(close))[:n]


def _unknown(kind: str, name: str, options: list[str]) -> ConfigError:
    close = closest_names(name, options)
    hint = f" Did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"Unknown {kind} '{name}'; available: {', '.join(options) or 'none'}.{hint}")


def _load_yaml(path: Path) -> DictConfig:
    try:
        cfg = OmegaConf.load(path)
    except Exception as exc:  # yaml errors carry line numbers; keep them in one sentence
        raise ConfigError(f"Cannot parse {path}: {exc}".replace("\n", " ")) from exc
    if not isinstance(cfg, DictConfig):
        raise ConfigError(f"{path} must contain a mapping of config keys, not a list or scalar.")
    return cfg


def _group_file(group: str, name: str) -> Path:
    path = config_dir() / group / f"{name}.yaml"
    if not path.is_file():
        raise _unknown(f"{group} config", name, group_options(group))
    return path


def _experiment_file(name: str) -> Path:
    for path in (
        config_dir() / "experiment" / f"{name}.yaml",
        project_root() / "experiments" / f"{name}.yaml",
    ):
        if path.is_file():
            return path
    candidate = Path(name)
    if candidate.suffix == ".yaml" and candidate.is_file():
        return candidate
    raise _unknown("experiment", name, experiment_options())


def _split_args(args: list[str]) -> tuple[dict[str, str], str | None, list[str]]:
    """Split CLI args into group choices (``data=pems08``), an experiment and dotlist overrides."""
    choices: dict[str, str] = {}
    experiment: str | None = None
    dotlist: list[str] = []
    for arg in args:
        if "=" not in arg:
            raise ConfigError(
                f"Argument '{arg}' is not of the form key=value; write e.g. trainer.max_epochs=5."
            )
        key, value = arg.split("=", 1)
        if key in GROUPS:
            choices[key] = value
        elif key in ("experiment", "exp"):
            experiment = value or None
        else:
            dotlist.append(arg)
    return choices, experiment, dotlist


def _all_keys(schema: Any, prefix: str = "") -> list[str]:
    keys = []
    for f in fields(schema):
        name = f"{prefix}{f.name}"
        keys.append(name)
        default = f.default_factory() if callable(f.default_factory) else f.default  # type: ignore[misc]
        if is_dataclass(default):
            keys += _all_keys(type(default), name + ".")
    return keys


def _explain(exc: OmegaConfBaseException, schema: Any) -> ConfigError:
    full_key = getattr(exc, "full_key", None) or ""
    if isinstance(exc, ConfigKeyError) and full_key:
        close = difflib.get_close_matches(full_key, _all_keys(schema), n=3, cutoff=0.6)
        hint = f"; closest valid keys: {', '.join(close)}" if close else ""
        return ConfigError(f"Unknown config key '{full_key}'{hint}.")
    if isinstance(exc, ValidationError) and full_key:
        msg = str(exc).splitlines()[0]
        choice = _CHOICE_ERROR.fullmatch(msg)
        if choice:  # a schema Choice (Enum) field
            value, allowed = choice.groups()
            return ConfigError(f"Invalid value '{value}' for '{full_key}'; choose one of {allowed}.")
        return ConfigError(f"Invalid value for '{full_key}': {msg}.")
    return ConfigError(str(exc).splitlines()[0])


def _schema_with_model(model_name: str) -> DictConfig:
    base = OmegaConf.structured(RunConfig)
    try:
        schema = model_schema(model_name)
    except ValueError as exc:
        raise _unknown("model", model_name, available_models()) from exc
    base.model = OmegaConf.structured(schema)
    return base


def _merge(cfg: DictConfig, other: DictConfig, source: str, schema: Any = RunConfig) -> DictConfig:
    """Merge ``other`` into ``cfg``; a bad key or value fails naming it, the closest keys of ``schema`` and ``source``."""
    try:
        return OmegaConf.merge(cfg, other)  # type: ignore[return-value]
    except OmegaConfBaseException as exc:
        err = str(_explain(exc, schema)).rstrip(".")
        raise ConfigError(f"{err} (in {source}).") from exc


def _parse_dotlist(dotlist: list[str]) -> DictConfig:
    """``["a.b=1", ...]`` -> config; malformed values (e.g. an unclosed list) fail with the offending argument."""
    for arg in dotlist:
        try:
            OmegaConf.from_dotlist([arg])
        except Exception as exc:  # the YAML parser raises its own error types
            raise ConfigError(
                f"Cannot parse the override '{arg}' ({str(exc).splitlines()[0]}); quote or fix its value."
            ) from exc
    return OmegaConf.from_dotlist(dotlist)


def _resolve(cfg: DictConfig) -> None:
    """Resolve interpolations in place; unknown resolvers and missing values fail in one sentence."""
    try:
        OmegaConf.resolve(cfg)
        OmegaConf.to_container(cfg, throw_on_missing=True)
    except OmegaConfBaseException as exc:
        first = str(exc).splitlines()[0]
        if "Unsupported interpolation type" in first:
            raise ConfigError(
                f"{first}; only ${{oc.env:VAR,default}} and plain ${{key}} interpolations are allowed in configs."
            ) from exc
        raise ConfigError(f"Incomplete config: {first}; set it in a config file or on the CLI.") from exc


def compose(args: list[str] | None = None) -> DictConfig:
    """Compose and validate the run config for CLI-style ``args`` (``data=pems08 trainer.max_epochs=5``).

    Returns a structured ``DictConfig`` (typed, closed to unknown keys) with interpolations resolved.
    """
    choices, experiment, dotlist = _split_args(list(args or []))
    root_cfg = _load_yaml(config_dir() / "config.yaml")
    group_choice = {g: str(v) for g, v in (root_cfg.pop("defaults", None) or {}).items()}
    exp_cfg = _load_yaml(_experiment_file(experiment)) if experiment else OmegaConf.create()
    group_choice.update({g: str(v) for g, v in (exp_cfg.pop("defaults", None) or {}).items()})
    group_choice.update(choices)
    unknown_groups = set(group_choice) - set(GROUPS)
    if unknown_groups:
        raise ConfigError(
            f"Unknown config group(s) {sorted(unknown_groups)}; groups are {', '.join(GROUPS)}."
        )

    cfg = _schema_with_model(group_choice["model"])
    cfg = _merge(cfg, root_cfg, "configs/config.yaml")
    for group in GROUPS:
        path = _group_file(group, group_choice[group])
        body = _load_yaml(path)
        cfg = _merge(cfg, OmegaConf.create({group: body}), str(path.relative_to(project_root())))
    if experiment:
        cfg = _merge(cfg, exp_cfg, f"experiment {experiment}")
    cfg = _merge(cfg, _parse_dotlist(dotlist), "command line")
    cfg.choices = {**group_choice, "experiment": experiment or ""}
    _resolve(cfg)
    validate_values(cfg)
    return cfg


def validate_values(cfg: DictConfig) -> None:
    """Check value domains that types alone cannot express (string choices are Enums the schema checks);
    raise ``ConfigError`` naming the key."""
    log_model = OmegaConf.select(cfg, "logger.wandb.log_model")
    if log_model not in (False, True, "all"):
        raise ConfigError(
            f"Invalid value '{log_model}' for 'logger.wandb.log_model'; choose one of false, true, all."
        )
    data = cfg.data
    if data.input_len < 1 or data.horizon < 1:
        raise ConfigError(
            f"data.input_len and data.horizon must be positive integers, got data.input_len={data.input_len} and "
            f"data.horizon={data.horizon}."
        )
    ratios = list(data.split.ratios)
    if len(ratios) != 3 or any(r < 0 for r in ratios) or abs(sum(ratios) - 1.0) > 1e-6:
        raise ConfigError(
            f"data.split.ratios must be three non-negative fractions summing to 1, got {ratios}."
        )
    if data.split.mode == "borders" and len(data.split.borders) != 3:
        raise ConfigError("data.split.mode=borders needs data.split.borders=[train_end,val_end,test_end].")
    if data.batch_size < 1 or data.eval_batch_size < 1:
        raise ConfigError("data.batch_size and data.eval_batch_size must be at least 1.")
    if data.name == "synthetic" and data.steps_per_day != data.synthetic.steps_per_day:
        raise ConfigError(
            f"data.steps_per_day={data.steps_per_day} differs from data.synthetic.steps_per_day="
            f"{data.synthetic.steps_per_day}, the period the synthetic series is generated with; set "
            f"data.synthetic.steps_per_day={data.steps_per_day} instead."
        )
    if data.nan_policy == "mask" and cfg.metrics.protocol == "official" and math.isnan(data.null_val):
        raise ConfigError(
            "data.nan_policy=mask marks missing values as NaN (data.null_val=nan), which the unmasked official "
            "protocol cannot score; set metrics.protocol=masked or a numeric data.null_val."
        )
    try:
        model = validate_model_config(cfg.model)
    except (ValueError, TypeError) as exc:
        raise ConfigError(str(exc)) from exc
    if model is not cfg.model:
        cfg.model = OmegaConf.structured(model)


def compose_saved(path: str | Path, args: list[str] | None = None) -> DictConfig:
    """Re-validate a run's saved ``config.yaml`` and apply dotlist overrides (for resume and eval)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"No saved config at {path}; point to a run directory written by `stm3 train`.")
    saved = _load_yaml(path)
    model_name = OmegaConf.select(saved, "model.name")
    if not model_name:
        raise ConfigError(f"{path} has no model.name; it is not a config written by `stm3 train`.")
    cfg = _merge(_schema_with_model(str(model_name)), saved, str(path))
    _, _, dotlist = _split_args(list(args or []))
    cfg = _merge(cfg, _parse_dotlist(dotlist), "command line")
    _resolve(cfg)
    validate_values(cfg)
    return cfg
