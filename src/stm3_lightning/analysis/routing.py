"""Routing-smoothness metrics on plain router tensors (reference §8, items 1-5).

Every function works on the tensors an STM3 layer exposes for diagnostics (router probabilities
``probs: [B, N, E]`` and top-1 assignments ``assign: [B, N]``), is independent of the model, and
returns a 0-d float tensor unless stated otherwise.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def _routes(x: Tensor) -> Tensor:
    """Top-1 routes: argmax of probabilities ``x: [..., E]``, or integer assignments ``x: [...]`` as they are."""
    return x.argmax(dim=-1) if x.is_floating_point() else x


def _check_same_shape(a: Tensor, b: Tensor, what: str) -> None:
    """Raise when two tensors that must be compared element-wise have different shapes."""
    if a.shape != b.shape:
        raise ValueError(
            f"{what} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}; "
            "evaluate both on the same fixed batch."
        )


def flip_rate(prev: Tensor, cur: Tensor) -> Tensor:
    """Fraction of routes whose top-1 expert differs between two evaluations (RF_t, reference §8.1).

    prev, cur: [..., E] probabilities (reduced by argmax) or [...] integer top-1 assignments, e.g.
    ``probs: [B, N, E]`` or ``assign: [B, N]``; both must reduce to the same shape.
    """
    prev_routes, cur_routes = _routes(prev), _routes(cur)
    _check_same_shape(prev_routes, cur_routes, "The two routings")
    return (prev_routes != cur_routes).float().mean()


def total_variation(prev: Tensor, cur: Tensor) -> Tensor:
    """Mean over routes of the total-variation distance ½‖p_t − p_{t−1}‖₁ between routing distributions (§8.2).

    prev, cur: [..., E] router probabilities, e.g. [B, N, E].
    """
    _check_same_shape(prev, cur, "The two routing distributions")
    return 0.5 * (cur - prev).abs().sum(dim=-1).float().mean()


def input_sensitivity(probs: Tensor, probs_perturbed: Tensor, delta_norm: Tensor | float) -> Tensor:
    """Empirical Lipschitz ratio E_b[(1/N) Σ_n ‖p_n(x_b+δ_b) − p_n(x_b)‖₁ / ‖δ_b‖₂] of the router (§8.3).

    The per-node L1 change is averaged over nodes (not summed) so the value does not grow with N; it is
    exactly 0 for STM3's node-embedding router, whose noise-free probabilities do not depend on x.

    probs: [B, N, E] noise-free probabilities at x. probs_perturbed: [B, N, E] at x + δ.
    delta_norm: [B] (or a scalar) ‖δ_b‖₂ over the whole input window of sample b; must be > 0.
    """
    _check_same_shape(probs, probs_perturbed, "probs and probs_perturbed")
    if probs.ndim < 2:
        raise ValueError(f"probs must be [B, N, E] or [B, E], got shape {tuple(probs.shape)}.")
    norms = torch.as_tensor(delta_norm, dtype=torch.float32, device=probs.device).reshape(-1)
    if norms.numel() not in (1, probs.shape[0]) or bool((norms <= 0).any()):
        raise ValueError(
            f"delta_norm must be one positive value or {probs.shape[0]} positive per-sample norms, "
            f"got {norms.numel()} value(s) with min {float(norms.min()):.3g}; pass ‖δ_b‖₂ of a non-zero δ."
        )
    change = (probs_perturbed - probs).abs().sum(dim=-1).float()  # [B, N]
    per_sample = change.reshape(probs.shape[0], -1).mean(dim=1)  # [B]
    return (per_sample / norms).mean()


def top1_margin(probs: Tensor, log_space: bool = False) -> Tensor:
    """Per-route gap between the largest and second-largest router probability (§8.4).

    With ``log_space=True`` the gap is log p_(1) − log p_(2), which equals the logit gap of a softmax router:
    STM3 adds U(0, 0.01) noise to the logits, so a route can flip only when this gap is below 0.01.

    probs: [..., E] with E >= 2. Returns: [...].
    """
    if probs.shape[-1] < 2:
        raise ValueError(f"A top-1 margin needs at least 2 experts, got E={probs.shape[-1]}.")
    top2 = probs.float().topk(2, dim=-1).values
    if log_space:
        top2 = top2.clamp_min(torch.finfo(top2.dtype).tiny).log()
    return top2[..., 0] - top2[..., 1]


def near_tie_fraction(probs: Tensor, threshold: float = 0.01, log_space: bool = True) -> Tensor:
    """Fraction of routes whose top-1 margin is below ``threshold`` (§8.4).

    Measured in logit space by default because that is where STM3's U(0, 0.01) routing noise acts, so with
    the default threshold this is exactly the fraction of routes that the noise can flip; the probability
    gap is always smaller than the logit gap and would over-count.

    probs: [..., E] router probabilities.
    """
    return (top1_margin(probs, log_space=log_space) < threshold).float().mean()


def expert_load(assign: Tensor, num_experts: int) -> Tensor:
    """Fraction of routes sent to each expert.

    assign: [...] integer top-1 expert indices in [0, num_experts). Returns: [E], summing to 1.
    """
    flat = assign.reshape(-1).long()
    if flat.numel() == 0:
        raise ValueError("assign is empty; pass at least one routed node.")
    if int(flat.min()) < 0 or int(flat.max()) >= num_experts:
        raise ValueError(
            f"assign holds expert indices in [{int(flat.min())}, {int(flat.max())}] but num_experts={num_experts}; "
            "pass the layer's expert count."
        )
    return torch.bincount(flat, minlength=num_experts).float() / flat.numel()


def _normalised_loads(loads: Tensor) -> Tensor:
    """Loads ``[E]`` (counts or fractions, non-negative, not all zero) rescaled to sum to 1."""
    if loads.ndim != 1 or bool((loads < 0).any()) or float(loads.sum()) <= 0:
        raise ValueError(
            f"loads must be a non-negative [E] vector with a positive sum, got {loads.tolist()}."
        )
    return loads.float() / loads.float().sum()


def load_entropy(loads: Tensor) -> Tensor:
    """Entropy of the expert load divided by log E: 1 for a uniform load, 0 when one expert takes everything (§8.5).

    loads: [E] counts or fractions. A single expert (E = 1) is trivially balanced and gives 1.
    """
    frac = _normalised_loads(loads)
    if frac.numel() == 1:
        return torch.ones((), device=loads.device)
    entropy = -torch.where(frac > 0, frac * frac.log(), torch.zeros_like(frac)).sum()
    return entropy / math.log(frac.numel())


def load_cv(loads: Tensor) -> Tensor:
    """Coefficient of variation (population std / mean) of the expert loads (§8.5).

    0 for a uniform load, sqrt(E − 1) when one expert takes everything. loads: [E] counts or fractions.
    """
    frac = _normalised_loads(loads)
    return frac.std(unbiased=False) / frac.mean()
