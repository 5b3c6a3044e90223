"""The release's per-batch test averaging against global metrics, on toy predictions with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stm3_lightning.metrics.forecasting import ForecastMetrics
from stm3_lightning.metrics.per_batch import global_metrics, per_batch_metrics


def toy() -> tuple[np.ndarray, np.ndarray]:
    """3 windows, 1 step, 1 node: errors 1, 1, 4 (truth 10, 10, 10)."""
    true = np.full((3, 1, 1, 1), 10.0)
    pred = true + np.array([1.0, 1.0, 4.0]).reshape(3, 1, 1, 1)
    return pred, true


def test_per_batch_rmse_is_the_batch_size_weighted_mean_of_batch_rmses() -> None:
    pred, true = toy()
    out = per_batch_metrics(pred, true, batch_size=2)
    # batches {1, 1} and {4}: RMSEs 1 and 4, weights 2 and 1 -> (2*1 + 4) / 3 = 2; global sqrt((1+1+16)/3) = sqrt(6)
    assert out["rmse"] == pytest.approx(2.0)
    assert global_metrics(pred, true)["rmse"] == pytest.approx(math.sqrt(6.0))
    assert out["mae"] == pytest.approx(2.0) == global_metrics(pred, true)["mae"]
    assert out["mape"] == pytest.approx((2 * (1 / 10.001) + 4 / 10.001) / 3)


def test_one_batch_per_window_gives_mean_absolute_error_as_rmse() -> None:
    pred, true = toy()
    assert per_batch_metrics(pred, true, batch_size=1)["rmse"] == pytest.approx(2.0)
    assert per_batch_metrics(pred, true, batch_size=3)["rmse"] == pytest.approx(math.sqrt(6.0))


def test_average_horizon_is_the_mean_over_steps_and_global_metrics_match_forecast_metrics() -> None:
    rng = np.random.default_rng(0)
    true = rng.uniform(0, 50, size=(7, 4, 3, 1))
    true[0, 0, 0, 0] = 0.0  # a zero truth: counted in MAE/RMSE, not in MAPE
    pred = true + rng.normal(0, 5, size=true.shape)
    out = per_batch_metrics(pred, true, batch_size=3)
    assert out["rmse"] == pytest.approx(np.mean(out["per_step"]["rmse"]))
    assert len(out["per_step"]["mae"]) == 4
    metrics = ForecastMetrics(horizon=4, protocol="official")
    metrics.update(torch.from_numpy(pred), torch.from_numpy(true))
    expected = metrics.compute()
    glob = global_metrics(pred, true)
    assert glob["mae"] == pytest.approx(expected["mae"]) and glob["rmse"] == pytest.approx(expected["rmse"])
    assert glob["mape"] == pytest.approx(expected["mape"])
    assert out["mae"] == pytest.approx(expected["mae"])  # MAE does not depend on the batching
    assert out["rmse"] < glob["rmse"]


def test_shape_and_batch_size_errors() -> None:
    pred, true = toy()
    with pytest.raises(ValueError, match="must both be"):
        per_batch_metrics(pred[:, 0], true[:, 0], 2)
    with pytest.raises(ValueError, match="at least 1"):
        per_batch_metrics(pred, true, 0)
