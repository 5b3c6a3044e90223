"""Memory layouts of the CPU kernels: time-major float32 inputs and outputs, channels padded to the lanes."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from stm3_lightning.models.stm3.kernels.constants import LANES


def padded_width(channels: int) -> int:
    """``channels`` rounded up to a multiple of :data:`~.constants.LANES` (the kernels' channel padding)."""
    return -(-channels // LANES) * LANES


def time_major(x: Tensor, width: int) -> Tensor:
    """A float32 ``[b, L, width]`` tensor with unit stride in its last dim holding ``x`` (zero-padded channels).

    x: [b, c, L] with c <= width; returns [b, L, width], a view of ``x`` when its storage already fits.
    """
    t = x.transpose(1, 2).float()
    if t.shape[2] != width:
        t = F.pad(t, (0, width - t.shape[2]))
    return t if t.stride(2) == 1 else t.contiguous()


def padded(x: Tensor | None, width: int) -> Tensor | None:
    """x: [c] or [n, c] -> float32 contiguous, zero-padded to ``width`` along the last dim (None stays None)."""
    return None if x is None else F.pad(x.detach().float(), (0, width - x.shape[-1])).contiguous()


def channel_major(y: Tensor, channels: int, dtype: torch.dtype) -> Tensor:
    """A kernel output y: [b, L, width] (float32) as [b, channels, L] in ``dtype`` (a view when float32)."""
    return y[..., :channels].transpose(1, 2).to(dtype)
