"""Types shared by the data, model and config layers, so none of them imports another for them."""

from __future__ import annotations

from dataclasses import dataclass

from omegaconf import MISSING


@dataclass(frozen=True)
class DataInfo:
    """What a model needs to know about the data it is built for (known from the config and the dataset
    catalogue, before any data is loaded)."""

    num_nodes: int
    input_len: int
    horizon: int
    input_dim: int = 1
    output_dim: int = 1
    steps_per_day: int = 288
    # Seasonal period in steps (used by the seasonal-naive baseline).
    period: int = 288


@dataclass
class ModelConfig:
    """Fields every model shares; each model's own schema extends it (see :mod:`stm3_lightning.models.registry`)."""

    name: str = MISSING
