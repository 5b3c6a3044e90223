"""Output head: flatten order (l, d, q) per node, output (h, c)."""

from __future__ import annotations

import torch

from stm3_lightning.models.stm3.head import ForecastHead


def test_flatten_and_output_order() -> None:
    torch.manual_seed(0)
    head = ForecastHead(input_len=3, width=4, horizon=5, out_dim=2)
    x = torch.randn(2, 6, 3, 2, 2)  # [B, N, L, D, Q] with M = D * Q = 4
    out = head(x)
    assert out.shape == (2, 5, 6, 2)
    b, n, h, c = 1, 4, 3, 1
    flat = torch.stack([x[b, n, step, d, q] for step in range(3) for d in range(2) for q in range(2)])
    expected = head.proj.weight[h * 2 + c] @ flat + head.proj.bias[h * 2 + c]
    torch.testing.assert_close(out[b, h, n, c], expected)
