"""Chunked selective scan in plain PyTorch: the fast scan for GPUs without ``mamba_ssm`` (``kernel_backend=chunked``).

Same semantics as :func:`selective_scan_ref` (``mamba_ssm``'s ``selective_scan_fn``): ``delta = softplus(delta +
delta_bias)``, ``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t``, ``y_t = C_t . h_t + D * u_t``,
``y *= silu(z)``. It needs nothing beyond torch, runs on any device, and replaces the loop over L (one handful of
tiny kernels per time step, launch-bound on a GPU) by about ``2 sqrt(L)`` larger ones.

Algorithm, per block of batch rows: time is cut into ``K`` chunks of ``T`` steps (``L`` padded to ``K * T`` with
``delta = 0``, i.e. decay 1 and input 0, which leaves the first ``L`` states unchanged). The decays
``e = exp(delta * A)`` and inputs ``x = delta * u * B`` are laid out ``[T, K, rows, n, d]``, so one time step of all
chunks is one contiguous slice.

1. Within all chunks at once, ``T - 1`` steps on a ``[K, rows, n, d]`` accumulator give the state at each chunk's
   end from a zero start; the decay through a chunk is ``exp(A * sum_t delta_t)`` (a sum in log space of
   non-positive terms: no exponential of a positive number, the unstable ``exp(-cumsum)`` form, is ever taken).
2. A short sequential pass over the ``K`` chunks turns these into the state entering each chunk.
3. Each chunk's entering state is added at its first step and ``T - 1`` in-place steps ``x_t += e_t * x_{t-1}``
   (all chunks at once) give every state.

So a scan is about ``2 (T + K) ~ 4 sqrt(L)`` kernels instead of a handful per time step. Every product of decays is
a product of factors ``<= 1`` spanning real steps, so values underflow to zero instead of overflowing.

The backward pass recomputes the states (nothing of size ``[b, d, L, n]`` is kept between forward and backward)
and runs the same chunked recurrence, reading the decays one step later, in reverse time for the adjoint state ``g_t = C_t gy_t + e_{t+1} g_{t+1}``;
then ``dC = sum_d gy h``, ``dB = sum_d g delta u``, ``d(delta u) = sum_n g B`` and, with
``e_t h_{t-1} = h_t - x_t``, ``d(delta A)_t = g_t (h_t - x_t)``. The recurrence and all of this run in float32
(float64 inputs stay float64) with autocast disabled, as ``mamba_ssm`` does; the result has ``u``'s dtype.

Peak memory: with at most ``rows = max(1, block_elements // (d * K * T * n))`` batch rows per block (blocks of
equal size), the forward holds two and the backward three ``[T, K, rows, n, d]`` float32 buffers, i.e.
``2`` (``3``) ``* 4 * rows * d * K * T * n`` bytes, beyond ``O(b * (d + n) * L)`` for inputs, outputs and gradients.
``block_elements`` defaults to :data:`BLOCK_ELEMENTS` for the device type: small on CPU, so a block stays in
cache; large on GPU, so a block is a few large kernels. Example, STM3's shared expert at PEMS08 batch 64 on a GPU
(b = 64 * 170 = 10880, d = 32, L = 96 -> T = K = 10, n = 16): 3 blocks of 3627 rows, 0.74 GB per buffer, 2.2 GB
during the backward.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import FunctionCtx, once_differentiable

# The pure-PyTorch oracles this module is tested against (imported here only, so their location is one place).
from stm3_lightning.models.stm3.kernels.causal_conv import causal_conv1d_ref
from stm3_lightning.models.stm3.kernels.scan import selective_scan_ref

__all__ = [
    "BLOCK_ELEMENTS",
    "causal_conv1d_chunked",
    "causal_conv1d_ref",
    "default_chunk_size",
    "selective_scan_chunked",
    "selective_scan_ref",
]

BLOCK_ELEMENTS: dict[str, int] = {"cpu": 1 << 20, "default": 1 << 28}
"""Elements of one ``[T, K, rows, n, d]`` buffer per batch block, by device type (``default``: any other)."""


def default_chunk_size(length: int) -> int:
    """``ceil(sqrt(L))``: balances the ``T - 1`` in-chunk steps against the ``K - 1`` chunk-pass steps."""
    return max(1, math.isqrt(max(length - 1, 0)) + 1)


def _chunking(length: int, chunk_size: int | None) -> tuple[int, int]:
    """(T, K): ``K = ceil(L / chunk_size)`` chunks of ``T = ceil(L / K) <= chunk_size`` steps (least padding)."""
    target = default_chunk_size(length) if chunk_size is None else chunk_size
    if target < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}.")
    chunks = -(-length // target)
    return -(-length // chunks), chunks


def _to_chunks(x: Tensor, steps: int, chunks: int) -> Tensor:
    """x: [rows, c, L] -> [T, K, rows, c] contiguous, zero-padded in time to K * T."""
    x = F.pad(x, (0, steps * chunks - x.shape[-1]))
    return x.view(*x.shape[:2], chunks, steps).permute(3, 2, 0, 1).contiguous()


def _from_chunks(x: Tensor, length: int) -> Tensor:
    """x: [T, K, rows, c] -> [rows, c, L] (padding dropped)."""
    steps, chunks, rows, c = x.shape
    return x.permute(2, 3, 1, 0).reshape(rows, c, steps * chunks)[..., :length]


def _scan_(e: Tensor, through: Tensor, x: Tensor, reverse: bool) -> None:
    """In place, ``x`` becomes the states of ``h_s = e_s * h_{s-1} + x_s`` over time ``s = k * T + t``, from a zero
    state; ``reverse``: the adjoint recurrence ``h_s = e_{s+1} * h_{s+1} + x_s`` (the same decays, read one step
    later). ``e`` is only read.

    e, x: [T, K, rows, n, d]; through: [K, rows, n, d], the product of each chunk's decays but its first.
    Pass 1 finds the state leaving each chunk from a zero entering state (``T - 1`` steps on a small accumulator); a
    sequential pass over the chunks turns these into the increment entering each chunk; pass 2 adds it at the
    chunk's entry and runs the ``T - 1`` steps in place.
    """
    steps, chunks = x.shape[0], x.shape[1]
    order = range(steps - 2, -1, -1) if reverse else range(1, steps)
    back = 1 if reverse else -1  # offset of the step a state comes from
    entry = steps - 1 if reverse else 0  # position where a chunk's entering state arrives

    def decay(t: int) -> Tensor:  # [K, rows, n, d]: decay from step t + back into step t
        return e[t + 1] if reverse else e[t]

    if chunks > 1:
        local = x[entry].clone()  # [K, ...]: state leaving each chunk, from a zero entering state
        for t in order:
            local = torch.addcmul(x[t], decay(t), local)
        # boundary[j]: decay across the boundary of chunks j and j + 1 (the first step of chunk j + 1);
        # incoming[j]: what enters chunk j + 1 (reverse: chunk j) at its entry position.
        boundary = e[0, 1:]
        incoming = torch.empty_like(boundary)
        carry: Tensor | None = None
        for j in range(chunks - 2, -1, -1) if reverse else range(chunks - 1):
            sender = j + 1 if reverse else j
            out = local[sender] if carry is None else torch.addcmul(local[sender], through[sender], carry)
            carry = torch.mul(boundary[j], out, out=incoming[j])
        x[entry, slice(None, -1) if reverse else slice(1, None)] += incoming
    for t in order:
        x[t].addcmul_(decay(t), x[t + back])


def _outer(a: Tensor, b: Tensor, out: Tensor) -> Tensor:
    """out[..., n, d] = a[..., d] * b[..., n]; a: [T, K, rows, d], b: [T, K, rows, n], out: [T, K, rows, n, d]."""
    return torch.mul(a.unsqueeze(-2), b.unsqueeze(-1), out=out)


def _contract_states(v: Tensor, x: Tensor) -> Tensor:
    """sum_n v[..., n] x[..., n, d] -> [..., d]; v: [T, K, rows, n], x: [T, K, rows, n, d]."""
    return torch.matmul(v.unsqueeze(-2), x).squeeze(-2)


def _contract_channels(v: Tensor, x: Tensor) -> Tensor:
    """sum_d v[..., d] x[..., n, d] -> [..., n]; v: [T, K, rows, d], x: [T, K, rows, n, d]."""
    return torch.matmul(v.unsqueeze(-2), x.mT).squeeze(-2)


class _Blocks:
    """Batch-row blocks of one scan call and the chunk layout of their [T, K, rows, c] tensors."""

    def __init__(self, u: Tensor, n: int, chunk_size: int | None, block_elements: int | None) -> None:
        batch, dim, self.length = u.shape
        self.steps, self.chunks = _chunking(self.length, chunk_size)
        budget = block_elements or BLOCK_ELEMENTS.get(u.device.type, BLOCK_ELEMENTS["default"])
        most = max(1, budget // (dim * self.steps * self.chunks * n))
        rows = -(-batch // -(-batch // most))  # equal blocks of at most `most` rows
        self.ranges = [(start, min(start + rows, batch)) for start in range(0, batch, rows)]
        self.n = n

    def chunked(self, *xs: Tensor) -> list[Tensor]:
        """Each [rows, c, L] -> [T, K, rows, c]."""
        return [_to_chunks(x, self.steps, self.chunks) for x in xs]

    def states(self, delta: Tensor, dx: Tensor, A2: Tensor, B: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(decays e, decays through each chunk but its first step, states h); delta, dx = delta * u:
        [T, K, rows, d]; B: [T, K, rows, n]; A2 = A^T log2(e): [n, d]. Returns [T, K, rows, n, d],
        [K, rows, n, d] and [T, K, rows, n, d]."""
        shape = (*delta.shape[:3], self.n, delta.shape[3])
        e = torch.mul(delta.unsqueeze(-2), A2, out=delta.new_empty(shape)).exp2_()  # exp(delta A)
        # prod_{t >= 1} exp(delta_t A) = exp(A sum_t delta_t): from [K, rows, d] sums, not a pass over e
        through = (delta[1:].sum(0).unsqueeze(-2) * A2).exp2_()
        h = _outer(dx, B, delta.new_empty(shape))
        _scan_(e, through, h, reverse=False)
        return e, through, h


def _log2_decay_rates(A: Tensor) -> Tensor:
    """A: [d, n] -> A^T / ln 2: [n, d], so that exp2(delta * A2) = exp(delta * A) (exp2 is the faster primitive)."""
    return (A.t() * (1.0 / math.log(2.0))).contiguous()


class _ChunkedScan(torch.autograd.Function):
    """``y = sum_n C h`` of the recurrence ``h_t = exp(delta_t A) h_{t-1} + delta_t u_t B_t``, chunked.

    delta, u: [b, d, L]; A: [d, n]; B, C: [b, n, L]; returns y: [b, d, L] (all one float dtype).
    """

    @staticmethod
    def forward(
        ctx: FunctionCtx,
        delta: Tensor,
        u: Tensor,
        A: Tensor,
        B: Tensor,
        C: Tensor,
        chunk_size: int | None,
        block_elements: int | None,
    ) -> Tensor:
        blocks = _Blocks(u, A.shape[1], chunk_size, block_elements)
        A2, dx = _log2_decay_rates(A), delta * u
        ys = []
        for start, stop in blocks.ranges:
            d_c, dx_c, B_c, C_c = blocks.chunked(*(x[start:stop] for x in (delta, dx, B, C)))
            *_, h = blocks.states(d_c, dx_c, A2, B_c)
            ys.append(_from_chunks(_contract_states(C_c, h), blocks.length))
        ctx.save_for_backward(delta, u, A, B, C)
        ctx.blocks = blocks
        return torch.cat(ys) if len(ys) > 1 else ys[0]

    @staticmethod
    @once_differentiable
    def backward(ctx: FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        delta, u, A, B, C = ctx.saved_tensors
        blocks: _Blocks = ctx.blocks
        with torch.autocast(grad.device.type, enabled=False):
            A2, grad = _log2_decay_rates(A), grad.to(delta.dtype)
            parts = [
                _block_grads(blocks, A, A2, *(x[a:b] for x in (delta, u, B, C, grad)))
                for a, b in blocks.ranges
            ]
        ddelta, du, dB, dC = (torch.cat(g) for g in zip(*(p[:4] for p in parts), strict=True))
        dA = torch.stack([p[4] for p in parts]).sum(0).t()
        return ddelta, du, dA, dB, dC, None, None


def _block_grads(
    blocks: _Blocks, A: Tensor, A2: Tensor, delta: Tensor, u: Tensor, B: Tensor, C: Tensor, gy: Tensor
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of one batch block: delta, u, gy: [rows, d, L]; B, C: [rows, n, L]; A: [d, n]; A2: [n, d].

    Returns (ddelta [rows, d, L], du [rows, d, L], dB [rows, n, L], dC [rows, n, L], dA^T [n, d]).
    """
    length = blocks.length
    d_c, u_c, B_c, C_c, gy_c = blocks.chunked(delta, u, B, C, gy)
    dx_c = d_c * u_c
    e, through, h = blocks.states(d_c, dx_c, A2, B_c)
    dC = _contract_channels(gy_c, h)
    h.addcmul_(dx_c.unsqueeze(-2), B_c.unsqueeze(-1), value=-1.0)  # e_t h_{t-1} = h_t - x_t
    g = _outer(gy_c, C_c, torch.empty_like(h))
    _scan_(e, through, g, reverse=True)  # adjoint states: g_t = C_t gy_t + e_{t+1} g_{t+1}
    dB = _contract_channels(dx_c, g)
    ddx = _contract_states(B_c, g)
    da = h.mul_(g)  # d(delta A)_t = g_t e_t h_{t-1}
    ddelta = torch.mul(da, A.t(), out=e).sum(-2).addcmul_(ddx, u_c)
    dA = da.mul_(d_c.unsqueeze(-2)).sum((0, 1, 2))
    return (
        _from_chunks(ddelta, length),
        _from_chunks(ddx.mul_(d_c), length),
        _from_chunks(dB, length),
        _from_chunks(dC, length),
        dA,
    )


def selective_scan_chunked(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    chunk_size: int | None = None,
    *,
    block_elements: int | None = None,
) -> Tensor:
    """Selective scan ``y = SSM(A, B, C, delta)(u) + D * u``, gated by ``silu(z)``, chunked in time (see module).

    u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d]; returns y: [b, d, L] in u's dtype.
    chunk_size: the chunk length ``T`` (at most; default ``ceil(sqrt(L))``). block_elements: elements of one
    ``[T, K, rows, n, d]`` work buffer (default :data:`BLOCK_ELEMENTS` by device type); bounds peak memory.
    """
    dtype_in = u.dtype
    cdtype = torch.promote_types(dtype_in, torch.float32)
    with torch.autocast(u.device.type, enabled=False):
        u, delta, A, B, C = (x.to(cdtype) for x in (u, delta, A, B, C))
        if delta_bias is not None:
            delta = delta + delta_bias.to(cdtype)[:, None]
        if delta_softplus:
            delta = F.softplus(delta)
        y = _ChunkedScan.apply(delta, u, A, B, C, chunk_size, block_elements)
        if D is not None:
            y = y + u * D.to(cdtype)[:, None]
        if z is not None:
            y = y * F.silu(z.to(cdtype))
    return y.to(dtype_in)


def causal_conv1d_chunked(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = None
) -> Tensor:
    """Causal depthwise convolution (``causal_conv1d_ref`` semantics) as one depthwise ``F.conv1d`` over the input
    left-padded with ``k - 1`` zeros, so no output beyond ``L`` is computed and none is sliced off; optional SiLU.

    x: [b, d, L]; weight: [d, k]; bias: [d]; activation: None, ``"silu"`` or ``"swish"``; returns [b, d, L].
    """
    if activation not in (None, "silu", "swish"):
        raise ValueError(f"Unknown activation {activation!r}; use None, 'silu' or 'swish'.")
    out = F.conv1d(F.pad(x, (weight.shape[-1] - 1, 0)), weight.unsqueeze(1), bias, groups=x.shape[1])
    return F.silu(out) if activation is not None else out
