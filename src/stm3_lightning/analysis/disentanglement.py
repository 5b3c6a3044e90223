"""Per-expert disentanglement and scale-distinguishability metrics (reference §8, items 6-9), plus a per-layer summary.

Representations follow the contrastive loss (§3.2): ``expert_repr: [S, D, Q]`` with S = B·N rows in the
order of ``assign.reshape(-1)`` (batch-major), each the time-mean of the node's routed-expert output reshaped
to [D, Q] and L2-normalised over D. ``expert_outputs: [E, S, L, M]`` are all experts run on the same inputs.
Metrics that are undefined for the data at hand (fewer than two non-empty experts, no negatives) return NaN
rather than raising, so that they can be logged every epoch without stopping a run.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import Tensor

from stm3_lightning.analysis.routing import (
    expert_load,
    flip_rate,
    input_sensitivity,
    load_cv,
    load_entropy,
    near_tie_fraction,
    top1_margin,
    total_variation,
)

_NAN = float("nan")


def _check_repr(expert_repr: Tensor, assign: Tensor) -> None:
    """Raise unless ``expert_repr: [S, D, Q]`` has one row per entry of ``assign``."""
    if expert_repr.ndim != 3 or expert_repr.shape[0] != assign.numel():
        raise ValueError(
            f"expert_repr must be [S, D, Q] with S = assign.numel() = {assign.numel()}, "
            f"got shape {tuple(expert_repr.shape)}."
        )


def cosine_matrix(x: Tensor) -> Tensor:
    """Pairwise cosine similarities between rows; zero rows have similarity 0 to everything.

    x: [K, F]. Returns: [K, K].
    """
    unit = F.normalize(x.float(), dim=1)
    return unit @ unit.T


def mean_offdiagonal(m: Tensor, absolute: bool = False) -> Tensor:
    """Mean of the off-diagonal entries of square matrices (NaN when K < 2).

    m: [..., K, K]; the mean is over all leading entries and all off-diagonal positions.
    """
    k = m.shape[-1]
    if k < 2:
        return torch.full((), _NAN, device=m.device)
    off = ~torch.eye(k, dtype=torch.bool, device=m.device)
    vals = m[..., off]
    return (vals.abs() if absolute else vals).float().mean()


def expert_centroids(expert_repr: Tensor, assign: Tensor, num_experts: int) -> tuple[Tensor, Tensor]:
    """Mean flattened representation c_e = mean_{n ∈ I_e} vec(r_n) of each expert's nodes.

    expert_repr: [S, D, Q]; assign: [B, N] or [S] expert indices. Returns (centroids [E, D·Q], present [E] bool),
    where absent experts (no routed node) have a zero centroid and ``present`` False.
    """
    _check_repr(expert_repr, assign)
    flat = expert_repr.reshape(expert_repr.shape[0], -1).float()
    counts = expert_load(assign, num_experts) * assign.numel()
    sums = torch.zeros(num_experts, flat.shape[1], device=flat.device).index_add_(
        0, assign.reshape(-1).long(), flat
    )
    return sums / counts.clamp_min(1).unsqueeze(1), counts > 0


def centroid_cosine(expert_repr: Tensor, assign: Tensor, num_experts: int) -> Tensor:
    """Mean cosine similarity between centroids of distinct non-empty experts; lower is more separated (§8.6).

    expert_repr: [S, D, Q]; assign: [B, N] or [S]. NaN when fewer than two experts have routed nodes.
    """
    centroids, present = expert_centroids(expert_repr, assign, num_experts)
    return mean_offdiagonal(cosine_matrix(centroids[present]))


def _pairwise_distances(a: Tensor, b: Tensor, metric: str) -> Tensor:
    """Distances between rows of ``a: [P, F]`` and ``b: [S, F]`` (1 − cosine or Euclidean). Returns: [P, S]."""
    if metric == "cosine":
        return 1.0 - F.normalize(a, dim=1) @ F.normalize(b, dim=1).T
    if metric == "euclidean":
        return torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist")
    raise ValueError(f"metric must be 'cosine' or 'euclidean', got {metric!r}.")


def silhouette_score(x: Tensor, labels: Tensor, metric: str = "cosine", chunk_size: int = 1024) -> Tensor:
    """Mean silhouette (b − a) / max(a, b) of samples grouped by expert label; 1 means tight, separated clusters (§8.7).

    a is the mean distance to the other members of the sample's own cluster, b the smallest mean distance to
    another cluster. Members of singleton clusters score 0 (the usual convention); NaN with fewer than two
    clusters. Distances are computed in row chunks, so memory is O(chunk_size · S).

    x: [S, F] (e.g. ``expert_repr.flatten(1)``); labels: [S] integer cluster ids.
    """
    if x.ndim != 2 or labels.numel() != x.shape[0]:
        raise ValueError(
            f"x must be [S, F] with one label per row, got {tuple(x.shape)} and {labels.numel()} labels."
        )
    _, inverse, counts = torch.unique(labels.reshape(-1), return_inverse=True, return_counts=True)
    if counts.numel() < 2:
        return torch.full((), _NAN, device=x.device)
    xf = x.float()
    onehot = F.one_hot(inverse, counts.numel()).float()  # [S, C]
    sums = []
    for start in range(0, xf.shape[0], chunk_size):
        dist = _pairwise_distances(xf[start : start + chunk_size], xf, metric)
        rows = torch.arange(dist.shape[0], device=x.device)
        dist[rows, rows + start] = 0.0  # a sample's distance to itself never counts (zero rows under cosine)
        sums.append(dist @ onehot)
    mean_dist = torch.cat(sums) / counts.float()  # [S, C]
    own = inverse.unsqueeze(1)
    own_count = counts[inverse].float()
    a = mean_dist.gather(1, own).squeeze(1) * own_count / (own_count - 1).clamp_min(1)
    b = mean_dist.scatter(1, own, float("inf")).amin(dim=1)
    s = ((b - a) / torch.maximum(a, b)).nan_to_num(0.0)
    return torch.where(own_count > 1, s, torch.zeros_like(s)).mean()


def _hsic(x: Tensor, y: Tensor, debiased: bool) -> Tensor:
    """Linear-kernel HSIC between column-centred ``x: [n, F1]`` and ``y: [n, F2]``, computed in feature space.

    Standard: ‖xᵀy‖²_F (the (n−1)⁻² factor cancels in CKA). Debiased: the unbiased U-statistic of
    Song et al. (2012) on K = xxᵀ, L = yyᵀ, expanded so no n×n Gram matrix is ever formed.
    """
    cross = (x.T @ y).square().sum()
    if not debiased:
        return cross
    n = x.shape[0]
    kd, ld = x.square().sum(1), y.square().sum(1)  # Gram diagonals
    k1 = x @ x.sum(0) - kd  # K̃1 with the diagonal of K zeroed
    l1 = y @ y.sum(0) - ld
    trace = cross - (kd * ld).sum()
    return (trace + k1.sum() * l1.sum() / ((n - 1) * (n - 2)) - 2.0 * (k1 @ l1) / (n - 2)) / (n * (n - 3))


def linear_cka(x: Tensor, y: Tensor, debiased: bool = False) -> Tensor:
    """Linear CKA HSIC(x, y) / sqrt(HSIC(x, x) · HSIC(y, y)): 1 for representations equal up to rotation and
    isotropic scale, 0 for orthogonal centred representations (§8.8).

    ``debiased=False`` is the standard estimator of Kornblith et al. (2019); ``debiased=True`` uses unbiased HSIC
    and removes the positive bias that standard CKA shows when features are many relative to samples. NaN when
    either representation is constant. Computed in float64 in feature space: O(n · F1 · F2).

    x: [n, F1]; y: [n, F2] with matching rows (samples); n > 3 when debiased.
    """
    if x.ndim != 2 or y.ndim != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(
            f"x and y must be [n, F] with the same n, got {tuple(x.shape)} and {tuple(y.shape)}."
        )
    if debiased and x.shape[0] < 4:
        raise ValueError(f"Debiased CKA needs at least 4 samples, got {x.shape[0]}; pass more rows.")
    xc = x.double() - x.double().mean(0)
    yc = y.double() - y.double().mean(0)
    denom = (_hsic(xc, xc, debiased) * _hsic(yc, yc, debiased)).sqrt()
    if float(denom) == 0.0:
        return torch.full((), _NAN, device=x.device)
    return (_hsic(xc, yc, debiased) / denom).float()


def pairwise_cka(expert_outputs: Tensor, debiased: bool = False) -> Tensor:
    """Linear CKA between every pair of experts run on the same inputs, tokens (node, time) as samples.

    expert_outputs: [E, S, L, M]; each expert becomes an [S·L, M] matrix. Returns: [E, E] with unit diagonal.
    """
    if expert_outputs.ndim != 4:
        raise ValueError(f"expert_outputs must be [E, S, L, M], got shape {tuple(expert_outputs.shape)}.")
    num_experts = expert_outputs.shape[0]
    tokens = expert_outputs.reshape(num_experts, -1, expert_outputs.shape[-1])
    out = torch.eye(num_experts, device=expert_outputs.device)
    for i in range(num_experts):
        for j in range(i + 1, num_experts):
            out[i, j] = out[j, i] = linear_cka(tokens[i], tokens[j], debiased)
    return out


def mean_pairwise_cka(expert_outputs: Tensor, debiased: bool = False) -> Tensor:
    """Mean linear CKA over pairs of distinct experts; lower means the experts compute different functions (§8.8).

    expert_outputs: [E, S, L, M]. NaN when E < 2.
    """
    return mean_offdiagonal(pairwise_cka(expert_outputs, debiased))


def scale_cosine(expert_repr: Tensor) -> Tensor:
    """Mean |cos(r_{n,p}, r_{n,q})| over nodes and scale pairs p ≠ q; 0 when scales are orthogonal (§8.9).

    expert_repr: [S, D, Q] with Q >= 2 (re-normalised over D; zero vectors contribute 0).
    """
    if expert_repr.ndim != 3 or expert_repr.shape[2] < 2:
        raise ValueError(f"expert_repr must be [S, D, Q] with Q >= 2, got shape {tuple(expert_repr.shape)}.")
    unit = F.normalize(expert_repr.float(), dim=1)
    return mean_offdiagonal(unit.transpose(1, 2) @ unit, absolute=True)


def _sample_other_expert_rows(labels: Tensor, k: int, generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """For each row draw ``k`` rows uniformly among rows with a different label.

    labels: [S]. Returns (indices [S, k], valid [S]); rows whose label covers every row are invalid.
    """
    order = torch.argsort(labels, stable=True)
    _, inverse, counts = torch.unique(labels, return_inverse=True, return_counts=True)
    own_start = (counts.cumsum(0) - counts)[inverse].unsqueeze(1)  # [S, 1], block start in sorted order
    own_count = counts[inverse].unsqueeze(1)
    n_other = labels.numel() - own_count
    u = (torch.rand(labels.numel(), k, generator=generator) * n_other).long()
    u = torch.minimum(u, (n_other - 1).clamp_min(0))
    pos = torch.where(u < own_start, u, u + own_count).clamp_max(labels.numel() - 1)
    return order[pos], n_other.squeeze(1) > 0


def infonce_top1(
    expert_repr: Tensor,
    assign: Tensor,
    num_negatives: int = 10,
    generator: torch.Generator | None = None,
    pos_weight: Tensor | None = None,
) -> Tensor:
    """Fraction of anchors (n, p<Q−1) whose best positive (same node, scale q > p) strictly beats every negative (§8.9).

    Negatives are drawn per node, shared across its anchor scales as in the loss: ``num_negatives`` rows of
    nodes routed to another expert, each at a uniformly random scale, always non-zero (unlike the official
    loss, which draws 2/3 zero vectors). Scores are cosines; ``pos_weight: [Q, Q]`` multiplies positive
    scores, e.g. by the loss's scale-distance weights W, to judge exactly the loss's logits (τ cancels).
    Anchors of nodes without any other-expert node are skipped; NaN when none is left.

    expert_repr: [S, D, Q] with Q >= 2; assign: [B, N] or [S]. ``generator`` (CPU) defaults to seed 0.
    """
    _check_repr(expert_repr, assign)
    num_rows, _, num_scales = expert_repr.shape
    if num_scales < 2:
        raise ValueError(f"InfoNCE accuracy needs at least 2 scales for positives, got Q={num_scales}.")
    gen = generator if generator is not None else torch.Generator().manual_seed(0)
    unit = F.normalize(expert_repr.float(), dim=1).transpose(1, 2)  # [S, Q, D]
    sim = unit @ unit.transpose(1, 2)  # [S, Q, Q]
    if pos_weight is not None:
        sim = sim * pos_weight.to(sim)
    upper = torch.ones(num_scales, num_scales, dtype=torch.bool, device=sim.device).triu(1)
    best_pos = sim.masked_fill(~upper, float("-inf")).amax(dim=2)[:, :-1]  # [S, Q-1]
    rows, valid = _sample_other_expert_rows(assign.reshape(-1).long().cpu(), num_negatives, gen)
    scales = torch.randint(num_scales, (num_rows, num_negatives), generator=gen)
    negatives = unit[rows.to(unit.device), scales.to(unit.device)]  # [S, K, D]
    best_neg = (unit[:, :-1] @ negatives.transpose(1, 2)).amax(dim=2)  # [S, Q-1]
    correct = (best_pos > best_neg)[valid.to(sim.device)]
    if correct.numel() == 0:
        return torch.full((), _NAN, device=expert_repr.device)
    return correct.float().mean()


def _subsample(num_rows: int, max_rows: int, generator: torch.Generator) -> Tensor:
    """Indices of at most ``max_rows`` of ``num_rows`` rows, drawn without replacement. Returns: [min(S, max)]."""
    if num_rows <= max_rows:
        return torch.arange(num_rows)
    return torch.randperm(num_rows, generator=generator)[:max_rows]


@torch.no_grad()
def summarize_layer(
    diag: Mapping[str, Tensor],
    prev: Mapping[str, Tensor] | None = None,
    *,
    near_tie_threshold: float = 0.01,
    num_negatives: int = 10,
    subsample_rows: int = 2048,
    cka_debiased: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Flat dict of routing and disentanglement scalars for one STM3 layer's diagnostics.

    diag keys: "probs" [B, N, E] noise-free; "probs_noisy" [B, N, E] (unused here, accepted); "assign" [B, N];
    "expert_repr" [B·N, D, Q]; optional "expert_outputs" [E, B·N, L, M]; optional "probs_perturbed"
    [B, N, E] with "delta_norm" [B] (router at x + δ). ``prev`` is the same layer's diag from the previous
    evaluation on the same batch. Keys whose inputs are missing are omitted, never NaN-filled:
    routing/{flip_rate, flip_rate_noisy, tv} need ``prev``; routing/sensitivity needs "probs_perturbed";
    disent/cka needs "expert_outputs". Silhouette (cosine distance) and CKA use the same seeded subsample of
    at most ``subsample_rows`` of the B·N rows (O(rows²) and O(rows · L) cost); InfoNCE sampling uses the
    same generator (seeded with ``seed``).
    """
    probs, assign, expert_repr = diag["probs"], diag["assign"], diag["expert_repr"]
    num_experts = probs.shape[-1]
    loads = expert_load(assign, num_experts)
    out = {
        "routing/noise_flip_frac": flip_rate(probs, assign),
        "routing/margin": top1_margin(probs).mean(),
        "routing/logit_margin": top1_margin(probs, log_space=True).mean(),
        "routing/near_tie_frac": near_tie_fraction(probs, near_tie_threshold),
        "routing/load_entropy": load_entropy(loads),
        "routing/load_cv": load_cv(loads),
    }
    if prev is not None:
        out["routing/flip_rate"] = flip_rate(prev["probs"], probs)
        out["routing/flip_rate_noisy"] = flip_rate(prev["assign"], assign)
        out["routing/tv"] = total_variation(prev["probs"], probs)
    if "probs_perturbed" in diag:
        out["routing/sensitivity"] = input_sensitivity(probs, diag["probs_perturbed"], diag["delta_norm"])
    gen = torch.Generator().manual_seed(seed)
    rows = _subsample(expert_repr.shape[0], subsample_rows, gen).to(expert_repr.device)
    labels = assign.reshape(-1)
    out["disent/centroid_cos"] = centroid_cosine(expert_repr, assign, num_experts)
    out["disent/silhouette"] = silhouette_score(expert_repr[rows].flatten(1), labels[rows], metric="cosine")
    out["disent/scale_cos"] = scale_cosine(expert_repr)
    out["disent/infonce_top1"] = infonce_top1(expert_repr, assign, num_negatives, generator=gen)
    if diag.get("expert_outputs") is not None:
        out["disent/cka"] = mean_pairwise_cka(diag["expert_outputs"][:, rows], debiased=cka_debiased)
    return {name: float(value) for name, value in out.items()}
