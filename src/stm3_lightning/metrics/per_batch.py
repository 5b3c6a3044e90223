"""The release's final test metrics (``model/BasicTrainer.py`` ``Trainer.test``), computed from saved predictions.

For every forecast step ``t`` and test batch ``b`` (loader order, ``batch_size`` windows, the last one smaller) the
release computes ``All_Metrics(pred[b, t], true[b, t])``: MAE and RMSE over every entry, MAPE over entries with
truth > 0 as ``|y - ŷ| / (y + 1e-3)``. It averages them over batches weighted by each batch's size and reports the
mean over steps ("Average Horizon"). MAE is unchanged by this averaging; RMSE becomes a mean of per-batch,
per-step RMSEs, which is smaller than the global ``sqrt(mean squared error)`` (Jensen), and MAPE a mean of
per-batch ratios. :func:`global_metrics` gives the global values of the same predictions for comparison.
"""

from __future__ import annotations

import numpy as np

# lib/metrics.py: MAPE's denominator offset, as released.
RELEASE_MAPE_EPS = 1e-3


def _batch_step_metrics(pred: np.ndarray, true: np.ndarray, mape_eps: float) -> tuple[np.ndarray, ...]:
    """``pred, true: [b, H, N, C]`` -> per-step ``(mae, rmse, mape)``, each ``[H]`` (unmasked; MAPE truth > 0)."""
    err = (pred - true).astype(np.float64)
    axes = (0, 2, 3)
    mae = np.abs(err).mean(axis=axes)
    rmse = np.sqrt(np.square(err).mean(axis=axes))
    valid = true > 0
    ape = np.where(valid, np.abs(err) / np.where(valid, true + mape_eps, 1.0), 0.0)
    count = valid.sum(axis=axes)
    mape = np.where(count > 0, ape.sum(axis=axes) / np.maximum(count, 1), 0.0)
    return mae, rmse, mape


def per_batch_metrics(
    pred: np.ndarray, true: np.ndarray, batch_size: int, mape_eps: float = RELEASE_MAPE_EPS
) -> dict[str, object]:
    """The release's ``Trainer.test`` numbers for ``pred, true: [S, H, N, C]`` scored in batches of ``batch_size``.

    Returns ``{"mae", "rmse", "mape"}`` (mean over steps of the batch-size-weighted per-batch values) and
    ``"per_step": {"mae": [H], "rmse": [H], "mape": [H]}``.
    """
    if pred.shape != true.shape or pred.ndim != 4:
        raise ValueError(f"pred {pred.shape} and true {true.shape} must both be [S, H, N, C].")
    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}.")
    sums = np.zeros((3, pred.shape[1]))
    for start in range(0, pred.shape[0], batch_size):
        chunk = slice(start, start + batch_size)
        weight = pred[chunk].shape[0]
        sums += weight * np.stack(_batch_step_metrics(pred[chunk], true[chunk], mape_eps))
    steps = sums / pred.shape[0]
    names = ("mae", "rmse", "mape")
    out: dict[str, object] = {k: float(v.mean()) for k, v in zip(names, steps, strict=True)}
    out["per_step"] = {k: [float(x) for x in v] for k, v in zip(names, steps, strict=True)}
    return out


def global_metrics(
    pred: np.ndarray, true: np.ndarray, mape_eps: float = RELEASE_MAPE_EPS
) -> dict[str, float]:
    """Global values over every entry of ``pred, true: [S, H, N, C]``: MAE, ``sqrt`` of the global MSE, the mean
    over steps of each step's global RMSE, and MAPE over truth > 0 (as :mod:`stm3_lightning.metrics.forecasting`)."""
    mae, rmse_steps, _ = _batch_step_metrics(pred, true, mape_eps)
    err = (pred - true).astype(np.float64)
    valid = true > 0
    ape = np.abs(err[valid]) / (true[valid] + mape_eps)
    return {
        "mae": float(mae.mean()),
        "rmse": float(np.sqrt(np.square(err).mean())),
        "rmse_mean_over_steps": float(rmse_steps.mean()),
        "mape": float(ape.mean()) if ape.size else float("nan"),
    }
