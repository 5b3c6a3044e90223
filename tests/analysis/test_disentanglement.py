import math

import pytest
import torch

from stm3_lightning.analysis.disentanglement import (
    _sample_other_expert_rows,
    centroid_cosine,
    cosine_matrix,
    expert_centroids,
    infonce_top1,
    linear_cka,
    mean_offdiagonal,
    mean_pairwise_cka,
    pairwise_cka,
    scale_cosine,
    silhouette_score,
    summarize_layer,
)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _orthonormal_columns(rows: int, cols: int, centred: bool, seed: int = 0) -> torch.Tensor:
    """[rows, cols] with orthonormal columns (also orthogonal to the all-ones vector when centred)."""
    a = torch.randn(rows, cols, generator=_gen(seed), dtype=torch.float64)
    if centred:
        a = a - a.mean(0)
    return torch.linalg.qr(a).Q


def test_cosine_matrix_and_mean_offdiagonal() -> None:
    x = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]])
    expected = torch.tensor([[1.0, 0.0, -1.0], [0.0, 1.0, 0.0], [-1.0, 0.0, 1.0]])
    assert torch.allclose(cosine_matrix(x), expected)
    assert mean_offdiagonal(expected).item() == pytest.approx(-1 / 3)
    assert mean_offdiagonal(expected, absolute=True).item() == pytest.approx(1 / 3)
    assert math.isnan(mean_offdiagonal(torch.ones(1, 1)).item())


def _disjoint_support_repr(assign: torch.Tensor, d: int = 4, q: int = 3) -> torch.Tensor:
    """[S, D, Q] rows with random positive values only on the D-slot block owned by their expert."""
    values = torch.rand(assign.numel(), d * q, generator=_gen(1)) + 0.1
    block = d * q // (int(assign.max()) + 1)
    owner = torch.arange(d * q) // block
    return (values * (owner == assign.reshape(-1, 1))).reshape(-1, d, q)


def test_centroid_cosine_is_zero_for_orthogonal_centroids_and_ignores_empty_experts() -> None:
    assign = torch.tensor([[0, 1, 2, 0, 1, 2], [2, 2, 0, 1, 0, 1]])
    expert_repr = _disjoint_support_repr(assign)
    centroids, present = expert_centroids(expert_repr, assign, num_experts=4)
    assert present.tolist() == [True, True, True, False]
    assert torch.allclose(centroids[0], expert_repr[assign.reshape(-1) == 0].flatten(1).mean(0))
    assert centroid_cosine(expert_repr, assign, num_experts=4).item() == pytest.approx(0.0, abs=1e-7)


def test_centroid_cosine_is_one_for_identical_centroids_and_nan_for_one_expert() -> None:
    expert_repr = torch.ones(6, 2, 2)
    assert centroid_cosine(expert_repr, torch.tensor([0, 1, 2, 0, 1, 2]), 3).item() == pytest.approx(1.0)
    assert math.isnan(centroid_cosine(expert_repr, torch.zeros(6, dtype=torch.long), 3).item())


def test_centroid_rejects_mismatched_rows() -> None:
    with pytest.raises(ValueError, match="S = assign.numel"):
        centroid_cosine(torch.ones(5, 2, 2), torch.zeros(6, dtype=torch.long), 2)


def _two_clusters(per_cluster: int = 20) -> tuple[torch.Tensor, torch.Tensor]:
    noise = 0.01 * torch.randn(2 * per_cluster, 2, generator=_gen(2))
    centres = torch.tensor([[10.0, 0.0]] * per_cluster + [[0.0, 10.0]] * per_cluster)
    return centres + noise, torch.tensor([0] * per_cluster + [1] * per_cluster)


@pytest.mark.parametrize("metric", ["cosine", "euclidean"])
def test_silhouette_of_well_separated_clusters_is_near_one(metric: str) -> None:
    x, labels = _two_clusters()
    assert silhouette_score(x, labels, metric=metric).item() > 0.99


def test_silhouette_hand_example_with_singleton() -> None:
    x = torch.tensor([[0.0], [1.0], [4.0]])
    labels = torch.tensor([0, 0, 1])
    # s(0) = (4 - 1) / 4, s(1) = (3 - 1) / 3, the singleton scores 0
    expected = (0.75 + 2 / 3 + 0.0) / 3
    assert silhouette_score(x, labels, metric="euclidean").item() == pytest.approx(expected, rel=1e-6)


def test_silhouette_is_independent_of_chunking_and_label_values() -> None:
    x = torch.randn(37, 5, generator=_gen(3))
    labels = torch.randint(3, (37,), generator=_gen(4))
    full = silhouette_score(x, labels, metric="cosine")
    chunked = silhouette_score(x, labels * 7 + 2, metric="cosine", chunk_size=5)
    assert chunked.item() == pytest.approx(full.item(), abs=1e-6)


def test_silhouette_undefined_or_invalid_inputs() -> None:
    assert math.isnan(silhouette_score(torch.randn(4, 2), torch.zeros(4, dtype=torch.long)).item())
    with pytest.raises(ValueError, match="'cosine' or 'euclidean'"):
        silhouette_score(torch.randn(4, 2), torch.tensor([0, 0, 1, 1]), metric="manhattan")


def _gram_cka(x: torch.Tensor, y: torch.Tensor, debiased: bool) -> float:
    """Reference CKA through n×n Gram matrices (Kornblith et al. 2019; unbiased centring of Nguyen et al. 2021)."""

    def centre(gram: torch.Tensor) -> torch.Tensor:
        n = gram.shape[0]
        if not debiased:
            h = torch.eye(n, dtype=gram.dtype) - 1.0 / n
            return h @ gram @ h
        gram = gram.clone().fill_diagonal_(0)
        means = gram.sum(0) / (n - 2)
        means = means - means.sum() / (2 * (n - 1))
        return (gram - means[:, None] - means[None, :]).fill_diagonal_(0)

    kx, ky = centre(x @ x.T), centre(y @ y.T)
    return float((kx * ky).sum() / ((kx * kx).sum().sqrt() * (ky * ky).sum().sqrt()))


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_identical_rotated_and_scaled_representations_give_one(debiased: bool) -> None:
    x = torch.randn(40, 6, generator=_gen(5))
    rotation = _orthonormal_columns(6, 6, centred=False).float()
    assert linear_cka(x, x, debiased).item() == pytest.approx(1.0, abs=1e-6)
    assert linear_cka(x, 3.0 * x @ rotation + 1.0, debiased).item() == pytest.approx(1.0, abs=1e-5)


def test_cka_orthogonal_representations_give_zero() -> None:
    cols = _orthonormal_columns(50, 6, centred=True)
    assert linear_cka(cols[:, :3], cols[:, 3:]).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("debiased", [False, True])
def test_cka_matches_gram_matrix_reference(debiased: bool) -> None:
    x = torch.randn(30, 7, generator=_gen(6), dtype=torch.float64) + 2.0
    y = x[:, :3] @ torch.randn(3, 4, generator=_gen(7), dtype=torch.float64) + torch.randn(
        30, 4, generator=_gen(8)
    )
    assert linear_cka(x, y, debiased).item() == pytest.approx(_gram_cka(x, y, debiased), abs=1e-6)


def test_debiased_cka_removes_bias_for_independent_features() -> None:
    x = torch.randn(40, 200, generator=_gen(9))
    y = torch.randn(40, 200, generator=_gen(10))
    standard = linear_cka(x, y).item()
    debiased = linear_cka(x, y, debiased=True).item()
    assert standard > 0.7  # independent but few samples: standard CKA is strongly biased upwards
    assert abs(debiased) < 0.06


def test_cka_degenerate_inputs() -> None:
    assert math.isnan(linear_cka(torch.ones(10, 3), torch.randn(10, 3)).item())
    with pytest.raises(ValueError, match="at least 4 samples"):
        linear_cka(torch.randn(3, 2), torch.randn(3, 2), debiased=True)
    with pytest.raises(ValueError, match="same n"):
        linear_cka(torch.randn(5, 2), torch.randn(6, 2))


def test_pairwise_cka_on_identical_scaled_and_orthogonal_experts() -> None:
    s, seq, m = 6, 5, 4
    cols = _orthonormal_columns(s * seq, 2 * m, centred=True).float()
    base, other = cols[:, :m].reshape(s, seq, m), cols[:, m:].reshape(s, seq, m)
    outputs = torch.stack([base, 2.0 * base, other])
    matrix = pairwise_cka(outputs)
    expected = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    assert torch.allclose(matrix, expected, atol=1e-5)
    assert mean_pairwise_cka(outputs[:2]).item() == pytest.approx(1.0, abs=1e-5)
    assert mean_pairwise_cka(torch.stack([base, other])).item() == pytest.approx(0.0, abs=1e-6)
    with pytest.raises(ValueError, match=r"\[E, S, L, M\]"):
        pairwise_cka(base)


def test_scale_cosine_orthonormal_identical_and_invalid() -> None:
    frames = torch.stack([_orthonormal_columns(4, 3, centred=False, seed=i) for i in range(5)]).float()
    assert scale_cosine(frames).item() == pytest.approx(0.0, abs=1e-6)
    assert scale_cosine(torch.ones(5, 4, 3)).item() == pytest.approx(1.0)
    assert scale_cosine(torch.cat([frames[:, :, :1], -frames[:, :, :1]], dim=2)).item() == pytest.approx(1.0)
    with pytest.raises(ValueError, match="Q >= 2"):
        scale_cosine(torch.ones(5, 4, 1))


def test_negative_sampling_draws_only_and_all_other_expert_rows() -> None:
    labels = torch.tensor([2, 0, 2, 1, 0, 2, 1, 0])
    rows, valid = _sample_other_expert_rows(labels, 400, _gen(11))
    assert valid.all()
    assert (labels[rows] != labels.unsqueeze(1)).all()
    for i in range(labels.numel()):
        assert set(rows[i].tolist()) == set(torch.nonzero(labels != labels[i]).flatten().tolist())


def _separable_repr(assign: torch.Tensor, q: int = 3) -> torch.Tensor:
    """Every scale of a node equals its expert's basis vector: positives cos 1, negatives cos 0."""
    basis = torch.eye(4)[assign.reshape(-1)]  # [S, D]
    return basis.unsqueeze(2).expand(-1, -1, q).clone()


def test_infonce_accuracy_one_on_separable_case() -> None:
    assign = torch.tensor([[0, 1, 2, 3, 0, 1], [2, 3, 0, 1, 2, 3]])
    assert infonce_top1(_separable_repr(assign), assign).item() == 1.0


def test_infonce_accuracy_zero_on_adversarial_case() -> None:
    # each node's two scales are anti-parallel (positive cos -1), experts orthogonal (negatives cos 0)
    assign = torch.tensor([0, 1, 0, 1, 0, 1])
    base = torch.eye(2)[assign]
    expert_repr = torch.stack([base, -base], dim=2)  # [S, D=2, Q=2]
    assert infonce_top1(expert_repr, assign).item() == 0.0


def test_infonce_ties_do_not_count_as_wins() -> None:
    assign = torch.tensor([0, 1, 0, 1])
    assert infonce_top1(torch.ones(4, 3, 2), assign).item() == 0.0


def test_infonce_positive_weights_judge_the_loss_logits() -> None:
    assign = torch.tensor([0, 1, 0, 1])
    a = torch.tensor([[1.0, 0.5], [0.0, math.sqrt(0.75)]])  # [D, Q], scale cos 0.5
    b = torch.tensor([[0.6, 0.6], [0.8, 0.8]])  # cos 0.6 to a's anchor, cos 1 within node
    expert_repr = torch.stack([a, b, a, b])
    assert infonce_top1(expert_repr, assign).item() == pytest.approx(0.5)
    weights = torch.tensor([[1.0, 2.0], [1.0, 1.0]])
    assert infonce_top1(expert_repr, assign, pos_weight=weights).item() == 1.0


def test_infonce_is_seeded_and_undefined_without_other_experts() -> None:
    expert_repr = torch.randn(30, 4, 3, generator=_gen(12))
    assign = torch.randint(3, (30,), generator=_gen(13))
    first = infonce_top1(expert_repr, assign, num_negatives=3, generator=_gen(5)).item()
    again = infonce_top1(expert_repr, assign, num_negatives=3, generator=_gen(5)).item()
    assert first == again and 0.0 < first < 1.0
    assert math.isnan(infonce_top1(expert_repr, torch.zeros(30, dtype=torch.long)).item())


def _diag(batch: int = 2, nodes: int = 6, experts: int = 3, d: int = 4, q: int = 3, seq: int = 5) -> dict:
    gen = _gen(14)
    logits = torch.randn(nodes, experts, generator=gen).expand(batch, nodes, experts)
    probs = torch.softmax(logits, dim=-1)
    noisy = torch.softmax(logits + 0.01 * torch.rand(logits.shape, generator=gen), dim=-1)
    assign = noisy.argmax(-1)
    expert_repr = torch.nn.functional.normalize(torch.randn(batch * nodes, d, q, generator=gen), dim=1)
    outputs = torch.randn(experts, batch * nodes, seq, d * q, generator=gen)
    return {
        "probs": probs,
        "probs_noisy": noisy,
        "assign": assign,
        "expert_repr": expert_repr,
        "expert_outputs": outputs,
    }


BASE_KEYS = {
    "routing/noise_flip_frac",
    "routing/margin",
    "routing/logit_margin",
    "routing/near_tie_frac",
    "routing/load_entropy",
    "routing/load_cv",
    "disent/centroid_cos",
    "disent/silhouette",
    "disent/scale_cos",
    "disent/infonce_top1",
}


def test_summarize_layer_keys_depend_on_available_inputs() -> None:
    diag = _diag()
    without_optional = {k: v for k, v in diag.items() if k != "expert_outputs"}
    assert set(summarize_layer(without_optional)) == BASE_KEYS
    full = summarize_layer(diag, prev=diag)
    assert set(full) == BASE_KEYS | {
        "disent/cka",
        "routing/flip_rate",
        "routing/flip_rate_noisy",
        "routing/tv",
    }
    perturbed = {**diag, "probs_perturbed": diag["probs"].clone(), "delta_norm": torch.ones(2)}
    assert summarize_layer(perturbed)["routing/sensitivity"] == 0.0


def test_summarize_layer_values_are_consistent_with_the_metrics() -> None:
    diag = _diag()
    prev = {**diag, "probs": diag["probs"].roll(1, dims=1), "assign": diag["assign"].roll(1, dims=1)}
    summary = summarize_layer(diag, prev=prev)
    assert all(isinstance(v, float) for v in summary.values())
    assert summary == summarize_layer(diag, prev=prev)  # deterministic
    assert summary["routing/flip_rate"] == pytest.approx(
        (prev["probs"].argmax(-1) != diag["probs"].argmax(-1)).float().mean().item()
    )
    assert summary["routing/tv"] > 0.0
    assert summary["disent/scale_cos"] == pytest.approx(scale_cosine(diag["expert_repr"]).item())
    assert 0.0 <= summary["routing/load_entropy"] <= 1.0
    assert -1.0 <= summary["disent/silhouette"] <= 1.0
    assert summarize_layer(diag, prev=diag)["routing/flip_rate"] == 0.0


def test_summarize_layer_subsamples_rows_with_a_seed() -> None:
    diag = _diag(batch=8, nodes=20)
    small = summarize_layer(diag, subsample_rows=50, seed=1)
    assert small == summarize_layer(diag, subsample_rows=50, seed=1)
    assert small != summarize_layer(diag, subsample_rows=50, seed=2)
    exact = summarize_layer(diag, subsample_rows=1000)
    labels = diag["assign"].reshape(-1)
    assert exact["disent/silhouette"] == pytest.approx(
        silhouette_score(diag["expert_repr"].flatten(1), labels).item()
    )
    assert exact["disent/cka"] == pytest.approx(mean_pairwise_cka(diag["expert_outputs"]).item())
