"""Causal attention over scales: scale i attends to scales j >= i."""

from __future__ import annotations

import math

import pytest
import torch

from stm3_lightning.models.stm3.scale_attention import (
    KERNEL_MAX_SIZE,
    CausalScaleAttention,
    kernel_available,
)


def test_matches_a_per_query_loop() -> None:
    torch.manual_seed(0)
    att = CausalScaleAttention(3)
    for proj in (att.q_proj, att.k_proj, att.v_proj, att.out_proj):
        torch.nn.init.uniform_(proj.bias)  # non-zero biases so they are exercised
    g = torch.randn(5, 3, 4)  # [..., D, Q]
    out = att(g)
    for r in range(5):
        tokens = g[r].T  # [Q, D]
        for i in range(4):
            q = att.q_proj(tokens[i])
            keys = att.k_proj(tokens[i:])
            alpha = torch.softmax(keys @ q / math.sqrt(3), dim=0)
            ref = att.out_proj(alpha @ att.v_proj(tokens[i:]))
            torch.testing.assert_close(out[r, :, i], ref, atol=1e-6, rtol=1e-5)


def test_finer_scales_do_not_reach_coarser_queries() -> None:
    torch.manual_seed(0)
    att = CausalScaleAttention(2)
    g = torch.randn(1, 2, 4)
    g2 = g.clone()
    g2[..., 0] += 1.0  # change the finest scale
    delta = (att(g2) - att(g)).abs().sum(dim=1)[0]  # per query scale
    assert delta[0] > 0 and torch.all(delta[1:] == 0)


def test_constructor_init_is_the_released_one() -> None:
    att = CausalScaleAttention(4)
    assert all(torch.all(p.bias == 0) for p in (att.q_proj, att.k_proj, att.v_proj, att.out_proj))


def _outputs_and_grads(att: CausalScaleAttention, g: torch.Tensor, fused: bool) -> list[torch.Tensor]:
    """Output, input gradient and parameter gradients of one forward/backward through either path."""
    att.fused = fused
    g = g.detach().requires_grad_()
    out = att(g)
    grads = torch.autograd.grad(out, [g, *att.parameters()], torch.linspace(-1, 1, out.numel()).view_as(out))
    return [out.detach(), *grads]


@pytest.mark.parametrize("dim, scales, lead", [(4, 4, (3, 5, 7)), (3, 5, (11,)), (2, 1, (4,))])
def test_fused_kernel_matches_the_pytorch_path(dim: int, scales: int, lead: tuple[int, ...]) -> None:
    if not kernel_available():
        pytest.skip("the fused CPU scale-attention kernel cannot be compiled here")
    torch.manual_seed(0)
    att = CausalScaleAttention(dim)
    for p in att.parameters():
        torch.nn.init.normal_(p)
    assert att._use_kernel(torch.zeros(1, dim, scales))
    g = torch.randn(*lead, dim, scales)
    fused, plain = _outputs_and_grads(att, g, True), _outputs_and_grads(att, g, False)
    # The key bias gets no gradient (softmax is shift invariant): both paths leave only rounding there, so the
    # absolute tolerance is relative to the largest output/gradient, as the parity checks elsewhere.
    scale = max(float(want.abs().max()) for want in plain)
    for got, want in zip(fused, plain, strict=True):
        torch.testing.assert_close(got, want, atol=1e-5 * max(scale, 1.0), rtol=1e-5)


def test_kernel_is_skipped_where_it_does_not_apply() -> None:
    att = CausalScaleAttention(4)
    assert not att._use_kernel(torch.zeros(2, 4, 4, dtype=torch.float64))
    assert not att._use_kernel(torch.zeros(2, 4, KERNEL_MAX_SIZE + 1))
    assert not CausalScaleAttention(4, fused=False)._use_kernel(torch.zeros(2, 4, 4))
    g = torch.randn(2, 4, 4, dtype=torch.float64)
    torch.testing.assert_close(att.double()(g), att.attention_reference(g))
