import math

import pytest
import torch

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


def _onehot_probs(routes: list[int], num_experts: int = 3) -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.tensor(routes), num_experts).float().unsqueeze(0)


def test_flip_rate_hand_example() -> None:
    prev = _onehot_probs([0, 1, 2, 0])
    cur = _onehot_probs([0, 2, 2, 1])
    assert flip_rate(prev, cur).item() == pytest.approx(0.5)
    assert flip_rate(prev, prev).item() == 0.0


def test_flip_rate_accepts_assignments_and_mixed_inputs() -> None:
    probs = torch.tensor([[[0.7, 0.3], [0.4, 0.6], [0.9, 0.1]]])
    assign = torch.tensor([[0, 0, 0]])
    assert flip_rate(probs, assign).item() == pytest.approx(1 / 3)
    assert flip_rate(assign, torch.tensor([[1, 0, 1]])).item() == pytest.approx(2 / 3)


def test_flip_rate_rejects_mismatched_batches() -> None:
    with pytest.raises(ValueError, match="same fixed batch"):
        flip_rate(torch.zeros(2, 3, dtype=torch.long), torch.zeros(3, 3, dtype=torch.long))


def test_total_variation_hand_example() -> None:
    prev = torch.tensor([[[0.5, 0.5, 0.0], [1.0, 0.0, 0.0]]])
    cur = torch.tensor([[[0.5, 0.25, 0.25], [0.0, 1.0, 0.0]]])
    # node 0: ½(0 + 0.25 + 0.25) = 0.25; node 1: ½(1 + 1) = 1
    assert total_variation(prev, cur).item() == pytest.approx(0.625)
    assert total_variation(cur, cur).item() == 0.0


def _routers(batch: int = 8, nodes: int = 5, experts: int = 4) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(0)
    emb = torch.randn(nodes, 6, generator=gen)
    w_node = torch.randn(6, experts, generator=gen)
    w_input = torch.randn(12, experts, generator=gen)
    x = torch.randn(batch, 12, nodes, generator=gen)
    delta = 1e-3 * torch.randn(x.shape, generator=gen)
    node_probs = torch.softmax(emb @ w_node, dim=-1).expand(batch, nodes, experts)
    return {
        "node": node_probs,
        "input": torch.softmax(torch.einsum("bln,le->bne", x, w_input), dim=-1),
        "input_perturbed": torch.softmax(torch.einsum("bln,le->bne", x + delta, w_input), dim=-1),
        "delta_norm": delta.flatten(1).norm(dim=1),
    }


def test_sensitivity_is_zero_for_node_router_and_positive_for_input_router() -> None:
    r = _routers()
    assert input_sensitivity(r["node"], r["node"].clone(), r["delta_norm"]).item() == 0.0
    assert input_sensitivity(r["input"], r["input_perturbed"], r["delta_norm"]).item() > 0.01


def test_sensitivity_scales_inversely_with_delta_norm() -> None:
    probs = torch.tensor([[[1.0, 0.0]], [[0.5, 0.5]]])
    perturbed = torch.tensor([[[0.0, 1.0]], [[0.5, 0.5]]])
    assert input_sensitivity(probs, perturbed, torch.tensor([2.0, 1.0])).item() == pytest.approx(0.5)
    assert input_sensitivity(probs, perturbed, 4.0).item() == pytest.approx(0.25)


@pytest.mark.parametrize("bad", [0.0, torch.tensor([1.0, 0.0]), torch.ones(3)])
def test_sensitivity_rejects_bad_delta_norms(bad: float | torch.Tensor) -> None:
    probs = torch.full((2, 3, 2), 0.5)
    with pytest.raises(ValueError, match="delta_norm"):
        input_sensitivity(probs, probs, bad)


def test_top1_margin_probability_and_logit_space() -> None:
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.26, 0.25, 0.49]])
    assert torch.allclose(top1_margin(probs), torch.tensor([0.2, 0.23]))
    expected_logit = torch.tensor([math.log(0.5 / 0.3), math.log(0.49 / 0.26)])
    assert torch.allclose(top1_margin(probs, log_space=True), expected_logit)


def test_near_tie_fraction_matches_logit_gap_of_softmax() -> None:
    # softmax logit gaps 0.005 (a near tie: U(0, 0.01) noise can flip it) and 0.5 (cannot)
    logits = torch.tensor([[1.0, 0.995, -2.0], [0.5, 0.0, -1.0]])
    probs = torch.softmax(logits, dim=-1)
    assert near_tie_fraction(probs).item() == pytest.approx(0.5)
    assert near_tie_fraction(probs, threshold=1.0).item() == 1.0
    assert near_tie_fraction(probs, threshold=0.001).item() == 0.0


def test_top1_margin_needs_two_experts() -> None:
    with pytest.raises(ValueError, match="at least 2 experts"):
        top1_margin(torch.ones(3, 1))


def test_expert_load_counts_fractions_and_validates_range() -> None:
    assign = torch.tensor([[0, 0, 1], [3, 0, 1]])
    assert torch.allclose(expert_load(assign, 4), torch.tensor([0.5, 1 / 3, 0.0, 1 / 6]))
    with pytest.raises(ValueError, match="num_experts=3"):
        expert_load(assign, 3)


@pytest.mark.parametrize("num_experts", [2, 4, 7])
def test_uniform_load_is_perfectly_balanced(num_experts: int) -> None:
    loads = torch.full((num_experts,), 5.0)
    assert load_entropy(loads).item() == pytest.approx(1.0)
    assert load_cv(loads).item() == pytest.approx(0.0, abs=1e-7)


@pytest.mark.parametrize("num_experts", [2, 4, 7])
def test_collapsed_load_has_zero_entropy_and_max_cv(num_experts: int) -> None:
    loads = torch.zeros(num_experts)
    loads[1] = 10.0
    assert load_entropy(loads).item() == pytest.approx(0.0, abs=1e-7)
    assert load_cv(loads).item() == pytest.approx(math.sqrt(num_experts - 1))


def test_partial_load_values() -> None:
    loads = torch.tensor([0.5, 0.5, 0.0, 0.0])
    assert load_entropy(loads).item() == pytest.approx(math.log(2) / math.log(4))
    assert load_cv(loads).item() == pytest.approx(1.0)  # mean 0.25, population std 0.25


def test_single_expert_is_balanced_and_bad_loads_raise() -> None:
    assert load_entropy(torch.tensor([3.0])).item() == 1.0
    with pytest.raises(ValueError, match="non-negative"):
        load_entropy(torch.zeros(4))
