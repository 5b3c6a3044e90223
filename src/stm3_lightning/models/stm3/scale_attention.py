"""Causal attention across the Q scale tokens of every (node, step): "hierarchical aggregation" of the AGCCN."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

# The release fills masked scores with -1e4 (not -inf); after softmax these weights are exactly 0 in fp32.
MASKED_SCORE = -1e4


class CausalScaleAttention(nn.Module):
    """Single-head attention over scales where scale ``i`` attends to scales ``j >= i`` (itself and coarser ones).

    Tokens are the Q scales, each of dimension D; ``q, k, v`` and the output are ``Linear(D -> D)`` with bias.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's constructor init: xavier-uniform weights, zero biases."""
        for proj in (self.q_proj, self.k_proj, self.v_proj, self.out_proj):
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def forward(self, g: Tensor) -> Tensor:
        """g: [..., D, Q] -> attended values [..., D, Q] (before the residual)."""
        tokens = g.transpose(-1, -2)  # [..., Q, D]
        q, k, v = self.q_proj(tokens), self.k_proj(tokens), self.v_proj(tokens)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dim)  # [..., Q, Q]
        num_scales = tokens.shape[-2]
        keep = torch.ones(num_scales, num_scales, device=g.device).triu().bool()
        weights = scores.masked_fill(~keep, MASKED_SCORE).softmax(dim=-1)
        return self.out_proj(weights @ v).transpose(-1, -2)
