"""Router: released noisy top-1 routing on node embeddings, eval noise, gradient modes, top-k."""

from __future__ import annotations

import pytest
import torch

from stm3_lightning.models.stm3.router import Router


def test_released_noise_and_renormalisation() -> None:
    torch.manual_seed(0)
    router = Router(4, 3).eval()  # the release draws the noise in eval mode too
    inputs = torch.randn(10, 4)
    torch.manual_seed(5)
    routing = router(inputs)
    torch.manual_seed(5)
    noise = torch.rand(10, 3) * 0.01
    probs = torch.softmax(router.gate(inputs) + noise, dim=-1)
    top, idx = probs.max(dim=-1)
    torch.testing.assert_close(routing.noise, noise)
    torch.testing.assert_close(routing.probs_noisy, probs)
    torch.testing.assert_close(routing.probs, torch.softmax(router.gate(inputs), dim=-1))
    assert torch.equal(routing.indices[:, 0], idx)
    torch.testing.assert_close(routing.weights[:, 0], top / (top + 1e-8))


def test_noise_can_be_disabled_at_eval_only() -> None:
    router = Router(4, 3, noise_at_eval=False)
    inputs = torch.randn(6, 4)
    assert torch.all(router.eval()(inputs).noise == 0)
    assert torch.any(router.train()(inputs).noise > 0)


@pytest.mark.parametrize(("grad", "small"), [("released", True), ("straight_through", False)])
def test_gate_gradient(grad: str, small: bool) -> None:
    torch.manual_seed(0)
    router = Router(4, 3, grad=grad)
    routing = router(torch.randn(8, 4))
    (routing.weights * torch.randn(8, 1)).sum().backward()
    norm = router.gate.weight.grad.norm().item()
    assert norm > 0
    # released: d/dp [p / (p + 1e-8)] = 1e-8 / (p + 1e-8)^2, so the gate barely learns
    assert (norm < 1e-6) == small
    assert torch.allclose(routing.weights, torch.ones_like(routing.weights), atol=1e-6)


def test_top_k_and_membership() -> None:
    torch.manual_seed(0)
    routing = Router(4, 5, top_k=2)(torch.randn(7, 4))
    assert routing.indices.shape == (7, 2) and torch.all(routing.indices[:, 0] != routing.indices[:, 1])
    torch.testing.assert_close(routing.weights.sum(-1), torch.ones(7), atol=1e-6, rtol=0)
    member = routing.membership(5)
    assert member.shape == (7, 5) and torch.all(member.sum(-1) == 2)
    assert torch.all(member.gather(1, routing.indices))


def test_rejects_an_unknown_gradient_mode() -> None:
    with pytest.raises(ValueError, match="straight_through"):
        Router(4, 3, grad="gumbel")
