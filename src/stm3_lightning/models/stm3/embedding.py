"""Input embedding: per-step feature transform followed by parallel multiscale convolutions.

The release's ``extract_multiscale_features`` names its input ``b n l d`` while it receives ``[B, L, N, D]``, so its
convolutions slide along the **node** axis (reference §2.1). ``axis="node"`` reproduces that; ``axis="time"``
convolves along time as the paper describes.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

from stm3_lightning.models.stm3.mamba import merged_same_kernels


class MultiscaleEmbedding(nn.Module):
    """``Linear(C_in -> D)`` then Q full ``Conv1d(D -> D, kernel=s_q, padding='same')`` stacked on a scale axis.

    Parameters are registered in the release's order (convolutions, then the feature transform).
    """

    def __init__(self, in_dim: int, hidden_dim: int, scales: list[int], axis: str = "node") -> None:
        super().__init__()
        if axis not in ("node", "time"):
            raise ValueError(f"Invalid multiscale preprocessing axis {axis!r}; choose node or time.")
        self.axis = axis
        self.convs = nn.ModuleList(
            nn.Conv1d(hidden_dim, hidden_dim, kernel_size=int(k), padding="same") for k in scales
        )
        self.feature_transform = nn.Linear(in_dim, hidden_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, L, N, C_in] -> [B, N, L, D, Q]."""
        h = self.feature_transform(x)
        b, length, n, d = h.shape
        if self.axis == "node":
            seq = h.permute(0, 1, 3, 2).reshape(b * length, d, n)  # [(B L), D, N]
            out = self.multiscale(seq)  # [(B L), Q, D, N]
            return out.view(b, length, -1, d, n).permute(0, 4, 1, 3, 2).contiguous()
        seq = h.permute(0, 2, 3, 1).reshape(b * n, d, length)  # [(B N), D, L]
        out = self.multiscale(seq)  # [(B N), Q, D, L]
        return out.view(b, n, -1, d, length).permute(0, 1, 4, 3, 2).contiguous()

    def multiscale(self, seq: Tensor) -> Tensor:
        """seq: [b, D, S] -> [b, Q, D, S]: every scale's 'same' convolution of seq, as one convolution.

        The Q kernels are merged into one (see :func:`merged_same_kernels`).
        """
        weight, bias, half = merged_same_kernels(self.convs)  # [Q * D, D, 2 half + 1]
        out = F.conv1d(seq, weight, bias, padding=half)
        return out.view(seq.shape[0], len(self.convs), seq.shape[1], seq.shape[2])
