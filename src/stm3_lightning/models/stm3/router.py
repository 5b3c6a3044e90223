"""Top-k router of the STM3 mixture: released node-embedding routing, or routing on the hidden state.

Released behaviour (reference §2.2b): ``logits = E_node W_gate`` (no bias), ``p = softmax(logits + 0.01 U(0, 1))``
with the noise drawn in train **and** eval mode, top-1, weights renormalised as ``p / (p + 1e-8)``. Because that
weight is ~1 whatever ``p`` is, the gate only receives a ~1e-8-scaled gradient (``router_grad=released``).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from stm3_lightning.models.global_batch import rand_rows

RENORM_EPS = 1e-8


@dataclass
class Routing:
    """One routing decision for ``R = B * N`` rows (one row per (sample, node)).

    logits: [R, E] (noise-free); noise: [R, E] (zeros when none was drawn); weights: [R, k] mixing weights;
    indices: [R, k] expert ids, best first.
    """

    logits: Tensor
    noise: Tensor
    weights: Tensor
    indices: Tensor

    @property
    def probs(self) -> Tensor:
        """Router probabilities without noise: [R, E]."""
        return self.logits.softmax(dim=-1)

    @property
    def probs_noisy(self) -> Tensor:
        """Router probabilities with the noise actually used for this decision: [R, E]."""
        return (self.logits + self.noise).softmax(dim=-1)

    def membership(self, num_experts: int) -> Tensor:
        """[R, E] bool: whether row r is routed to expert e."""
        return membership(self.indices, num_experts)


def membership(indices: Tensor, num_experts: int) -> Tensor:
    """indices: [R, k] expert ids -> [R, E] bool, whether row r is routed to expert e."""
    member = indices.new_zeros(indices.shape[0], num_experts, dtype=torch.bool)
    return member.scatter_(1, indices, True)


class Router(nn.Module):
    """Linear gate (no bias) over the router input, noisy softmax, top-k selection and renormalisation."""

    def __init__(
        self,
        in_dim: int,
        num_experts: int,
        top_k: int = 1,
        noise: float = 0.01,
        noise_at_eval: bool = True,
        grad: str = "released",
    ) -> None:
        super().__init__()
        if grad not in ("released", "straight_through"):
            raise ValueError(f"Invalid router gradient mode {grad!r}; choose released or straight_through.")
        self.gate = nn.Linear(in_dim, num_experts, bias=False)
        self.top_k = top_k
        self.noise = noise
        self.noise_at_eval = noise_at_eval
        self.grad = grad

    def forward(self, inputs: Tensor) -> Routing:
        """inputs: [R, in_dim] (node embedding per row, or the pooled hidden state) -> ``Routing``."""
        logits = self.gate(inputs)
        if self.noise > 0 and (self.training or self.noise_at_eval):
            noise = rand_rows(logits) * self.noise  # under DDP: drawn for the global batch (global_batch.py)
        else:
            noise = torch.zeros_like(logits)
        top_p, indices = torch.topk((logits + noise).softmax(dim=-1), self.top_k, dim=-1)
        weights = top_p / (top_p.sum(dim=-1, keepdim=True) + RENORM_EPS)
        if self.grad == "straight_through":
            weights = weights + (top_p - top_p.detach())
        return Routing(logits=logits, noise=noise, weights=weights, indices=indices)
