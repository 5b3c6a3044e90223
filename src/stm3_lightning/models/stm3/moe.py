"""Mixture of multiscale Mamba experts with a per-node router and an optional gated shared expert (DMoE).

``out_r = sum_j w_rj Expert_{e_rj}(h_r) + sigmoid(E_node[n(r)] . w_sh) Shared(h_r)`` for each row r = (sample, node);
each expert only runs on the rows routed to it (reference §2.2b).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stm3_lightning.models.global_batch import gather_rows
from stm3_lightning.models.stm3.contrastive import causal_contrastive_loss, scale_representations
from stm3_lightning.models.stm3.mamba import MultiscaleMamba
from stm3_lightning.models.stm3.router import Router, Routing, membership


@dataclass
class MoEOutput:
    """out: [R, L, M] mixture output; routing: the decision used; means: [R, E, M] time-mean of each routed expert
    output (zeros for experts a row is not routed to), only when requested."""

    out: Tensor
    routing: Routing
    means: Tensor | None = None


class MixtureOfExperts(nn.Module):
    """Routed multiscale Mamba experts (+ shared expert) over rows ``[R = B * N, L, M]``.

    Parameter order is the release's: router gate, shared gate, experts, shared expert.
    """

    def __init__(
        self,
        d_model: int,
        hidden_dim: int,
        scales: list[int],
        node_emb_dim: int,
        num_experts: int = 4,
        top_k: int = 1,
        router: str = "node",
        router_noise: float = 0.01,
        router_noise_at_eval: bool = True,
        router_grad: str = "released",
        shared_expert: bool = True,
        mamba_kwargs: dict | None = None,
    ) -> None:
        super().__init__()
        if router not in ("node", "hidden"):
            raise ValueError(f"Invalid router input {router!r}; choose node or hidden.")
        self.hidden_dim = hidden_dim
        self.num_experts = num_experts
        self.router_input = router
        self.router = Router(
            node_emb_dim if router == "node" else d_model,
            num_experts,
            top_k,
            noise=router_noise,
            noise_at_eval=router_noise_at_eval,
            grad=router_grad,
        )
        kwargs = mamba_kwargs or {}
        self.shared_gate = nn.Linear(node_emb_dim, 1, bias=False) if shared_expert else None
        self.experts = nn.ModuleList(MultiscaleMamba(d_model, scales, **kwargs) for _ in range(num_experts))
        self.shared_expert = MultiscaleMamba(d_model, scales, **kwargs) if shared_expert else None

    def forward(self, h: Tensor, node_emb: Tensor, with_means: bool = False) -> MoEOutput:
        """h: [R, L, M] rows ordered (sample, node); node_emb: [N, d_e] -> ``MoEOutput``."""
        # Node embedding of every row: [R, d_e].
        rows_emb = node_emb.expand(h.shape[0] // node_emb.shape[0], -1, -1).reshape(h.shape[0], -1)
        routing = self.router(rows_emb if self.router_input == "node" else h.mean(dim=1))
        out = torch.zeros_like(h)
        means = h.new_zeros(h.shape[0], self.num_experts, h.shape[2]) if with_means else None
        for e, expert in enumerate(self.experts):
            hit = routing.indices == e  # [R, k]
            rows = hit.any(dim=1).nonzero().squeeze(1)
            if rows.numel() == 0:
                continue
            weight = (routing.weights * hit).sum(dim=1)[rows]  # [r]
            y = expert(h[rows])
            out.index_add_(0, rows, y * weight[:, None, None])  # accumulates in place, no copy per expert
            if means is not None:
                means[rows, e] = y.mean(dim=1)
        if self.shared_expert is not None:
            out = out + torch.sigmoid(self.shared_gate(rows_emb))[:, :, None] * self.shared_expert(h)
        return MoEOutput(out=out, routing=routing, means=means)

    def run_all_experts(self, h: Tensor) -> Tensor:
        """Every routed expert on the same rows: h: [R, L, M] -> [E, R, L, M]."""
        return torch.stack([expert(h) for expert in self.experts])

    def contrastive_loss(self, output: MoEOutput, variant: str, **kwargs: float | int) -> Tensor:
        """Causal contrastive loss of ``output`` (computed with ``with_means=True``); kwargs as
        :func:`causal_contrastive_loss` (temperature, gamma1, gamma2, num_negatives)."""
        if output.means is None:
            raise ValueError("The mixture output holds no expert means; call forward with with_means=True.")
        reps = scale_representations(output.means, self.hidden_dim).transpose(-1, -2)  # [R, E, Q, D]
        # Under DDP the loss (negatives included) is that of the global batch: every process computes it on the
        # rows of all processes (models/global_batch.py); a single process uses its own rows as they are.
        reps, indices = gather_rows(reps), gather_rows(output.routing.indices)
        return causal_contrastive_loss(
            reps, membership(indices, self.num_experts), indices[:, 0], variant=variant, **kwargs
        )
