"""Causal single-head attention over the Q scale tokens of each row: reference, fused CPU kernel and dispatch.

Token ``p`` of a row ``g: [D, Q]`` is its column ``p``; query scale ``p`` attends to key scales ``s >= p``. The
CPU kernel (``csrc/scale_attention.cpp``) runs the whole attention, forward and backward, over the native
``[..., D, Q]`` layout for float32 tensors with D and Q up to :data:`~.constants.ATTENTION_MAX_SIZE`, recomputing
q, k, v and the softmax in the backward instead of storing them; it is registered as the custom ops
``stm3::scale_attention_cpu`` and ``stm3::scale_attention_cpu_backward``. Every other case (and the ``ref`` and
``chunked`` backends, see :mod:`.backends`) runs the PyTorch reference.
"""

# No ``from __future__ import annotations``: torch.library reads the custom ops' schemas from live annotations.

import ctypes
import math
from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor

from stm3_lightning.models.stm3.kernels.backends import Impl, choose_impl
from stm3_lightning.models.stm3.kernels.build import CpuKernel, ptr
from stm3_lightning.models.stm3.kernels.constants import ATTENTION_MAX_SIZE
from stm3_lightning.models.stm3.kernels.threads import batch_ranges, run_ranges

MASKED_SCORE = -1e4
"""The release fills masked scores with -1e4 (not -inf); after softmax these weights are exactly 0 in fp32."""


def scale_attention_ref(g: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The attention as PyTorch operations (any device and dtype).

    g: [..., D, Q]; weight: [4, D, D] (q, k, v, out projections as ``nn.Linear`` weights); bias: [4, D];
    returns [..., D, Q].
    """
    tokens = g.transpose(-1, -2)  # [..., Q, D]
    q, k, v = (F.linear(tokens, weight[i], bias[i]) for i in range(3))
    scores = q @ k.transpose(-1, -2) / math.sqrt(g.shape[-2])  # [..., Q, Q]
    num_scales = tokens.shape[-2]
    keep = torch.ones(num_scales, num_scales, device=g.device).triu().bool()
    weights = scores.masked_fill(~keep, MASKED_SCORE).softmax(dim=-1)
    return F.linear(weights @ v, weight[3], bias[3]).transpose(-1, -2)


# ----------------------------------------------------------------------------------------------- CPU kernel


class _AttnArgs(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("g", "dy", "w", "b", "y", "dg")),
        ("D", ctypes.c_int64),
        ("Q", ctypes.c_int64),
        ("masked", ctypes.c_float),
        ("root_d", ctypes.c_float),
    ]


_KERNEL = CpuKernel(
    "scale_attention",
    {
        "stm3_attn_fwd": [ctypes.POINTER(_AttnArgs), ctypes.c_int64, ctypes.c_int64],
        "stm3_attn_bwd": [ctypes.POINTER(_AttnArgs), *[ctypes.c_int64] * 2, *[ctypes.c_void_p] * 2],
    },
)


def kernel_available() -> bool:
    """Whether the fused CPU scale-attention kernel can be used in this environment."""
    return _KERNEL.available()


def _kernel_args(g: Tensor, w: Tensor, b: Tensor) -> _AttnArgs:
    """g: [R, D, Q] contiguous, w: [4, D, D], b: [4, D] -> kernel arguments (outputs left unset)."""
    d, q = g.shape[1], g.shape[2]
    return _AttnArgs(g=ptr(g), w=ptr(w), b=ptr(b), D=d, Q=q, masked=MASKED_SCORE, root_d=math.sqrt(d))


@torch.library.custom_op("stm3::scale_attention_cpu", mutates_args=(), device_types="cpu")
def _attention_cpu(g: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """The fused CPU forward: g: [R, D, Q]; weight: [4, D, D]; bias: [4, D] -> [R, D, Q]."""
    g, w, b = g.contiguous(), weight.contiguous(), bias.contiguous()
    y = torch.empty_like(g)
    args = _kernel_args(g, w, b)
    args.y = ptr(y)
    fwd = _KERNEL.function("stm3_attn_fwd")
    rows, width = g.shape[0], g.shape[1] * g.shape[2]
    run_ranges(lambda _i, r0, r1: fwd(ctypes.byref(args), r0, r1), batch_ranges(rows, width))
    return y


@_attention_cpu.register_fake
def _attention_cpu_fake(g: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return torch.empty_like(g, memory_format=torch.contiguous_format)


@torch.library.custom_op("stm3::scale_attention_cpu_backward", mutates_args=(), device_types="cpu")
def _attention_cpu_backward(
    grad: Tensor, g: Tensor, weight: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The fused CPU backward (recomputing the attention of each row): gradients w.r.t. g, weight and bias."""
    g, w, b, grad = g.contiguous(), weight.contiguous(), bias.contiguous(), grad.contiguous()
    dg = torch.empty_like(g)
    args = _kernel_args(g, w, b)
    args.dy, args.dg = ptr(grad), ptr(dg)
    rows, dim = g.shape[0], g.shape[1]
    ranges = batch_ranges(rows, dim * g.shape[2])
    dw = torch.zeros(len(ranges), 4, dim, dim, dtype=torch.float64)
    db = torch.zeros(len(ranges), 4, dim, dtype=torch.float64)
    bwd = _KERNEL.function("stm3_attn_bwd")
    run_ranges(lambda i, r0, r1: bwd(ctypes.byref(args), r0, r1, ptr(dw[i]), ptr(db[i])), ranges)
    return dg, dw.sum(0).to(w.dtype), db.sum(0).to(b.dtype)


@_attention_cpu_backward.register_fake
def _attention_cpu_backward_fake(
    grad: Tensor, g: Tensor, weight: Tensor, bias: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    contiguous = torch.contiguous_format
    return (
        torch.empty_like(g, memory_format=contiguous),
        torch.empty_like(weight, memory_format=contiguous),
        torch.empty_like(bias, memory_format=contiguous),
    )


def _attention_setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs)


def _attention_backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor, ...]:
    return _attention_cpu_backward(grad, *ctx.saved_tensors)


_attention_cpu.register_autograd(_attention_backward, setup_context=_attention_setup_context)


# ------------------------------------------------------------------------------------------------ dispatch


@torch.compiler.assume_constant_result
def _impl(backend: str, device_type: str, kernel_fits: bool) -> Impl:
    return choose_impl(
        backend, device_type, cuda_ready=None, kernel_ready=lambda: kernel_fits and _KERNEL.available()
    )


def attention_impl(g: Tensor, params: Iterable[Tensor], backend: str) -> Impl:
    """What :func:`scale_attention` runs for g: [..., D, Q] with projection ``params`` under ``backend``:
    the kernel needs float32 CPU tensors, D and Q up to ``ATTENTION_MAX_SIZE`` and a loadable library."""
    fits = all(t.dtype == torch.float32 for t in (g, *params)) and max(g.shape[-2:]) <= ATTENTION_MAX_SIZE
    return _impl(str(backend), g.device.type, fits)


def scale_attention(g: Tensor, weight: Tensor, bias: Tensor, backend: str = "auto") -> Tensor:
    """Causal attention over scales: g: [..., D, Q]; weight: [4, D, D]; bias: [4, D] -> [..., D, Q].

    backend: a :class:`~.backends.KernelBackend` name (the fused CPU kernel under ``torch``, ``cuda`` and
    ``auto`` where it applies, else :func:`scale_attention_ref`).
    """
    if attention_impl(g, (weight, bias), backend) == Impl.kernel:
        return _attention_cpu(g.reshape(-1, *g.shape[-2:]), weight, bias).view(g.shape)
    return scale_attention_ref(g, weight, bias)
