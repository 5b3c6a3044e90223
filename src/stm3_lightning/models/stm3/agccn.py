"""Adaptive graph Chebyshev convolution (AGCRN style) and the AGCCN block of an STM3 layer.

The graph is learned from the node embedding ``E`` (``A = softmax_row(relu(E E^T))``), its Chebyshev supports
``T_0 = I, T_1 = A, T_k = 2 A T_{k-1} - T_{k-2}`` are applied per time step and scale, and the weights are
node-adaptive: ``W_n = sum_j E[n, j] weights_pool[j]``, shared by all scales (reference §2.2a).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stm3_lightning.models.stm3.scale_attention import CausalScaleAttention


def adaptive_adjacency(node_emb: Tensor) -> Tensor:
    """node_emb: [N, d_e] -> row-stochastic adjacency [N, N] = softmax_row(relu(E E^T))."""
    return F.softmax(F.relu(node_emb @ node_emb.T), dim=1)


def chebyshev_supports(adj: Tensor, order: int) -> Tensor:
    """adj: [N, N] -> supports [order, N, N]: ``T_0 = I``, ``T_1 = adj``, ``T_k = 2 adj T_{k-1} - T_{k-2}``."""
    supports = [torch.eye(adj.shape[0], device=adj.device, dtype=adj.dtype), adj]
    for _ in range(2, order):
        supports.append(2 * adj @ supports[-1] - supports[-2])
    return torch.stack(supports[:order])


class AdaptiveGraphConv(nn.Module):
    """Node-adaptive Chebyshev graph convolution ``D -> D`` applied to every step and scale alike."""

    def __init__(self, dim: int, node_emb_dim: int, cheb_k: int) -> None:
        super().__init__()
        self.cheb_k = cheb_k
        self.weights_pool = nn.Parameter(torch.empty(node_emb_dim, cheb_k, dim, dim))
        self.bias_pool = nn.Parameter(torch.empty(node_emb_dim, dim))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's constructor init: xavier-uniform weight pool, zero bias pool."""
        nn.init.xavier_uniform_(self.weights_pool)
        nn.init.zeros_(self.bias_pool)

    def forward(self, x: Tensor, node_emb: Tensor) -> Tensor:
        """x: [B, N, L, D, Q], node_emb: [N, d_e] -> [B, N, L, D, Q].

        Each support term ``T_k x`` ([B, N, L*D*Q], one batched matmul) is contracted with its node-adaptive weights
        as ``[L, D*Q] @ kron(W_nk, I_Q)`` per (sample, node), which keeps the native layout (no stacked or
        permuted copies of the activations).
        """
        b, n, length, d, q = x.shape
        supports = chebyshev_supports(adaptive_adjacency(node_emb), self.cheb_k)  # [K, N, N]
        flat = x.reshape(b, n, length * d * q)
        weights = torch.einsum("nj,jkio->nkio", node_emb, self.weights_pool)  # [N, K, D, D]
        eye = torch.eye(q, device=x.device, dtype=x.dtype)
        # kron(W_nk, I_Q): [N, K, D*Q, D*Q], entry ((i, q'), (o, q)) = W_nk[i, o] * [q' == q].
        blocks = torch.einsum("nkio,pq->nkipoq", weights, eye).reshape(n, self.cheb_k, d * q, d * q)
        out = None
        for k in range(self.cheb_k):
            term = flat if k == 0 else torch.bmm(supports[k].expand(b, n, n), flat)  # T_0 = I
            mixed = torch.matmul(term.view(b, n, length, d * q), blocks[:, k])  # [B, N, L, D*Q]
            out = mixed if out is None else out + mixed
        bias = node_emb @ self.bias_pool  # [N, D]
        return out.view(b, n, length, d, q) + bias[None, :, None, :, None]


class AGCCN(nn.Module):
    """Graph convolution -> LayerNorm_[D,Q] -> (+ causal scale attention) -> LayerNorm_[D,Q] (the release's dgcn).

    ``graph=False`` replaces the graph convolution by the identity; ``attention=False`` drops the attention term;
    ``kernel_backend`` picks the scale attention's implementation (see :mod:`.kernels.backends`).
    The caller adds the output to its input (residual).
    """

    def __init__(
        self,
        dim: int,
        num_scales: int,
        node_emb_dim: int,
        cheb_k: int,
        graph: bool = True,
        attention: bool = True,
        kernel_backend: str = "auto",
    ) -> None:
        super().__init__()
        self.graph = AdaptiveGraphConv(dim, node_emb_dim, cheb_k) if graph else None
        self.attention = CausalScaleAttention(dim, kernel_backend) if attention else None
        self.norm1 = nn.LayerNorm([dim, num_scales])
        self.norm2 = nn.LayerNorm([dim, num_scales])

    def forward(self, x: Tensor, node_emb: Tensor) -> Tensor:
        """x: [B, N, L, D, Q], node_emb: [N, d_e] -> [B, N, L, D, Q]."""
        g = self.norm1(self.graph(x, node_emb) if self.graph is not None else x)
        if self.attention is not None:
            g = g + self.attention(g)
        return self.norm2(g)
