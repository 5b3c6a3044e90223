"""Output head: one linear map from a node's whole encoded window to its forecast, shared by all nodes."""

from __future__ import annotations

from torch import Tensor, nn


class ForecastHead(nn.Module):
    """``Linear(L * D * Q -> H * C_out)`` on each node's flattened ``[L, D, Q]`` (order l, d, q); no normalisation."""

    def __init__(self, input_len: int, width: int, horizon: int, out_dim: int) -> None:
        super().__init__()
        self.horizon = horizon
        self.out_dim = out_dim
        self.proj = nn.Linear(input_len * width, horizon * out_dim)

    def forward(self, x: Tensor) -> Tensor:
        """x: [B, N, L, D, Q] -> [B, H, N, C_out]."""
        b, n = x.shape[:2]
        out = self.proj(x.reshape(b, n, -1)).view(b, n, self.horizon, self.out_dim)
        return out.transpose(1, 2)
