"""Causal attention across the Q scale tokens of every (node, step): "hierarchical aggregation" of the AGCCN.

On CPU (float32) the whole attention, forward and backward, runs in one fused C++ kernel over the native
``[..., D, Q]`` layout (compiled on first use, like the scan kernels); elsewhere, or with ``fused=False``, it runs
as PyTorch operations. Both compute the same function; the kernel recomputes q, k, v and the softmax in the
backward instead of storing them.
"""

from __future__ import annotations

import ctypes
import math

import torch
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from stm3_lightning.models.stm3.scan import batch_ranges, load_cpu_kernel, ptr, run_ranges

# The release fills masked scores with -1e4 (not -inf); after softmax these weights are exactly 0 in fp32.
MASKED_SCORE = -1e4
# Largest token dimension D and number of scales Q the fused kernel handles (its per-row buffers are static).
KERNEL_MAX_SIZE = 16

_ATTN_SOURCE = r"""
#include <cmath>
// Causal single-head attention over the Q scale tokens of each row g[r]: [D, Q] (token p = column p).
struct AttnArgs {
    const float *g, *dy;   // [R, D, Q] contiguous; dy: backward only
    const float *w, *b;    // w: [4, D, D] (q, k, v, out; row = output feature); b: [4, D]
    float *y, *dg;         // [R, D, Q]: forward output / input gradient
    int64_t D, Q;
    float masked, root_d;  // masked score, sqrt(D)
};
#define MS 16

template <int DT, int QT>
static void attn_rows(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    const int D = DT ? DT : (int)a->D, Q = QT ? QT : (int)a->Q, DD = D * D;
    const float *wts = a->w, *bias = a->b;
    float q[MS][MS], k[MS][MS], v[MS][MS], att[MS][MS], o[MS][MS];
    float dq[MS][MS], dk[MS][MS], dv[MS][MS], dout[MS][MS];
    for (int64_t r = r0; r < r1; ++r) {
        const float *g = a->g + r * D * Q;
        for (int f = 0; f < D; ++f)
            for (int p = 0; p < Q; ++p) {
                float sq = bias[f], sk = bias[D + f], sv = bias[2 * D + f];
                for (int i = 0; i < D; ++i) {
                    const float x = g[i * Q + p];
                    sq += wts[f * D + i] * x;
                    sk += wts[DD + f * D + i] * x;
                    sv += wts[2 * DD + f * D + i] * x;
                }
                q[f][p] = sq; k[f][p] = sk; v[f][p] = sv;
            }
        for (int p = 0; p < Q; ++p) {  // scores and softmax over the key scales s (s < p masked)
            float m = -INFINITY;
            for (int s = 0; s < Q; ++s) {
                float sc = a->masked;
                if (s >= p) {
                    float dot = 0.0f;
                    for (int d = 0; d < D; ++d) dot += q[d][p] * k[d][s];
                    sc = dot / a->root_d;
                }
                att[p][s] = sc;
                m = sc > m ? sc : m;
            }
            float sum = 0.0f;
            for (int s = 0; s < Q; ++s) { att[p][s] = expf(att[p][s] - m); sum += att[p][s]; }
            const float inv = 1.0f / sum;
            for (int s = 0; s < Q; ++s) att[p][s] *= inv;
        }
        for (int d = 0; d < D; ++d)
            for (int p = 0; p < Q; ++p) {
                float acc = 0.0f;
                for (int s = 0; s < Q; ++s) acc += att[p][s] * v[d][s];
                o[d][p] = acc;
            }
        const float *Wo = wts + 3 * DD;
        if (!dw) {
            float *y = a->y + r * D * Q;
            for (int f = 0; f < D; ++f)
                for (int p = 0; p < Q; ++p) {
                    float acc = bias[3 * D + f];
                    for (int d = 0; d < D; ++d) acc += Wo[f * D + d] * o[d][p];
                    y[f * Q + p] = acc;
                }
            continue;
        }
        const float *dy = a->dy + r * D * Q;
        for (int f = 0; f < D; ++f)
            for (int p = 0; p < Q; ++p) {
                const float gy = dy[f * Q + p];
                db[3 * D + f] += gy;
                for (int d = 0; d < D; ++d) dw[3 * DD + f * D + d] += (double)(gy * o[d][p]);
            }
        for (int d = 0; d < D; ++d)
            for (int p = 0; p < Q; ++p) {
                float acc = 0.0f;
                for (int f = 0; f < D; ++f) acc += Wo[f * D + d] * dy[f * Q + p];
                dout[d][p] = acc;
            }
        for (int d = 0; d < D; ++d)
            for (int s = 0; s < Q; ++s) {
                float acc = 0.0f;
                for (int p = 0; p < Q; ++p) acc += att[p][s] * dout[d][p];
                dv[d][s] = acc;
                dk[d][s] = 0.0f;
            }
        for (int d = 0; d < D; ++d)
            for (int p = 0; p < Q; ++p) dq[d][p] = 0.0f;
        for (int p = 0; p < Q; ++p) {
            float da[MS], dot = 0.0f;
            for (int s = 0; s < Q; ++s) {
                float acc = 0.0f;
                for (int d = 0; d < D; ++d) acc += dout[d][p] * v[d][s];
                da[s] = acc;
                dot += att[p][s] * acc;
            }
            for (int s = p; s < Q; ++s) {  // masked scores get no gradient
                const float ds = att[p][s] * (da[s] - dot) / a->root_d;
                for (int d = 0; d < D; ++d) {
                    dq[d][p] += ds * k[d][s];
                    dk[d][s] += ds * q[d][p];
                }
            }
        }
        float *dg = a->dg + r * D * Q;
        for (int i = 0; i < D * Q; ++i) dg[i] = 0.0f;
        float (*grads[3])[MS] = {dq, dk, dv};
        for (int j = 0; j < 3; ++j) {
            float (*dx)[MS] = grads[j];
            const float *Wj = wts + j * DD;
            for (int f = 0; f < D; ++f)
                for (int p = 0; p < Q; ++p) {
                    const float gx = dx[f][p];
                    db[j * D + f] += gx;
                    for (int i = 0; i < D; ++i) {
                        dw[j * DD + f * D + i] += (double)(gx * g[i * Q + p]);
                        dg[i * Q + p] += Wj[f * D + i] * gx;
                    }
                }
        }
    }
}

static void attn_dispatch(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    if (a->D == 4 && a->Q == 4) attn_rows<4, 4>(a, r0, r1, dw, db);
    else attn_rows<0, 0>(a, r0, r1, dw, db);
}

extern "C" void stm3_attn_fwd(const AttnArgs *a, int64_t r0, int64_t r1) {
    attn_dispatch(a, r0, r1, nullptr, nullptr);
}

// dw: [4, D, D], db: [4, D] float64 accumulators of this chunk (zeroed by the caller).
extern "C" void stm3_attn_bwd(const AttnArgs *a, int64_t r0, int64_t r1, double *dw, double *db) {
    attn_dispatch(a, r0, r1, dw, db);
}
"""


class _AttnArgs(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("g", "dy", "w", "b", "y", "dg")),
        ("D", ctypes.c_int64),
        ("Q", ctypes.c_int64),
        ("masked", ctypes.c_float),
        ("root_d", ctypes.c_float),
    ]


def _attn_kernel() -> ctypes.CDLL | None:
    lib = load_cpu_kernel("scale_attention", _ATTN_SOURCE)
    if lib is not None and not hasattr(lib, "_stm3_typed"):
        lib.stm3_attn_fwd.argtypes = [ctypes.POINTER(_AttnArgs), ctypes.c_int64, ctypes.c_int64]
        lib.stm3_attn_bwd.argtypes = [
            ctypes.POINTER(_AttnArgs),
            *[ctypes.c_int64] * 2,
            *[ctypes.c_void_p] * 2,
        ]
        lib._stm3_typed = True
    return lib


def kernel_available() -> bool:
    """Whether the fused CPU scale-attention kernel can be used in this environment."""
    return _attn_kernel() is not None


def _kernel_args(g: Tensor, w: Tensor, b: Tensor) -> _AttnArgs:
    """g: [R, D, Q] contiguous, w: [4, D, D], b: [4, D] -> kernel arguments (outputs left unset)."""
    d, q = g.shape[1], g.shape[2]
    return _AttnArgs(g=ptr(g), w=ptr(w), b=ptr(b), D=d, Q=q, masked=MASKED_SCORE, root_d=math.sqrt(d))


class _CpuScaleAttention(torch.autograd.Function):
    """Fused CPU scale attention; the backward recomputes the per-row attention from the saved input."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, g: Tensor, w: Tensor, b: Tensor) -> Tensor:
        """g: [R, D, Q]; w: [4, D, D] (q, k, v, out weights); b: [4, D] -> [R, D, Q]."""
        g, w, b = g.contiguous(), w.contiguous(), b.contiguous()
        y = torch.empty_like(g)
        args = _kernel_args(g, w, b)
        args.y = ptr(y)
        lib = _attn_kernel()
        assert lib is not None
        rows, width = g.shape[0], g.shape[1] * g.shape[2]
        run_ranges(
            lambda _i, r0, r1: lib.stm3_attn_fwd(ctypes.byref(args), r0, r1), batch_ranges(rows, width)
        )
        ctx.save_for_backward(g, w, b)
        return y

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        g, w, b = ctx.saved_tensors
        grad = grad.contiguous()
        dg = torch.empty_like(g)
        args = _kernel_args(g, w, b)
        args.dy, args.dg = ptr(grad), ptr(dg)
        rows, dim = g.shape[0], g.shape[1]
        ranges = batch_ranges(rows, dim * g.shape[2])
        dw = torch.zeros(len(ranges), 4, dim, dim, dtype=torch.float64)
        db = torch.zeros(len(ranges), 4, dim, dtype=torch.float64)
        lib = _attn_kernel()
        assert lib is not None

        def work(i: int, r0: int, r1: int) -> None:
            lib.stm3_attn_bwd(ctypes.byref(args), r0, r1, ptr(dw[i]), ptr(db[i]))

        run_ranges(work, ranges)
        return dg, dw.sum(0).to(w.dtype), db.sum(0).to(b.dtype)


class CausalScaleAttention(nn.Module):
    """Single-head attention over scales where scale ``i`` attends to scales ``j >= i`` (itself and coarser ones).

    Tokens are the Q scales, each of dimension D; ``q, k, v`` and the output are ``Linear(D -> D)`` with bias.
    ``fused``: use the fused CPU kernel where it applies (float32 CPU tensors, D and Q up to 16, not compiling).
    """

    def __init__(self, dim: int, fused: bool = True) -> None:
        super().__init__()
        self.dim = dim
        self.fused = fused
        self.q_proj = nn.Linear(dim, dim)
        self.k_proj = nn.Linear(dim, dim)
        self.v_proj = nn.Linear(dim, dim)
        self.out_proj = nn.Linear(dim, dim)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """The release's constructor init: xavier-uniform weights, zero biases."""
        for proj in self._projections():
            nn.init.xavier_uniform_(proj.weight)
            nn.init.zeros_(proj.bias)

    def _projections(self) -> tuple[nn.Linear, nn.Linear, nn.Linear, nn.Linear]:
        return self.q_proj, self.k_proj, self.v_proj, self.out_proj

    def _use_kernel(self, g: Tensor) -> bool:
        params = [p for proj in self._projections() for p in (proj.weight, proj.bias)]
        return (
            self.fused
            and g.device.type == "cpu"
            and all(t.dtype == torch.float32 for t in (g, *params))
            and max(g.shape[-2:]) <= KERNEL_MAX_SIZE
            and not torch.compiler.is_compiling()
            and kernel_available()
        )

    def forward(self, g: Tensor) -> Tensor:
        """g: [..., D, Q] -> attended values [..., D, Q] (before the residual)."""
        if self._use_kernel(g):
            w = torch.stack([proj.weight for proj in self._projections()])  # [4, D, D]
            b = torch.stack([proj.bias for proj in self._projections()])  # [4, D]
            return _CpuScaleAttention.apply(g.reshape(-1, *g.shape[-2:]), w, b).view(g.shape)
        return self.attention_reference(g)

    def attention_reference(self, g: Tensor) -> Tensor:
        """The PyTorch-operations path (any device and dtype): g: [..., D, Q] -> [..., D, Q]."""
        tokens = g.transpose(-1, -2)  # [..., Q, D]
        q, k, v = self.q_proj(tokens), self.k_proj(tokens), self.v_proj(tokens)
        scores = q @ k.transpose(-1, -2) / math.sqrt(self.dim)  # [..., Q, Q]
        num_scales = tokens.shape[-2]
        keep = torch.ones(num_scales, num_scales, device=g.device).triu().bool()
        weights = scores.masked_fill(~keep, MASKED_SCORE).softmax(dim=-1)
        return self.out_proj(weights @ v).transpose(-1, -2)
