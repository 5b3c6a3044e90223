"""Depthwise causal 1-D convolution (Mamba's ``conv1d`` with ``padding=k-1`` truncated to the input length).

``y[b, d, t] = bias[d] + sum_j weight[d, j] * x[b, d, t - (k - 1) + j]`` (zero before the start), optionally
followed by SiLU. Backends as for the scan (see ``scan.SCAN_BACKENDS``): ``ref`` is ``F.conv1d``; ``torch`` runs a
fused C++ kernel on CPU (compiled on first use, output stored time-major ``[b, L, d]`` and returned as a
``[b, d, L]`` view, which the scan kernel then reads without a copy) and ``F.conv1d`` elsewhere; ``cuda`` is
``causal_conv1d_fn`` from the ``causal_conv1d`` package, imported lazily with a fallback to ``torch``.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable

from stm3_lightning.models.stm3.scan import (
    batch_ranges,
    load_cpu_kernel,
    ptr,
    resolve_backend,
    run_ranges,
    warn_once,
)

_ACTIVATIONS = (None, "silu", "swish")
_KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
_LANES = 16


def causal_conv1d_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = "silu"
) -> Tensor:
    """Causal depthwise convolution through ``F.conv1d`` (the test oracle and the non-CPU implementation).

    x: [b, d, L]; weight: [d, k]; bias: [d]; returns [b, d, L].
    """
    length, width = x.shape[-1], weight.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[..., :length]
    return F.silu(out) if activation is not None else out


_CONV_SOURCE = r"""
// Depthwise causal conv1d (+ bias, optional SiLU) for CPU, vectorised over W channels; D is padded to Dp.
struct ConvArgs {
    const float *x;            // [b, D, L] with strides (sxb, sxd, sxt)
    const float *w, *bias;     // w: [K, Dp] (transposed, zero-padded); bias: [Dp] or null
    const float *dy;           // [b, D, L] with strides (sgb, sgd, sgt); backward only
    float *y, *dx;             // contiguous [b, L, Dp] outputs
    int64_t sxb, sxd, sxt, sgb, sgd, sgt, D, Dp, K, L;
    int silu;
};

// dst[(pad + t) * Dp + d] = src[b * sb + d * sd + t * st] for t < L, d < D (other entries untouched).
static void gather(const float *src, int64_t sb, int64_t sd, int64_t st, int64_t b, int64_t D, int64_t Dp,
                   int64_t L, float *dst) {
    const float *s = src + b * sb;
    if (sd == 1) {
        for (int64_t t = 0; t < L; ++t) memcpy(dst + t * Dp, s + t * st, sizeof(float) * D);
    } else {
        for (int64_t d = 0; d < D; ++d)
            for (int64_t t = 0; t < L; ++t) dst[t * Dp + d] = s[d * sd + t * st];
    }
}

// Pre-activation conv output at step t for channels [d0, d0 + W); X holds K - 1 zero rows then the input.
INLINE vf conv_at(const ConvArgs &a, const float *X, int64_t t, int64_t d0) {
    vf acc = a.bias ? ld(a.bias + d0) : vf{};
    for (int64_t j = 0; j < a.K; ++j) acc += ld(a.w + j * a.Dp + d0) * ld(X + (t + j) * a.Dp + d0);
    return acc;
}

extern "C" {
void stm3_conv_fwd(const ConvArgs *pa, int64_t b0, int64_t b1) {
    FlushDenormals guard;
    const ConvArgs &a = *pa;
    const int64_t Dp = a.Dp, L = a.L, K = a.K;
    float *X = (float *)calloc((L + K) * Dp, sizeof(float));
    for (int64_t b = b0; b < b1; ++b) {
        gather(a.x, a.sxb, a.sxd, a.sxt, b, a.D, Dp, L, X + (K - 1) * Dp);
        float *yb = a.y + b * L * Dp;
        for (int64_t t = 0; t < L; ++t)
            for (int64_t d0 = 0; d0 < Dp; d0 += W) {
                const vf p = conv_at(a, X, t, d0);
                st(yb + t * Dp + d0, a.silu ? p * vsigmoid(p) : p);
            }
    }
    free(X);
}

// dw: [K, Dp] and dbias: [Dp], accumulated into (one set per concurrent call).
void stm3_conv_bwd(const ConvArgs *pa, int64_t b0, int64_t b1, float *dw, float *dbias) {
    FlushDenormals guard;
    const ConvArgs &a = *pa;
    const int64_t Dp = a.Dp, L = a.L, K = a.K;
    float *X = (float *)calloc((L + K) * Dp, sizeof(float)), *G = (float *)calloc((L + K) * Dp, sizeof(float));
    for (int64_t b = b0; b < b1; ++b) {
        gather(a.x, a.sxb, a.sxd, a.sxt, b, a.D, Dp, L, X + (K - 1) * Dp);
        gather(a.dy, a.sgb, a.sgd, a.sgt, b, a.D, Dp, L, G);
        for (int64_t t = 0; t < L; ++t)
            for (int64_t d0 = 0; d0 < Dp; d0 += W) {
                vf g = ld(G + t * Dp + d0);
                if (a.silu) {
                    const vf p = conv_at(a, X, t, d0), s = vsigmoid(p);
                    g *= s * (1.0f + p * (1.0f - s));
                }
                st(G + t * Dp + d0, g);
                st(dbias + d0, ld(dbias + d0) + g);
                for (int64_t j = 0; j < K; ++j)
                    st(dw + j * Dp + d0, ld(dw + j * Dp + d0) + g * ld(X + (t + j) * Dp + d0));
            }
        float *dxb = a.dx + b * L * Dp;
        for (int64_t t = 0; t < L; ++t)
            for (int64_t d0 = 0; d0 < Dp; d0 += W) {
                vf acc = vf{};
                for (int64_t j = 0; j < K; ++j) acc += ld(a.w + j * Dp + d0) * ld(G + (t + K - 1 - j) * Dp + d0);
                st(dxb + t * Dp + d0, acc);
            }
    }
    free(X); free(G);
}
}
"""


class _ConvArgs(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("x", "w", "bias", "dy", "y", "dx")),
        *((name, ctypes.c_int64) for name in ("sxb", "sxd", "sxt", "sgb", "sgd", "sgt", "D", "Dp", "K", "L")),
        ("silu", ctypes.c_int),
    ]


def _conv_kernel() -> ctypes.CDLL | None:
    lib = load_cpu_kernel("causal_conv1d", _CONV_SOURCE)
    if lib is not None and not hasattr(lib, "_stm3_typed"):
        lib.stm3_conv_fwd.argtypes = [ctypes.POINTER(_ConvArgs), ctypes.c_int64, ctypes.c_int64]
        lib.stm3_conv_bwd.argtypes = [
            ctypes.POINTER(_ConvArgs),
            *[ctypes.c_int64] * 2,
            *[ctypes.c_void_p] * 2,
        ]
        lib._stm3_typed = True
    return lib


def cpu_conv_kernel_available() -> bool:
    """Whether the compiled CPU causal-conv kernel can be used in this environment."""
    return _conv_kernel() is not None


def _conv_args(x: Tensor, weight_t: Tensor, bias: Tensor | None, silu: bool) -> _ConvArgs:
    """Kernel arguments for x: [b, d, L] (float32, any strides), weight_t: [k, Dp], bias: [Dp]."""
    args = _ConvArgs(x=x.data_ptr(), w=weight_t.data_ptr(), bias=ptr(bias), silu=int(silu))
    args.sxb, args.sxd, args.sxt = x.stride()
    args.D, args.L = x.shape[1], x.shape[2]
    args.Dp, args.K = weight_t.shape[1], weight_t.shape[0]
    return args


class _CpuCausalConv(torch.autograd.Function):
    """Fused CPU causal depthwise conv (+ bias, SiLU); the backward recomputes the pre-activation."""

    @staticmethod
    def forward(
        ctx: torch.autograd.function.FunctionCtx,
        x: Tensor,
        weight: Tensor,
        bias: Tensor | None,
        silu: bool,
    ) -> Tensor:
        batch, dim, length = x.shape
        width = -(-dim // _LANES) * _LANES
        xf = x.float()
        weight_t = F.pad(weight.detach().float().t(), (0, width - dim)).contiguous()
        bias_p = None if bias is None else F.pad(bias.detach().float(), (0, width - dim)).contiguous()
        y = torch.empty(batch, length, width)
        args = _conv_args(xf, weight_t, bias_p, silu)
        args.y = y.data_ptr()
        lib = _conv_kernel()
        assert lib is not None
        run_ranges(
            lambda _i, b0, b1: lib.stm3_conv_fwd(ctypes.byref(args), b0, b1),
            batch_ranges(batch, length * width),
        )
        ctx.save_for_backward(xf, weight_t, *([] if bias_p is None else [bias_p]))
        ctx.meta = (silu, bias is not None, x.dtype, weight.dtype, None if bias is None else bias.dtype)
        return y[..., :dim].transpose(1, 2).to(x.dtype)

    @staticmethod
    @once_differentiable
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
        silu, has_bias, x_dtype, w_dtype, b_dtype = ctx.meta
        xf, weight_t, *rest = ctx.saved_tensors
        batch, dim, length = xf.shape
        width, k = weight_t.shape[1], weight_t.shape[0]
        grad_f = grad.float()  # keep a reference: the kernel reads its memory
        args = _conv_args(xf, weight_t, rest[0] if has_bias else None, silu)
        args.dy = grad_f.data_ptr()
        args.sgb, args.sgd, args.sgt = grad_f.stride()
        dx = torch.empty(batch, length, width)
        args.dx = dx.data_ptr()
        ranges = batch_ranges(batch, length * width)
        acc = torch.zeros(len(ranges), k + 1, width)
        lib = _conv_kernel()
        assert lib is not None
        run_ranges(
            lambda i, b0, b1: lib.stm3_conv_bwd(ctypes.byref(args), b0, b1, ptr(acc[i, :k]), ptr(acc[i, k])),
            ranges,
        )
        acc = acc.sum(0)[:, :dim]
        grad_bias = acc[k].to(b_dtype) if has_bias else None
        return dx[..., :dim].transpose(1, 2).to(x_dtype), acc[:k].t().to(w_dtype), grad_bias, None


def _cuda_causal_conv() -> Callable[..., Tensor] | None:
    """``causal_conv1d_fn`` from the ``causal_conv1d`` package, or None (warning once) when it cannot be imported."""
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception as exc:  # noqa: BLE001 - any import failure means "use the PyTorch backend"
        warn_once(
            "cuda-conv", f"causal_conv1d's CUDA kernel is unavailable ({exc}); using the torch backend."
        )
        return None
    return causal_conv1d_fn


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = "silu",
    backend: str = "auto",
) -> Tensor:
    """Causal depthwise convolution, optionally followed by SiLU (``causal_conv1d_fn`` semantics).

    x: [b, d, L]; weight: [d, k]; bias: [d]; returns [b, d, L] in x's dtype.
    """
    if activation not in _ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; use None, 'silu' or 'swish'.")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d expects x: [b, d, L] and weight: [d, k]; got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}."
        )
    name = resolve_backend(backend, x.device)
    if name == "cuda":
        fn = _cuda_causal_conv() if x.device.type == "cuda" else None
        if fn is not None:
            return fn(x, weight, bias, activation=activation)
    if name != "ref" and x.device.type == "cpu" and x.dtype in _KERNEL_DTYPES and _conv_kernel() is not None:
        return _CpuCausalConv.apply(x, weight, bias, activation is not None)
    return causal_conv1d_ref(x, weight, bias, activation)
