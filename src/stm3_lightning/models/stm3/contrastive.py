"""Causal contrastive loss over the scales of each routed expert's output (reference §3.2).

For every expert e with routed rows I_e, each anchor (row i, scale p) is scored against the other scales q of the
same row (scale-distance weighted similarities) and against K random "negative" features drawn from rows routed
elsewhere; the loss is the mean negative log-probability of the positives, averaged over non-empty experts.

``released`` reproduces the code, quirks included: positives are the strict upper triangle (q > p) **or** the block
p >= 1, q <= Q-2, whose diagonal/lower entries carry the fixed logit 0; a negative feature is the representation of
a random row under a random *other* expert, which is the zero vector unless that expert is the row's own; random
indices come from the global CPU generator. ``repaired`` uses adjacent-scale positives (|p - q| = 1, weighted both
ways), masks every other within-row logit with -inf and takes negatives from the other rows' own expert (never zero).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

VARIANTS = ("released", "repaired")
# Logit the release gives its negatives when no row is routed elsewhere.
NO_NEGATIVE_LOGIT = -10.0


def scale_representations(means: Tensor, hidden_dim: int) -> Tensor:
    """Time-mean expert outputs -> unit vectors per scale.

    means: [..., M] with channel index d * Q + q; returns [..., D, Q] L2-normalised over D (zeros stay zero).
    """
    return F.normalize(means.unflatten(-1, (hidden_dim, -1)), p=2, dim=-2)


def scale_distance_weights(
    num_scales: int, gamma1: float, gamma2: float, device: torch.device | None = None
) -> Tensor:
    """[Q, Q] weights: ``(p - q + 1)^-gamma1`` for p > q, ``(q - p + 1)^gamma2`` for p <= q (anchor p, other q)."""
    idx = torch.arange(num_scales, device=device, dtype=torch.float32)
    dist = idx[:, None] - idx[None, :]  # p - q
    return torch.where(dist > 0, (dist + 1).pow(-gamma1), (1 - dist).pow(gamma2))


def positive_mask(num_scales: int, variant: str, device: torch.device | None = None) -> Tensor:
    """[Q, Q] bool mask of positive (anchor p, scale q) pairs for ``variant``."""
    idx = torch.arange(num_scales, device=device)
    p, q = idx[:, None], idx[None, :]
    if variant == "released":
        return (q > p) | ((p >= 1) & (q <= num_scales - 2))
    return (p - q).abs() == 1


def _within_row_logits(samples: Tensor, weights: Tensor, variant: str, temperature: float) -> Tensor:
    """samples: [n, Q, D] -> [n, Q, Q] scale-vs-scale logits of each row (released: lower/diag = 0; repaired: -inf)."""
    sim = samples @ samples.transpose(1, 2) / temperature * weights
    num_scales = samples.shape[1]
    if variant == "released":
        return sim * torch.ones(num_scales, num_scales, device=sim.device).triu(1)
    return sim.masked_fill(~positive_mask(num_scales, variant, sim.device), float("-inf"))


@torch.compiler.disable  # shapes follow the routing (data-dependent): fake tensors cannot draw them in a graph
def _draw_negatives(
    n: int,
    num_others: int,
    num_negatives: int,
    num_experts: int,
    num_scales: int,
    expert: int,
    draw_experts: bool,
    generator: torch.Generator | None,
) -> tuple[Tensor, Tensor | None, Tensor]:
    """The random negatives of ``n`` samples, drawn on the CPU in the release's order (node, [expert,] scale):
    positions in the ``num_others`` other rows, other experts than ``expert`` (``draw_experts``: the released
    variant) and scales; each [n, num_negatives] long."""
    shape = (n, num_negatives)
    pick = torch.randint(0, num_others, shape, generator=generator)
    neg_expert = None
    if draw_experts:
        neg_expert = torch.randint(0, num_experts - 1, shape, generator=generator)
        neg_expert = neg_expert + (neg_expert >= expert).long()
    return pick, neg_expert, torch.randint(0, num_scales, shape, generator=generator)


def _negative_logits(
    samples: Tensor,
    reps: Tensor,
    expert: int,
    others: Tensor,
    own_expert: Tensor,
    num_negatives: int,
    variant: str,
    temperature: float,
    generator: torch.Generator | None,
) -> Tensor:
    """samples: [n, Q, D]; reps: [R, E, Q, D]; others: [R_o] rows not routed to ``expert`` -> [n, Q, K] logits."""
    n, num_scales, _ = samples.shape
    num_experts = reps.shape[1]
    if others.numel() == 0:
        k = num_negatives if variant == "released" else 0
        return samples.new_full((n, num_scales, k), NO_NEGATIVE_LOGIT)
    pick, neg_expert, neg_scale = _draw_negatives(
        n, others.numel(), num_negatives, num_experts, num_scales, expert, variant == "released", generator
    )
    rows = others[pick.to(others.device)]
    experts = neg_expert.to(rows.device) if neg_expert is not None else own_expert[rows]
    # A flat index_select, not reps[rows, experts, scales]: advanced indexing's backward is index_put_ with
    # accumulate=True, whose CPU kernel adds duplicate indices in thread-timing order (same seed, different bits).
    # index_select's backward is index_add_, which adds them in index order.
    flat = (rows * num_experts + experts) * num_scales + neg_scale.to(rows.device)
    features = reps.flatten(0, 2).index_select(0, flat.flatten()).view(n, -1, reps.shape[-1])  # [n, K, D]
    return samples @ features.transpose(1, 2) / temperature


def causal_contrastive_loss(
    reps: Tensor,
    membership: Tensor,
    own_expert: Tensor,
    temperature: float = 0.1,
    gamma1: float = 0.1,
    gamma2: float = 0.1,
    num_negatives: int = 10,
    variant: str = "released",
    generator: torch.Generator | None = None,
) -> Tensor:
    """Unweighted contrastive loss (multiply by lambda outside).

    reps: [R, E, Q, D] unit scale vectors of each row under each expert (zeros where the row is not routed);
    membership: [R, E] bool routing; own_expert: [R] long, each row's top-1 expert. Returns a scalar.
    """
    if variant not in VARIANTS:
        raise ValueError(f"Unknown contrastive variant {variant!r}; choose released or repaired.")
    num_rows, num_experts, num_scales, _ = reps.shape
    pos = positive_mask(num_scales, variant, reps.device)
    if not bool(pos.any()):
        return reps.new_zeros(())
    weights = scale_distance_weights(num_scales, gamma1, gamma2, reps.device)
    k = min(num_negatives, num_rows - 1)
    losses = []
    for e in range(num_experts):
        rows = membership[:, e].nonzero().squeeze(1)
        if rows.numel() == 0:
            continue
        samples = reps[rows, e]  # [n, Q, D]
        others = (~membership[:, e]).nonzero().squeeze(1)
        logits = torch.cat(
            [
                _within_row_logits(samples, weights, variant, temperature),
                _negative_logits(samples, reps, e, others, own_expert, k, variant, temperature, generator),
            ],
            dim=2,
        )
        log_p = logits.log_softmax(dim=2)[:, :, :num_scales]
        mask = pos.expand_as(log_p)
        losses.append(-torch.where(mask, log_p, 0.0).sum() / (mask.sum() + 1e-8))
    return torch.stack(losses).mean()
