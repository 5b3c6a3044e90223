"""Forecasting metrics as one DDP-synced ``torchmetrics.Metric`` with per-horizon-step sums.

Protocols (``metrics.protocol``):

- ``official`` (STM3 / AGCRN ``All_Metrics``): MAE and RMSE over every entry (zeros included); MAPE over entries
  with truth > 0 as ``|y - ŷ| / (y + eps)`` with ``eps = metrics.mape_eps``, default ``1e-3`` (the release's
  ``lib/metrics.py`` adds 1e-3 to the truth; it barely matters since truths are > 0, but it is kept so that
  MAPE is the release's number); WAPE ``Σ|y - ŷ| / Σ|y|`` over every entry.
- ``masked`` (BasicTS / DCRNN): entries whose truth equals ``null_val`` (NaN when ``null_val`` is NaN) are
  excluded from every metric; MAPE additionally skips zero truths and divides by ``|y|`` (no epsilon).

Every value is a ratio of global sums, so RMSE is ``sqrt`` of the global mean squared error (not a mean of
per-batch RMSEs) and the result is identical however the windows are batched or sharded across processes.
MAPE and WAPE are fractions (multiply by 100 for %).
"""

from __future__ import annotations

import math

import torch
from torchmetrics import Metric

METRIC_NAMES: tuple[str, ...] = ("mae", "rmse", "mape", "wape")
PROTOCOLS: tuple[str, ...] = ("official", "masked")


def valid_mask(target: torch.Tensor, null_val: float) -> torch.Tensor:
    """Entries that are not missing: ``target != null_val`` (or not NaN when ``null_val`` is NaN)."""
    if math.isnan(null_val):
        return ~torch.isnan(target)
    return target != null_val


class ForecastMetrics(Metric):
    """Accumulates per-step sums for MAE/RMSE/MAPE/WAPE over ``pred, target: [B, H, N, C]``.

    ``compute()`` returns a flat dict: ``{metric}`` averaged over all horizon steps and ``{metric}@{h}`` for each
    1-based step ``h`` in ``horizons`` (steps beyond the forecast length are ignored).
    """

    full_state_update = False
    higher_is_better = False

    def __init__(
        self,
        horizon: int,
        protocol: str = "official",
        null_val: float = 0.0,
        mape_eps: float = 1e-3,
        horizons: list[int] | tuple[int, ...] = (),
    ) -> None:
        super().__init__()
        if protocol not in PROTOCOLS:
            raise ValueError(f"Unknown metrics protocol '{protocol}'; use one of {', '.join(PROTOCOLS)}.")
        self.horizon, self.protocol = horizon, protocol
        self.null_val, self.mape_eps = float(null_val), mape_eps
        self.horizons = [h for h in horizons if 1 <= h <= horizon]
        for name in ("abs_err", "sq_err", "count", "ape", "ape_count", "abs_true"):
            self.add_state(name, default=torch.zeros(horizon, dtype=torch.float64), dist_reduce_fx="sum")
        # Windows scored so far (all processes): fewer than the split holds when limit_*_batches cuts it.
        self.add_state("windows", default=torch.zeros((), dtype=torch.long), dist_reduce_fx="sum")

    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """``pred, target: [B, H, N, C]`` in the same units."""
        if pred.shape != target.shape or pred.shape[1] != self.horizon:
            raise ValueError(
                f"pred {tuple(pred.shape)} and target {tuple(target.shape)} must both be [B, {self.horizon}, N, C]."
            )
        pred, target = pred.double(), target.double()
        if self.protocol == "masked":
            mask = valid_mask(target, self.null_val)
            mape_mask = mask & (target.abs() > 0)
            denom = target.abs()
        else:
            mask = torch.ones_like(target, dtype=torch.bool)
            mape_mask = target > 0
            denom = target + self.mape_eps
        err = torch.where(mask, pred - target, torch.zeros_like(pred))
        dims = [0, 2, 3]
        self.abs_err = self.abs_err + err.abs().sum(dims)
        self.sq_err = self.sq_err + err.square().sum(dims)
        self.count = self.count + mask.sum(dims)
        self.abs_true = self.abs_true + torch.where(mask, target.abs(), torch.zeros_like(target)).sum(dims)
        ape = torch.where(mape_mask, (pred - target).abs() / torch.where(mape_mask, denom, 1.0), 0.0)
        self.ape = self.ape + ape.sum(dims)
        self.ape_count = self.ape_count + mape_mask.sum(dims)
        self.windows = self.windows + pred.shape[0]

    @staticmethod
    def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
        return torch.where(den > 0, num / den.clamp_min(1e-300), torch.full_like(num, float("nan")))

    def _values(self, sl: slice | int) -> dict[str, float]:
        s = lambda t: t[sl].sum()  # noqa: E731
        return {
            "mae": float(self._ratio(s(self.abs_err), s(self.count))),
            "rmse": float(self._ratio(s(self.sq_err), s(self.count)).sqrt()),
            "mape": float(self._ratio(s(self.ape), s(self.ape_count))),
            "wape": float(self._ratio(s(self.abs_err), s(self.abs_true))),
        }

    def compute(self) -> dict[str, float]:
        out = self._values(slice(None))
        for h in self.horizons:
            out.update({f"{k}@{h}": v for k, v in self._values(h - 1).items()})
        return out

    def scored_windows(self) -> int:
        """How many windows were scored, summed over processes."""
        with self.sync_context():
            return int(self.windows)

    def per_step(self) -> dict[str, list[float]]:
        """Every metric at each step ``1..H``: ``{"mae": [H values], ...}``."""
        with self.sync_context():
            steps = [self._values(i) for i in range(self.horizon)]
        return {k: [s[k] for s in steps] for k in METRIC_NAMES}
