"""Causal attention across the Q scale tokens of every (node, step): "hierarchical aggregation" of the AGCCN.

The computation lives in :mod:`.kernels.scale_attention` (PyTorch reference and fused CPU kernel, picked by the
kernel backend); this module holds the four projections.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stm3_lightning.models.stm3.kernels.backends import Impl
from stm3_lightning.models.stm3.kernels.scale_attention import (
    attention_impl,
    scale_attention,
    scale_attention_ref,
)


class CausalScaleAttention(nn.Module):
    """Single-head attention over scales where scale ``i`` attends to scales ``j >= i`` (itself and coarser ones).

    Tokens are the Q scales, each of dimension D; ``q, k, v`` and the output are ``Linear(D -> D)`` with bias.
    ``kernel_backend``: ``ref`` keeps it on PyTorch operations; the others use the fused CPU kernel where it
    applies (float32 CPU tensors, D and Q up to 16).
    """

    def __init__(self, dim: int, kernel_backend: str = "auto") -> None:
        super().__init__()
        self.dim = dim
        self.kernel_backend = kernel_backend
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's constructor init: xavier-uniform weights, zero biases."""
        for proj in self._projections():
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj, self.out_proj

    def stacked(self) -> tuple[Tensor, Tensor]:
        """The q, k, v, out projections stacked: weight [4, D, D], bias [4, D]."""
        projections = self._projections()
        return (
            torch.stack([proj.weight for proj in projections]),
            torch.stack([proj.bias for proj in projections]),
        )

    def uses_kernel(self, g: Tensor) -> bool:
        """Whether :meth:`forward` on g: [..., D, Q] runs the fused CPU kernel."""
        return attention_impl(g, self.parameters(), self.kernel_backend) == Impl.kernel

    def forward(self, g: Tensor) -> Tensor:
        """g: [..., D, Q] -> attended values [..., D, Q] (before the residual)."""
        return scale_attention(g, *self.stacked(), backend=self.kernel_backend)

    def attention_reference(self, g: Tensor) -> Tensor:
        """The PyTorch-operations path (any device and dtype): g: [..., D, Q] -> [..., D, Q]."""
        return scale_attention_ref(g, *self.stacked())
