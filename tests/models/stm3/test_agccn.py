"""Adaptive graph Chebyshev convolution and the AGCCN block."""

from __future__ import annotations

import torch

from stm3_lightning.models.stm3.agccn import AGCCN, AdaptiveGraphConv, adaptive_adjacency, chebyshev_supports


def test_adjacency_and_chebyshev_supports() -> None:
    torch.manual_seed(0)
    emb = torch.randn(5, 3)
    adj = adaptive_adjacency(emb)
    torch.testing.assert_close(adj, torch.softmax(torch.clamp(emb @ emb.T, min=0), dim=1))
    torch.testing.assert_close(adj.sum(dim=1), torch.ones(5))
    sup = chebyshev_supports(adj, 4)
    eye = torch.eye(5)
    torch.testing.assert_close(sup[0], eye)
    torch.testing.assert_close(sup[1], adj)
    torch.testing.assert_close(sup[2], 2 * adj @ adj - eye)
    torch.testing.assert_close(sup[3], 2 * adj @ sup[2] - adj)


def test_graph_conv_matches_the_reference_formula() -> None:
    torch.manual_seed(0)
    n, d, q, d_e, k = 5, 3, 2, 4, 3
    conv = AdaptiveGraphConv(d, d_e, k)
    torch.nn.init.normal_(conv.bias_pool)
    emb = torch.randn(n, d_e)
    x = torch.randn(2, n, 4, d, q)  # [B, N, L, D, Q]
    out = conv(x, emb)
    sup = chebyshev_supports(adaptive_adjacency(emb), k)
    ref = torch.zeros(2, n, 4, d, q)
    for node in range(n):
        w_n = sum(emb[node, j] * conv.weights_pool[j] for j in range(d_e))  # [K, D, D]
        b_n = emb[node] @ conv.bias_pool  # [D]
        for kk in range(k):
            g = torch.einsum("m,bmldq->bldq", sup[kk, node], x)
            ref[:, node] += torch.einsum("bldq,do->bloq", g, w_n[kk])
        ref[:, node] += b_n[None, None, :, None]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)


def test_block_is_norm_attention_norm() -> None:
    torch.manual_seed(0)
    block = AGCCN(3, 4, 5, 3)
    emb, x = torch.randn(6, 5), torch.randn(2, 6, 7, 3, 4)
    g = block.norm1(block.graph(x, emb))
    torch.testing.assert_close(block(x, emb), block.norm2(g + block.attention(g)))
    assert block.norm1.weight.shape == (3, 4)  # LayerNorm over [D, Q] jointly


def test_switched_off_parts_have_no_parameters() -> None:
    torch.manual_seed(0)
    block = AGCCN(3, 4, 5, 3, graph=False, attention=True)
    assert not any("pool" in name for name, _ in block.named_parameters())
    x = torch.randn(1, 6, 2, 3, 4)
    g = block.norm1(x)
    torch.testing.assert_close(block(x, torch.randn(6, 5)), block.norm2(g + block.attention(g)))
    no_att = AGCCN(3, 4, 5, 3, attention=False)
    assert no_att.attention is None and not any("proj" in name for name, _ in no_att.named_parameters())
