"""Small real baselines to check the pipeline: persistence, seasonal naive and a per-node linear model."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from stm3_lightning.types import DataInfo, ModelConfig


@dataclass
class PersistenceConfig(ModelConfig):
    name: str = "persistence"


@dataclass
class SeasonalNaiveConfig(ModelConfig):
    name: str = "seasonal_naive"
    # Season length in steps; 0 = the dataset's steps per day.
    period: int = 0


@dataclass
class LinearConfig(ModelConfig):
    name: str = "linear"
    # One weight matrix per node (True) or one shared by all nodes (False).
    per_node: bool = True


class Persistence(nn.Module):
    """Repeats the last observed value: ``ŷ[t+h] = x[t]`` for every step ``h``."""

    def __init__(self, horizon: int) -> None:
        super().__init__()
        self.horizon = horizon

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x: [B, L, N, C]`` -> ``[B, H, N, 1]``."""
        return x[:, -1:, :, :1].expand(-1, self.horizon, -1, -1), {}


class SeasonalNaive(nn.Module):
    """Value one period earlier: ``ŷ[t+h] = x[t+h-P]`` (repeating the last period when ``h >= P``)."""

    def __init__(self, input_len: int, horizon: int, period: int) -> None:
        super().__init__()
        if input_len < period:
            raise ValueError(
                f"seasonal_naive needs data.input_len >= period ({period} steps), got {input_len}; "
                "raise data.input_len or set model.period."
            )
        steps = input_len - period + torch.arange(horizon) % period
        self.register_buffer("steps", steps, persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x: [B, L, N, C]`` -> ``[B, H, N, 1]``."""
        return x[:, self.steps, :, :1], {}


class NodeLinear(nn.Module):
    """Linear map from the ``L`` past values to the ``H`` future values, per node or shared."""

    def __init__(self, num_nodes: int, input_len: int, horizon: int, per_node: bool) -> None:
        super().__init__()
        nodes = num_nodes if per_node else 1
        self.weight = nn.Parameter(torch.zeros(nodes, input_len, horizon))
        self.bias = nn.Parameter(torch.zeros(nodes, horizon))
        with torch.no_grad():
            self.weight[:, -1, :] = 1.0  # start from persistence

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """``x: [B, L, N, C]`` -> ``[B, H, N, 1]``."""
        out = torch.einsum("bln,nlh->bhn", x[..., 0], self.weight.expand(x.shape[2], -1, -1)) + self.bias.T
        return out[..., None], {}


def build_persistence(cfg: PersistenceConfig, info: DataInfo) -> nn.Module:
    return Persistence(info.horizon)


def build_seasonal_naive(cfg: SeasonalNaiveConfig, info: DataInfo) -> nn.Module:
    return SeasonalNaive(info.input_len, info.horizon, cfg.period or info.period)


def build_linear(cfg: LinearConfig, info: DataInfo) -> nn.Module:
    return NodeLinear(info.num_nodes, info.input_len, info.horizon, cfg.per_node)
