from __future__ import annotations

import pytest
import torch

from stm3_lightning.models.baselines import LinearConfig, NodeLinear, Persistence, SeasonalNaive
from stm3_lightning.models.registry import build_model
from stm3_lightning.types import DataInfo


def test_persistence_repeats_last_value() -> None:
    x = torch.randn(2, 5, 3, 3)
    pred, aux = Persistence(4)(x)
    assert pred.shape == (2, 4, 3, 1) and aux == {}
    torch.testing.assert_close(pred[:, 2], x[:, -1, :, :1])


def test_seasonal_naive_one_period_back() -> None:
    x = torch.arange(10.0).reshape(1, 10, 1, 1)
    pred, _ = SeasonalNaive(input_len=10, horizon=6, period=4)(x)
    # targets t=10..15; one period earlier: 6,7,8,9 then 6,7 (repeating the last period)
    assert pred.flatten().tolist() == [6, 7, 8, 9, 6, 7]
    with pytest.raises(ValueError, match="input_len >= period"):
        SeasonalNaive(input_len=3, horizon=2, period=4)


def test_linear_starts_as_persistence_and_builds() -> None:
    x = torch.randn(2, 6, 3, 1)
    pred, _ = NodeLinear(3, 6, 4, per_node=True)(x)
    torch.testing.assert_close(pred[:, 1], x[:, -1])
    model = build_model(LinearConfig(per_node=False), DataInfo(num_nodes=3, input_len=6, horizon=4))
    assert sum(p.numel() for p in model.parameters()) == 6 * 4 + 4
