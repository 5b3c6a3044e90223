"""Multiscale Mamba expert against a hand-written step-by-step reference."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from stm3_lightning.models.stm3.mamba import MultiscaleMamba


def _reference(m: MultiscaleMamba, h: torch.Tensor) -> torch.Tensor:
    """Literal reading of reference section 2.3 for h: [b, L, M] (explicit loops over time)."""
    length = h.shape[1]
    xz = h @ m.in_proj.weight.T  # [b, L, 2 d_inner]
    x, z = xz[..., : m.d_inner], xz[..., m.d_inner :]
    s = m.scale_dim
    groups = []
    for q, conv in enumerate(m.scale_convs):
        k = conv.kernel_size[0]
        seq = F.pad(x[..., q * s : (q + 1) * s].transpose(1, 2), ((k - 1) // 2, k // 2))
        groups.append(F.conv1d(seq, conv.weight, conv.bias))
    x = torch.cat(groups, dim=1)  # [b, d_inner, L]
    w = m.conv1d.weight[:, 0]  # [d_inner, k]
    k = w.shape[1]
    padded = F.pad(x, (k - 1, 0))
    x = F.silu(
        sum(padded[..., j : j + length] * w[None, :, j, None] for j in range(k))
        + m.conv1d.bias[None, :, None]
    )
    x_dbl = torch.tanh(x.transpose(1, 2) @ m.x_proj.weight.T)  # [b, L, r + 2n]
    r, n = m.dt_rank, m.d_state
    dt = x_dbl[..., :r] @ m.dt_proj.weight.T + m.dt_embedding  # [b, L, d_inner]
    delta = F.softplus(dt + m.dt_proj.bias)
    b_in, c_in = x_dbl[..., r : r + n], x_dbl[..., r + n :]
    a = -torch.exp(m.A_log)
    state = torch.zeros(h.shape[0], m.d_inner, n)
    ys = []
    for t in range(length):
        u_t = x[:, :, t]
        state = (
            torch.exp(delta[:, t, :, None] * a) * state
            + delta[:, t, :, None] * b_in[:, t, None, :] * u_t[..., None]
        )
        ys.append((state * c_in[:, t, None, :]).sum(-1) + m.D * u_t)
    y = torch.stack(ys, dim=1) * F.silu(z)  # [b, L, d_inner]
    return y @ m.out_proj.weight.T


@pytest.mark.parametrize("backend", ["torch", "ref"])
def test_matches_the_hand_written_reference(backend: str) -> None:
    torch.manual_seed(0)
    m = MultiscaleMamba(8, [1, 3, 5, 7], d_state=4, kernel_backend=backend)
    torch.nn.init.normal_(m.A_log, std=0.3)
    h = torch.randn(3, 9, 8)
    out = m(h)
    assert out.shape == (3, 9, 8)
    torch.testing.assert_close(out, _reference(m, h), atol=1e-5, rtol=1e-4)


def test_released_sizes() -> None:
    m = MultiscaleMamba(16, [1, 3, 5, 7])  # PEMSD8: M = 16
    assert (m.d_inner, m.scale_dim, m.dt_rank) == (32, 8, 1)
    assert m.x_proj.weight.shape == (33, 32) and m.A_log.shape == (32, 16)
    assert sum(p.numel() for p in m.parameters()) == 4448  # reference section 2.7
    assert sum(p.numel() for p in MultiscaleMamba(48, [1, 3, 5, 7]).parameters()) == 29088


def test_ssm_reset_is_mambas() -> None:
    torch.manual_seed(0)
    m = MultiscaleMamba(8, [1, 3], d_state=4)
    torch.nn.init.uniform_(m.A_log)
    m.reset_ssm_parameters(dt_offset=0.0)
    torch.testing.assert_close(m.A_log, torch.log(torch.arange(1.0, 5.0)).expand(16, 4))
    assert torch.all(m.D == 1) and torch.all(m.dt_embedding == 0)
    dt = F.softplus(m.dt_proj.bias)
    assert dt.min() >= 1e-3 * (1 - 1e-4) and dt.max() <= 0.1 * (1 + 1e-4)
    assert m.dt_proj.weight.abs().max() <= m.dt_rank**-0.5


def test_time_is_causal_beyond_the_multiscale_kernels() -> None:
    torch.manual_seed(0)
    m = MultiscaleMamba(4, [1, 3], d_state=2, kernel_backend="torch")
    h = torch.randn(1, 12, 4)
    h2 = h.clone()
    h2[0, 8] += 1.0
    changed = (m(h2) - m(h)).abs().sum(-1)[0] > 0
    half = max(m.scale_convs[1].kernel_size[0] // 2, 0)
    assert not changed[: 8 - half].any() and changed[8]


def test_rejects_widths_not_divisible_by_the_scales() -> None:
    with pytest.raises(ValueError, match="divisible"):
        MultiscaleMamba(3, [1, 3, 5, 7], expand=1)


def test_dt_rank_is_ceil_m_over_16() -> None:
    assert MultiscaleMamba(36, [1, 3, 5, 7]).dt_rank == math.ceil(36 / 16)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel lengths")  # the per-scale Conv1d
@pytest.mark.parametrize("scales", [[1, 3, 5, 7], [2, 4], [1, 2, 3, 6]])
def test_multiscale_grouped_conv_equals_one_conv_per_scale(scales: list[int]) -> None:
    """The single zero-padded grouped convolution reproduces each scale's own 'same' convolution (even k too)."""
    torch.manual_seed(0)
    m = MultiscaleMamba(6, scales, d_state=4)
    for conv in m.scale_convs:
        torch.nn.init.normal_(conv.bias)
    x = torch.randn(2, m.d_inner, 11, requires_grad=True)
    groups = x.split(m.scale_dim, dim=1)
    expected = torch.cat([conv(g) for conv, g in zip(m.scale_convs, groups, strict=True)], dim=1)
    torch.testing.assert_close(m.multiscale(x), expected, atol=1e-6, rtol=1e-5)
    grad_out = torch.randn_like(expected)
    params = [x, *m.scale_convs.parameters()]
    fused = torch.autograd.grad(m.multiscale(x), params, grad_out)
    for got, want in zip(fused, torch.autograd.grad(expected, params, grad_out), strict=True):
        torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_recompute_gives_the_same_bits_with_less_kept() -> None:
    """model.recompute: the block's activations are recomputed in the backward; outputs and gradients are equal."""
    torch.manual_seed(0)
    plain = MultiscaleMamba(8, [1, 3], kernel_backend="torch")
    again = MultiscaleMamba(8, [1, 3], kernel_backend="torch", recompute=True)
    again.load_state_dict(plain.state_dict())
    h = torch.randn(3, 12, 8)
    outs = []
    for block in (plain, again):
        x = h.clone().requires_grad_()
        y = block(x)
        y.square().sum().backward()
        outs.append([y.detach(), x.grad, *(p.grad for p in block.parameters())])
    for got, want in zip(outs[1], outs[0], strict=True):
        assert torch.equal(got, want)
    with torch.no_grad():
        assert torch.equal(again(h), plain(h))
