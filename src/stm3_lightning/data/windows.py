"""Sliding windows as views into one tensor: no per-window copies, one gather per batch."""

from __future__ import annotations

import numpy as np
import torch
from torch.utils.data import Dataset


def time_features(num_steps: int, steps_per_day: int, offset: int = 0) -> np.ndarray:
    """Time-of-day in [0, 1) and day-of-week in {0..6} for steps ``offset .. offset + num_steps - 1``.

    Returns: ``[T, 2]`` float32.
    """
    t = np.arange(offset, offset + num_steps)
    tod = (t % steps_per_day) / steps_per_day
    dow = (t // steps_per_day) % 7
    return np.stack([tod, dow], axis=1).astype(np.float32)


class WindowDataset(Dataset):
    """Stride-1 windows of a segment of one shared series tensor.

    ``inputs: [T, N, C]`` (scaled value channel first, then time features) and ``targets: [T, N, 1]`` (values in
    original units, missing entries set to ``null_val``) are shared by every split; item ``i`` is
    ``(inputs[s+i : s+i+L], targets[s+i+L : s+i+L+H])`` with ``s`` the segment's first window start.
    Batched access (``__getitems__``) gathers a whole batch with one indexing op.
    """

    def __init__(
        self, inputs: torch.Tensor, targets: torch.Tensor, first: int, size: int, input_len: int, horizon: int
    ) -> None:
        self.inputs, self.targets = inputs, targets
        self.first, self.size = first, size
        self.input_len, self.horizon = input_len, horizon
        self._x_offsets = torch.arange(input_len)
        self._y_offsets = torch.arange(input_len, input_len + horizon)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``x: [L, N, C]``, ``y: [H, N, 1]`` (views)."""
        if not 0 <= i < self.size:
            raise IndexError(f"window {i} out of range for a split of {self.size} windows")
        s = self.first + i
        return self.inputs[s : s + self.input_len], self.targets[
            s + self.input_len : s + self.input_len + self.horizon
        ]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns ``x: [b, L, N, C]``, ``y: [b, H, N, 1]`` for window ``indices``."""
        starts = torch.as_tensor(indices, dtype=torch.long) + self.first
        return self.inputs[starts[:, None] + self._x_offsets], self.targets[starts[:, None] + self._y_offsets]


def collate_batch(batch: object) -> object:
    """Collate for :class:`WindowDataset`: batches from ``__getitems__`` are already stacked."""
    if isinstance(batch, tuple) and len(batch) == 2 and all(isinstance(b, torch.Tensor) for b in batch):
        return batch
    return torch.utils.data.default_collate(batch)
