"""Model zoo: name -> (config schema, builder, config check), listed explicitly.

Every model is an ``nn.Module`` whose ``forward(x)`` takes ``x: [B, L, N, C]`` (scaled value channel first, then
optional time features) and returns ``(pred, aux)`` with ``pred: [B, H, N, C_out]`` in scaled units and ``aux`` a
dict of named, already weighted auxiliary losses (scalars) that the ``Forecaster`` adds to the loss and logs.
Models defined outside this package join the zoo with :func:`register_model`.
"""

from __future__ import annotations

import difflib
import functools
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from stm3_lightning.models import baselines
from stm3_lightning.models.stm3.config import STM2Config, STM3Config, coerce_config
from stm3_lightning.models.stm3.network import build_stm2, build_stm3
from stm3_lightning.types import DataInfo

__all__ = ["DataInfo", "ModelEntry", "available_models", "build_model", "model_schema", "register_model"]

Builder = Callable[[Any, DataInfo], nn.Module]
# Validates and canonicalises a config of the model's schema: ``coerce(cfg, schema) -> schema instance``.
Coerce = Callable[[Any, type], Any]


@dataclass(frozen=True)
class ModelEntry:
    """One model of the zoo: its config dataclass, its builder and, optionally, its config check."""

    schema: type
    build: Builder
    coerce: Coerce | None = None


@functools.cache
def builtin_models() -> dict[str, ModelEntry]:
    """The models shipped with the package."""
    return {
        "persistence": ModelEntry(baselines.PersistenceConfig, baselines.build_persistence),
        "seasonal_naive": ModelEntry(baselines.SeasonalNaiveConfig, baselines.build_seasonal_naive),
        "linear": ModelEntry(baselines.LinearConfig, baselines.build_linear),
        "stm3": ModelEntry(STM3Config, build_stm3, coerce_config),
        "stm2": ModelEntry(STM2Config, build_stm2, coerce_config),
    }


_REGISTERED: dict[str, ModelEntry] = {}


def register_model(name: str, schema: type, coerce: Coerce | None = None) -> Callable[[Builder], Builder]:
    """Decorator adding ``builder(cfg, info) -> nn.Module`` to the zoo under ``name`` with its config dataclass."""

    def wrap(builder: Builder) -> Builder:
        _REGISTERED[name] = ModelEntry(schema, builder, coerce)
        return builder

    return wrap


def _zoo() -> dict[str, ModelEntry]:
    return {**_REGISTERED, **builtin_models()}


def available_models() -> list[str]:
    return sorted(_zoo())


def _lookup(name: str) -> ModelEntry:
    zoo = _zoo()
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model '{name}'; choose one of {', '.join(sorted(zoo))}.{hint}")
    return zoo[name]


def model_schema(name: str) -> type:
    """The config dataclass of model ``name``."""
    return _lookup(name).schema


def validate_model_config(cfg: Any) -> Any:
    """Validate (and canonicalise) a model config with its model's check, when it has one.

    Returns the validated dataclass instance; raises ``ValueError`` naming the key.
    """
    entry = _lookup(cfg.name)
    return entry.coerce(cfg, entry.schema) if entry.coerce else cfg


def build_model(cfg: Any, info: DataInfo) -> nn.Module:
    """Instantiate the model named by ``cfg.name`` for data described by ``info``."""
    return _lookup(cfg.name).build(cfg, info)
