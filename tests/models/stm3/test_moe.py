"""Mixture of multiscale Mamba experts: combination, shared expert, expert means, hidden routing."""

from __future__ import annotations

import pytest
import torch

from stm3_lightning.models.stm3.moe import MixtureOfExperts

KW = {"mamba_kwargs": {"d_state": 4, "kernel_backend": "torch"}}


def _moe(seed: int = 0, **overrides: object) -> MixtureOfExperts:
    torch.manual_seed(seed)
    return MixtureOfExperts(8, 2, [1, 3, 5, 7], 3, **{"num_experts": 3, **KW, **overrides})


@pytest.mark.parametrize("shared", [True, False])
def test_output_is_weighted_routed_expert_plus_gated_shared(shared: bool) -> None:
    moe = _moe(shared_expert=shared)
    emb, h = torch.randn(4, 3), torch.randn(8, 6, 8)  # rows = 2 samples x 4 nodes
    result = moe(h, emb, with_means=True)
    routing = result.routing
    for r in range(8):
        e = int(routing.indices[r, 0])
        y = moe.experts[e](h[r : r + 1])[0]
        ref = routing.weights[r, 0] * y
        if shared:
            ref = ref + torch.sigmoid(moe.shared_gate(emb[r % 4])) * moe.shared_expert(h[r : r + 1])[0]
        torch.testing.assert_close(result.out[r], ref, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(result.means[r, e], y.mean(dim=0), atol=1e-5, rtol=1e-4)
        others = [o for o in range(3) if o != e]
        assert torch.all(result.means[r, others] == 0)
    assert shared == any("shared" in name for name, _ in moe.named_parameters())


def test_node_routing_ignores_the_input_and_hidden_routing_does_not() -> None:
    emb, h = torch.randn(4, 3), torch.randn(8, 6, 8)
    for router, depends in (("node", False), ("hidden", True)):
        moe = _moe(router=router, router_noise=0.0)
        logits = moe(h, emb).routing.logits
        assert torch.allclose(logits[:4], logits[4:]) != depends or router == "hidden"
        changed = moe(h + torch.randn_like(h), emb).routing.logits
        assert (not torch.allclose(logits, changed)) == depends
    assert _moe(router="hidden").router.gate.weight.shape == (3, 8)


def test_top_k_rows_mix_several_experts() -> None:
    moe = _moe(top_k=2, shared_expert=False)
    emb, h = torch.randn(4, 3), torch.randn(4, 5, 8)
    result = moe(h, emb)
    r = 0
    ref = sum(
        result.routing.weights[r, j] * moe.experts[int(result.routing.indices[r, j])](h[:1])[0]
        for j in range(2)
    )
    torch.testing.assert_close(result.out[r], ref, atol=1e-5, rtol=1e-4)


def test_run_all_experts_and_contrastive_need_means() -> None:
    moe = _moe()
    h = torch.randn(4, 5, 8)
    assert moe.run_all_experts(h).shape == (3, 4, 5, 8)
    with pytest.raises(ValueError, match="with_means=True"):
        moe.contrastive_loss(moe(h, torch.randn(4, 3)), "released")
