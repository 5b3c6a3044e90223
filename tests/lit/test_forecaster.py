from __future__ import annotations

import pytest
import torch
from torch import nn

from stm3_lightning.config.schema import MetricsConfig, OptimConfig
from stm3_lightning.lit.forecaster import Forecaster


class _Affine(nn.Module):
    """pred = w * last value; aux loss = w^2 (to check it reaches the objective)."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.tensor(2.0))

    def forward(self, x: torch.Tensor):
        return self.w * x[:, -1:, :, :1].expand(-1, 2, -1, -1), {"reg": self.w**2}


def _module(real_value: bool, protocol: str = "official") -> Forecaster:
    return Forecaster(
        _Affine(),
        OptimConfig(),
        MetricsConfig(protocol=protocol, horizons=[1, 2]),
        horizon=2,
        mean=torch.tensor([10.0, 20.0]),
        std=torch.tensor([2.0, 4.0]),
        real_value=real_value,
        null_val=0.0,
    )


def test_loss_in_original_units_and_aux_added() -> None:
    m = _module(real_value=True)
    x = torch.ones(3, 4, 2, 1)  # scaled 1 -> prediction 2 (scaled) -> original 10+2*2=14, 20+2*4=28
    y = torch.zeros(3, 2, 2, 1)
    y[..., 0, 0], y[..., 1, 0] = 14.0, 30.0
    pred, aux = m.predict_units(x)
    assert pred[0, 0, :, 0].tolist() == [14.0, 28.0]
    m.log = lambda *a, **k: None  # no trainer attached
    total = m.training_step((x, y), 0)
    assert total.item() == pytest.approx(1.0 + 4.0)  # mean |err| = (0 + 2)/2, aux w^2 = 4
    total.backward()
    assert m.model.w.grad is not None


def test_scaled_units_when_not_real_value() -> None:
    m = _module(real_value=False)
    y = torch.full((1, 2, 2, 1), 14.0)
    t = m.target_units(y)
    assert t[0, 0, :, 0].tolist() == [2.0, -1.5]


def test_masked_loss_excludes_null() -> None:
    m = _module(real_value=True, protocol="masked")
    pred = torch.tensor([1.0, 5.0]).reshape(1, 2, 1, 1)
    target = torch.tensor([2.0, 0.0]).reshape(1, 2, 1, 1)
    assert m.prediction_loss(pred, target).item() == pytest.approx(1.0)
    official = _module(real_value=True)
    assert official.prediction_loss(pred, target).item() == pytest.approx(3.0)
