"""Small STM3 builds shared by the STM3 model tests (CPU, torch kernel backend, short windows)."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from stm3_lightning.models.stm3.config import STM2Config, STM3Config
from stm3_lightning.models.stm3.network import STM3Network
from stm3_lightning.types import DataInfo

SMALL_INFO = DataInfo(num_nodes=6, input_len=8, horizon=3)
SMALL_SIZES = {"hidden_dim": 2, "node_emb_dim": 4, "d_state": 4, "kernel_backend": "torch"}


def small_config(model: str = "stm3", **overrides: object) -> STM2Config:
    """A small config of ``model`` (stm3 | stm2) with ``overrides`` applied."""
    schema = STM3Config if model == "stm3" else STM2Config
    return schema(**{**SMALL_SIZES, **overrides})


@pytest.fixture
def config() -> Callable[..., STM2Config]:
    """``config(model="stm3", **overrides)`` -> a small config."""
    return small_config


@pytest.fixture
def info() -> DataInfo:
    return SMALL_INFO


@pytest.fixture
def build() -> Callable[..., STM3Network]:
    """``build(model="stm3", seed=0, info=SMALL_INFO, **overrides)`` -> a seeded small network."""

    def make(
        model: str = "stm3", seed: int = 0, info: DataInfo = SMALL_INFO, **overrides: object
    ) -> STM3Network:
        torch.manual_seed(seed)
        return STM3Network(small_config(model, **overrides), info)

    return make


@pytest.fixture
def batch() -> torch.Tensor:
    """x: [2, 8, 6, 3] (value + two time features), seeded."""
    return torch.randn(
        2, SMALL_INFO.input_len, SMALL_INFO.num_nodes, 3, generator=torch.Generator().manual_seed(1)
    )
