"""Model zoo: name -> (config schema, builder).

Every model is an ``nn.Module`` whose ``forward(x)`` takes ``x: [B, L, N, C]`` (scaled value channel first, then
optional time features) and returns ``(pred, aux)`` with ``pred: [B, H, N, C_out]`` in scaled units and ``aux`` a
dict of named, already weighted auxiliary losses (scalars) that the ``Forecaster`` adds to the loss and logs.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data it is built for."""

    num_nodes: int
    input_len: int
    horizon: int
    input_dim: int = 1
    output_dim: int = 1
    steps_per_day: int = 288
    # Seasonal period in steps (used by the seasonal-naive baseline).
    period: int = 288


Builder = Callable[[object, DataInfo], nn.Module]
_REGISTRY: dict[str, tuple[type, Builder]] = {}


def register_model(name: str, schema: type) -> Callable[[Builder], Builder]:
    """Decorator registering ``builder(cfg, info) -> nn.Module`` under ``name`` with its config dataclass."""

    def wrap(builder: Builder) -> Builder:
        _REGISTRY[name] = (schema, builder)
        return builder

    return wrap


def _ensure_loaded() -> None:
    # Importing the zoo modules runs their @register_model decorators.
    from stm3_lightning.models import baselines  # noqa: F401
    from stm3_lightning.models.stm3 import network  # noqa: F401


def available_models() -> list[str]:
    _ensure_loaded()
    return sorted(_REGISTRY)


def _lookup(name: str) -> tuple[type, Builder]:
    _ensure_loaded()
    if name not in _REGISTRY:
        close = difflib.get_close_matches(name, list(_REGISTRY), n=3)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise ValueError(f"Unknown model '{name}'; choose one of {', '.join(sorted(_REGISTRY))}.{hint}")
    return _REGISTRY[name]


def model_schema(name: str) -> type:
    """The config dataclass of model ``name``."""
    return _lookup(name)[0]


def validate_model_config(cfg: object) -> object:
    """Validate (and canonicalise) a model config with its schema's ``validate`` function, when it has one.

    Returns the validated dataclass instance; raises ``ValueError`` naming the key.
    """
    schema = model_schema(cfg.name)
    import importlib

    module = importlib.import_module(schema.__module__)
    check = getattr(module, "coerce_config", None)
    return check(cfg, schema) if check else cfg


def build_model(cfg: object, info: DataInfo) -> nn.Module:
    """Instantiate the model named by ``cfg.name`` for data described by ``info``."""
    return _lookup(cfg.name)[1](cfg, info)
