"""Causal attention over scales: scale i attends to scales j >= i (the module; kernel parity: kernels/)."""

from __future__ import annotations

import math

import torch

from stm3_lightning.models.stm3.scale_attention import CausalScaleAttention


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
