"""Input embedding: feature transform + multiscale convolutions along nodes (released) or time."""

from __future__ import annotations

import pytest
import torch

from stm3_lightning.models.stm3.embedding import MultiscaleEmbedding


def _conv_same(seq: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Hand-written 'same' convolution: seq [T, C], weight [O, C, k] -> [T, O] (odd k, zero padding)."""
    length, k = seq.shape[0], weight.shape[-1]
    out = bias.repeat(length, 1)
    for t in range(length):
        for j in range(k):
            s = t + j - (k - 1) // 2
            if 0 <= s < length:
                out[t] += weight[:, :, j] @ seq[s]
    return out


@pytest.mark.parametrize("axis", ["node", "time"])
def test_matches_a_hand_written_convolution(axis: str) -> None:
    torch.manual_seed(0)
    emb = MultiscaleEmbedding(1, 3, [1, 3, 5], axis=axis)
    x = torch.randn(2, 7, 5, 1)  # [B, L, N, C]
    out = emb(x)
    assert out.shape == (2, 5, 7, 3, 3)  # [B, N, L, D, Q]
    h = emb.feature_transform(x)
    for q, conv in enumerate(emb.convs):
        for b in range(2):
            if axis == "node":
                for step in range(7):
                    ref = _conv_same(h[b, step], conv.weight, conv.bias)  # sequence over nodes
                    torch.testing.assert_close(out[b, :, step, :, q], ref, atol=1e-6, rtol=1e-5)
            else:
                for node in range(5):
                    ref = _conv_same(h[b, :, node], conv.weight, conv.bias)  # sequence over time
                    torch.testing.assert_close(out[b, node, :, :, q], ref, atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize(("axis", "changed"), [("node", "same step only"), ("time", "same node only")])
def test_receptive_field_follows_the_axis(axis: str, changed: str) -> None:
    torch.manual_seed(0)
    emb = MultiscaleEmbedding(1, 2, [3], axis=axis)
    x = torch.randn(1, 6, 5, 1)
    x2 = x.clone()
    x2[0, 2, 1, 0] += 1.0  # step 2, node 1
    diff = (emb(x2) - emb(x)).abs().sum(dim=(0, 3, 4))  # [N, L]
    touched = diff > 0
    if axis == "node":
        assert touched[:, 2].any() and not touched[:, [0, 1, 3, 4, 5]].any()
    else:
        assert touched[1].any() and not touched[[0, 2, 3, 4]].any()


def test_rejects_an_unknown_axis() -> None:
    with pytest.raises(ValueError, match="node or time"):
        MultiscaleEmbedding(1, 2, [1], axis="space")
