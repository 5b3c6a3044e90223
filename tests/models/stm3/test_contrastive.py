"""Causal contrastive loss: weights, positive masks and parity with per-anchor reference computations."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from stm3_lightning.models.stm3.contrastive import (
    causal_contrastive_loss,
    positive_mask,
    scale_distance_weights,
    scale_representations,
)

# Reference section 3.2: the released positive mask for Q = 4 (14 positives).
RELEASED_MASK_Q4 = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 1], [1, 1, 1, 0]], dtype=torch.bool)


def _routed_outputs(
    rows: int, experts: int, length: int, d: int, q: int, assign: torch.Tensor
) -> torch.Tensor:
    """Dense [R, E, L, D, Q] expert outputs as the release stores them: zeros except each row's own expert."""
    out = torch.zeros(rows, experts, length, d, q)
    out[torch.arange(rows), assign] = torch.randn(rows, length, d, q)
    return out


def _reference_loss(
    outputs: torch.Tensor, assign: torch.Tensor, variant: str, k: int, gamma: float = 0.1
) -> float:
    """Per-anchor loops over the release's definition (and the repaired one), drawing randoms as the code does."""
    rows, experts, _, _, num_scales = outputs.shape
    reps = F.normalize(outputs.mean(dim=2), dim=2).permute(0, 1, 3, 2)  # [R, E, Q, D]
    temp, losses = 0.1, []
    for e in range(experts):
        idxs = torch.where(assign == e)[0]
        if len(idxs) == 0:
            continue
        others = torch.where(assign != e)[0]
        n = len(idxs)
        if len(others):
            neg_idx = torch.randint(0, len(others), (n, k))
            if variant == "released":
                neg_e = torch.randint(0, experts - 1, (n, k))
                neg_e[neg_e >= e] += 1
            neg_s = torch.randint(0, num_scales, (n, k))
        total, count = 0.0, 0
        for a, i in enumerate(idxs.tolist()):
            for p in range(num_scales):
                logits, positives = [], []
                for q in range(num_scales):
                    w = (p - q + 1) ** -gamma if p > q else (q - p + 1) ** gamma
                    sim = float(reps[i, e, p] @ reps[i, e, q]) / temp * w
                    if variant == "released":
                        logits.append(sim if q > p else 0.0)
                        positives.append(q > p or (p >= 1 and q <= num_scales - 2))
                    elif abs(p - q) == 1:
                        logits.append(sim)
                        positives.append(True)
                for j in range(k):
                    if not len(others):
                        logits.append(-10.0)
                        continue
                    node = int(others[neg_idx[a, j]])
                    expert = int(neg_e[a, j]) if variant == "released" else int(assign[node])
                    logits.append(float(reps[i, e, p] @ reps[node, expert, neg_s[a, j]]) / temp)
                    positives.append(False)
                log_p = torch.log_softmax(torch.tensor(logits, dtype=torch.float64), dim=0)
                total += float(
                    log_p[torch.tensor(positives + [False] * (len(logits) - len(positives)))].sum()
                )
                count += sum(positives)
        losses.append(-total / count)
    return sum(losses) / len(losses)


def test_scale_distance_weights() -> None:
    w = scale_distance_weights(4, 0.1, 0.1)
    torch.testing.assert_close(w[0, 1:], torch.tensor([1.0718, 1.1161, 1.1487]), atol=1e-4, rtol=0)
    torch.testing.assert_close(w.diagonal(), torch.ones(4))
    assert w[3, 0] == pytest.approx(4**-0.1) and w[1, 0] == pytest.approx(2**-0.1)


def test_positive_masks() -> None:
    assert torch.equal(positive_mask(4, "released"), RELEASED_MASK_Q4)
    idx = torch.arange(5)
    assert torch.equal(positive_mask(5, "repaired"), (idx[:, None] - idx[None, :]).abs() == 1)


def test_scale_representations_are_unit_over_d() -> None:
    means = torch.randn(3, 2, 12)
    reps = scale_representations(means, 4)  # [3, 2, D=4, Q=3], channel d * Q + q
    assert reps.shape == (3, 2, 4, 3)
    torch.testing.assert_close(reps.norm(dim=-2), torch.ones(3, 2, 3))
    torch.testing.assert_close(reps[0, 0, :, 1], F.normalize(means[0, 0, [1, 4, 7, 10]], dim=0))


@pytest.mark.parametrize("variant", ["released", "repaired"])
@pytest.mark.parametrize("single_expert", [False, True])
def test_matches_the_per_anchor_reference(variant: str, single_expert: bool) -> None:
    torch.manual_seed(0)
    rows, experts, d, q = 9, 3, 3, 4
    assign = (
        torch.zeros(rows, dtype=torch.long) if single_expert else torch.tensor([0, 1, 2, 0, 1, 0, 0, 2, 1])
    )
    outputs = _routed_outputs(rows, experts, 5, d, q, assign)
    reps = scale_representations(outputs.mean(dim=2).flatten(2), d).transpose(-1, -2)
    member = F.one_hot(assign, experts).bool()
    torch.manual_seed(42)  # negatives come from the global CPU generator
    loss = causal_contrastive_loss(reps, member, assign, num_negatives=4, variant=variant)
    torch.manual_seed(42)
    k = 0 if (single_expert and variant == "repaired") else 4
    assert loss.item() == pytest.approx(_reference_loss(outputs, assign, variant, k), rel=1e-5)


def test_repaired_loss_is_finite_and_trains_through_masked_logits() -> None:
    torch.manual_seed(0)
    reps = F.normalize(torch.randn(6, 2, 3, 4), dim=-1).requires_grad_()
    assign = torch.tensor([0, 1, 0, 1, 1, 0])
    loss = causal_contrastive_loss(reps, F.one_hot(assign, 2).bool(), assign, variant="repaired")
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(reps.grad).all() and reps.grad.abs().sum() > 0


def test_single_scale_gives_zero_loss() -> None:
    reps = torch.randn(4, 2, 1, 3)
    assign = torch.tensor([0, 1, 0, 1])
    for variant in ("released", "repaired"):
        assert (
            causal_contrastive_loss(reps, F.one_hot(assign, 2).bool(), assign, variant=variant).item() == 0.0
        )


def test_rejects_an_unknown_variant() -> None:
    with pytest.raises(ValueError, match="released or repaired"):
        causal_contrastive_loss(
            torch.zeros(2, 1, 2, 2), torch.ones(2, 1, dtype=torch.bool), torch.zeros(2).long(), variant="x"
        )
