"""Z-score scaler fitted on the training rows only (global or per node), NaN-aware."""

from __future__ import annotations

import numpy as np
import torch


class ScalerError(ValueError):
    """The scaler cannot be fitted (e.g. a constant series)."""


class StandardScaler:
    """``(x - mean) / std`` with statistics from training rows; ``per_node`` = official ``column_wise``.

    Attributes: ``mean, std: [N]`` float32 (the same value repeated when global).
    """

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        self.mean = np.asarray(mean, dtype=np.float32)
        self.std = np.asarray(std, dtype=np.float32)

    @classmethod
    def fit(cls, values: np.ndarray, per_node: bool) -> StandardScaler:
        """Fit on ``values: [T_train, N]``; non-finite entries are ignored.

        Raises :class:`ScalerError` when a standard deviation is zero (constant series).
        """
        data = np.where(np.isfinite(values), values, np.nan).astype(np.float64)
        num_nodes = values.shape[1]
        if per_node:
            mean, std = np.nanmean(data, axis=0), np.nanstd(data, axis=0)
        else:
            mean = np.full(num_nodes, np.nanmean(data))
            std = np.full(num_nodes, np.nanstd(data))
        bad = np.flatnonzero(~(std > 0))
        if bad.size:
            where = f"node(s) {bad[:5].tolist()}" if per_node else "the whole training series"
            raise ScalerError(
                f"The training data of {where} is constant or missing (zero standard deviation), so it cannot be "
                "z-scored; drop those nodes or set data.scaler.kind=none."
            )
        return cls(mean, std)

    @classmethod
    def identity(cls, num_nodes: int) -> StandardScaler:
        return cls(np.zeros(num_nodes), np.ones(num_nodes))

    def transform(self, values: np.ndarray) -> np.ndarray:
        """``values: [T, N]`` -> scaled ``[T, N]``."""
        return ((values - self.mean) / self.std).astype(np.float32)

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``mean, std`` as float32 tensors ``[N]`` (for inverse-scaling predictions on any device)."""
        return torch.from_numpy(self.mean.copy()), torch.from_numpy(self.std.copy())
