from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from stm3_lightning.metrics.forecasting import ForecastMetrics


def _np_metrics(
    pred: np.ndarray, true: np.ndarray, protocol: str, null_val: float, eps: float = 1e-3
) -> dict:
    if protocol == "official":
        mask = np.ones_like(true, dtype=bool)
        mape_mask = true > 0
        denom = true + eps
    else:
        mask = ~np.isnan(true) if math.isnan(null_val) else true != null_val
        mape_mask = mask & (np.abs(true) > 0)
        denom = np.abs(true)
    err = (pred - true)[mask]
    return {
        "mae": np.abs(err).mean(),
        "rmse": np.sqrt((err**2).mean()),
        "mape": (np.abs(pred - true)[mape_mask] / denom[mape_mask]).mean(),
        "wape": np.abs(err).sum() / np.abs(true[mask]).sum(),
    }


def _data(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    true = rng.integers(0, 50, size=(10, 4, 5, 1)).astype(np.float64)
    true[true < 5] = 0.0  # zeros = missing under the masked protocol
    pred = true + rng.normal(0, 3, size=true.shape)
    return pred, true


@pytest.mark.parametrize("protocol", ["official", "masked"])
def test_matches_numpy_and_batching_invariant(protocol: str) -> None:
    pred, true = _data()
    m = ForecastMetrics(horizon=4, protocol=protocol, null_val=0.0, horizons=[1, 4])
    for sl in (slice(0, 3), slice(3, 4), slice(4, 10)):  # uneven batches
        m.update(torch.from_numpy(pred[sl]), torch.from_numpy(true[sl]))
    got = m.compute()
    want = _np_metrics(pred, true, protocol, 0.0)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-9), k
    step4 = _np_metrics(pred[:, 3:4], true[:, 3:4], protocol, 0.0)
    assert got["mae@4"] == pytest.approx(step4["mae"], rel=1e-9)
    assert got["rmse@4"] == pytest.approx(step4["rmse"], rel=1e-9)
    per_step = m.per_step()
    assert len(per_step["mae"]) == 4
    if protocol == "official":  # equal counts per step: the overall MAE is the mean over steps
        assert np.mean(per_step["mae"]) == pytest.approx(got["mae"], rel=1e-9)


def test_rmse_is_global_not_mean_of_batch_rmses() -> None:
    pred = torch.tensor([0.0, 0.0, 0.0, 0.0]).reshape(4, 1, 1, 1)
    true = torch.tensor([1.0, 1.0, 1.0, 5.0]).reshape(4, 1, 1, 1)
    m = ForecastMetrics(horizon=1)
    m.update(pred[:3], true[:3])
    m.update(pred[3:], true[3:])
    assert m.compute()["rmse"] == pytest.approx(math.sqrt((3 + 25) / 4))


def test_all_zero_truth_and_nan_null() -> None:
    m = ForecastMetrics(horizon=1, protocol="official")
    m.update(torch.ones(2, 1, 1, 1), torch.zeros(2, 1, 1, 1))
    out = m.compute()
    assert out["mae"] == 1.0 and math.isnan(out["mape"])  # no positive truth: MAPE undefined, not inf
    masked = ForecastMetrics(horizon=1, protocol="masked", null_val=float("nan"))
    true = torch.tensor([1.0, float("nan"), 3.0]).reshape(3, 1, 1, 1)
    masked.update(torch.tensor([2.0, 100.0, 3.0]).reshape(3, 1, 1, 1), true)
    assert masked.compute()["mae"] == pytest.approx(0.5)


def test_shape_mismatch_message() -> None:
    m = ForecastMetrics(horizon=3)
    with pytest.raises(ValueError, match=r"must both be \[B, 3, N, C\]"):
        m.update(torch.zeros(2, 3, 4, 1), torch.zeros(2, 2, 4, 1))
