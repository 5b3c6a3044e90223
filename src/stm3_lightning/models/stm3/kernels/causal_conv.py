"""Depthwise causal 1-D convolution (Mamba's ``conv1d`` with ``padding=k-1`` truncated to the input length).

``y[b, d, t] = bias[d] + sum_j weight[d, j] * x[b, d, t - (k - 1) + j]`` (zero before the start), optionally
followed by SiLU. Implementations (backends: see :mod:`.backends`): ``F.conv1d`` (the reference, and the PyTorch
code everywhere), a fused CPU kernel (``csrc/causal_conv1d.cpp``, output stored time-major ``[b, L, d]`` and
returned as a ``[b, d, L]`` view, which the scan kernel then reads without a copy; registered as the custom ops
``stm3::causal_conv1d_cpu`` and ``stm3::causal_conv1d_cpu_backward``), ``causal_conv1d_fn`` of the
``causal_conv1d`` package for ``cuda`` and ``causal_conv1d_chunked`` of :mod:`.chunked`, where it exists, for
``chunked``.
"""

# No ``from __future__ import annotations``: torch.library reads the custom ops' schemas from live annotations.

import ctypes

import torch
import torch.nn.functional as F
from torch import Tensor

from stm3_lightning.models.stm3.kernels.backends import Impl, choose_impl, chunked_op, cuda_op
from stm3_lightning.models.stm3.kernels.build import CpuKernel, ptr
from stm3_lightning.models.stm3.kernels.layout import channel_major, padded, padded_width
from stm3_lightning.models.stm3.kernels.threads import batch_ranges, run_ranges

ACTIVATIONS = (None, "silu", "swish")
KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Input dtypes the CPU kernel takes (it computes in float32 and returns the input dtype)."""

_CUDA = ("causal_conv1d", "causal_conv1d_fn")


def causal_conv1d_ref(
    x: Tensor, weight: Tensor, bias: Tensor | None = None, activation: str | None = "silu"
) -> Tensor:
    """Causal depthwise convolution through ``F.conv1d`` (the test oracle and the non-CPU implementation).

    x: [b, d, L]; weight: [d, k]; bias: [d]; returns [b, d, L].
    """
    length, width = x.shape[-1], weight.shape[-1]
    out = F.conv1d(x, weight.unsqueeze(1), bias, padding=width - 1, groups=x.shape[1])[..., :length]
    return F.silu(out) if activation is not None else out


# ----------------------------------------------------------------------------------------------- CPU kernel


class _ConvArgs(ctypes.Structure):
    _fields_ = [
        *((name, ctypes.c_void_p) for name in ("x", "w", "bias", "dy", "y", "dx")),
        *((name, ctypes.c_int64) for name in ("sxb", "sxd", "sxt", "sgb", "sgd", "sgt", "D", "Dp", "K", "L")),
        ("silu", ctypes.c_int),
    ]


_KERNEL = CpuKernel(
    "causal_conv1d",
    {
        "stm3_conv_fwd": [ctypes.POINTER(_ConvArgs), ctypes.c_int64, ctypes.c_int64],
        "stm3_conv_bwd": [ctypes.POINTER(_ConvArgs), *[ctypes.c_int64] * 2, *[ctypes.c_void_p] * 2],
    },
)


def cpu_conv_kernel_available() -> bool:
    """Whether the compiled CPU causal-conv kernel can be used in this environment."""
    return _KERNEL.available()


def _conv_args(
    x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> tuple[_ConvArgs, list[Tensor | None]]:
    """Kernel arguments for x: [b, d, L] (any strides), weight: [d, k], bias: [d], and the tensors they point
    into (keep them): x as float32, weight as [k, Dp] and bias as [Dp], zero-padded. Outputs are left unset."""
    xf, weight_t = x.float(), padded(weight.t(), padded_width(x.shape[1]))
    bias_p = padded(bias, weight_t.shape[1])
    args = _ConvArgs(x=xf.data_ptr(), w=weight_t.data_ptr(), bias=ptr(bias_p), silu=int(silu))
    args.sxb, args.sxd, args.sxt = xf.stride()
    args.D, args.L = x.shape[1], x.shape[2]
    args.Dp, args.K = weight_t.shape[1], weight_t.shape[0]
    return args, [xf, weight_t, bias_p]


@torch.library.custom_op("stm3::causal_conv1d_cpu", mutates_args=(), device_types="cpu")
def _conv_cpu(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    """The fused CPU forward: x: [b, d, L]; weight: [d, k]; bias: [d] -> [b, d, L] (time-major storage)."""
    batch, dim, length = x.shape
    args, _keep = _conv_args(x, weight, bias, silu)
    y = torch.empty(batch, length, args.Dp, dtype=torch.float32)
    args.y = y.data_ptr()
    fwd = _KERNEL.function("stm3_conv_fwd")
    run_ranges(lambda _i, b0, b1: fwd(ctypes.byref(args), b0, b1), batch_ranges(batch, length * args.Dp))
    return channel_major(y, dim, x.dtype)


@_conv_cpu.register_fake
def _conv_cpu_fake(x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool) -> Tensor:
    batch, dim, length = x.shape
    return channel_major(x.new_empty(batch, length, padded_width(dim), dtype=torch.float32), dim, x.dtype)


def _conv_grads(
    dx: Tensor, acc: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None
) -> tuple[Tensor, Tensor, Tensor]:
    """dx: [b, L, Dp] and the summed acc: [k + 1, Dp] (dw^T, dbias) -> gradients w.r.t. x, weight, bias in their
    dtypes (an empty tensor without bias); copies of acc, since the op's outputs must not alias one another."""
    dim, k = x.shape[1], weight.shape[1]
    acc = acc[:, :dim]
    grad_bias = dx.new_empty(0) if bias is None else acc[k].to(bias.dtype, copy=True)
    return channel_major(dx, dim, x.dtype), acc[:k].t().to(weight.dtype, copy=True), grad_bias


@torch.library.custom_op("stm3::causal_conv1d_cpu_backward", mutates_args=(), device_types="cpu")
def _conv_cpu_backward(
    grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    """The fused CPU backward (recomputing the pre-activation): gradients w.r.t. x, weight and bias."""
    batch, _dim, length = x.shape
    args, _keep = _conv_args(x, weight, bias, silu)
    grad_f = grad.float()  # keep a reference: the kernel reads its memory
    args.dy = grad_f.data_ptr()
    args.sgb, args.sgd, args.sgt = grad_f.stride()
    dx = torch.empty(batch, length, args.Dp)
    args.dx = dx.data_ptr()
    ranges = batch_ranges(batch, length * args.Dp)
    k = args.K
    acc = torch.zeros(len(ranges), k + 1, args.Dp)
    bwd = _KERNEL.function("stm3_conv_bwd")
    run_ranges(lambda i, b0, b1: bwd(ctypes.byref(args), b0, b1, ptr(acc[i, :k]), ptr(acc[i, k])), ranges)
    return _conv_grads(dx, acc.sum(0), x, weight, bias)


@_conv_cpu_backward.register_fake
def _conv_cpu_backward_fake(
    grad: Tensor, x: Tensor, weight: Tensor, bias: Tensor | None, silu: bool
) -> tuple[Tensor, Tensor, Tensor]:
    batch, dim, length = x.shape
    width = padded_width(dim)
    dx = x.new_empty(batch, length, width, dtype=torch.float32)
    return _conv_grads(dx, x.new_empty(weight.shape[1] + 1, width, dtype=torch.float32), x, weight, bias)


def _conv_setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    x, weight, bias, ctx.silu = inputs
    ctx.save_for_backward(x, weight, bias)


def _conv_backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
    x, weight, bias = ctx.saved_tensors
    dx, dw, dbias = _conv_cpu_backward(grad, x, weight, bias, ctx.silu)
    return dx, dw, None if bias is None else dbias, None


_conv_cpu.register_autograd(_conv_backward, setup_context=_conv_setup_context)


# ------------------------------------------------------------------------------------------------ dispatch


@torch.compiler.assume_constant_result
def _impl(backend: str, device_type: str, kernel_dtype: bool) -> Impl:
    return choose_impl(
        backend,
        device_type,
        cuda_ready=lambda: cuda_op(*_CUDA) is not None,
        kernel_ready=lambda: kernel_dtype and _KERNEL.available(),
    )


def conv_impl(x: Tensor, backend: str) -> Impl:
    """What :func:`causal_conv1d` runs for x: [b, d, L] under ``backend``."""
    return _impl(str(backend), x.device.type, x.dtype in KERNEL_DTYPES)


def causal_conv1d(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    activation: str | None = "silu",
    backend: str = "auto",
) -> Tensor:
    """Causal depthwise convolution, optionally followed by SiLU (``causal_conv1d_fn`` semantics).

    x: [b, d, L]; weight: [d, k]; bias: [d]; returns [b, d, L] in x's dtype. backend: a
    :class:`~.backends.KernelBackend` name.
    """
    if activation not in ACTIVATIONS:
        raise ValueError(f"Unknown activation {activation!r}; use None, 'silu' or 'swish'.")
    if x.dim() != 3 or weight.dim() != 2 or weight.shape[0] != x.shape[1]:
        raise ValueError(
            f"causal_conv1d expects x: [b, d, L] and weight: [d, k]; got x {tuple(x.shape)}, "
            f"weight {tuple(weight.shape)}."
        )
    impl = conv_impl(x, backend)
    if impl == Impl.cuda:
        return cuda_op(*_CUDA)(x, weight, bias, activation=activation)  # type: ignore[misc]
    if impl == Impl.kernel:
        return _conv_cpu(x, weight, bias, activation is not None)
    if impl == Impl.chunked:
        return (chunked_op("causal_conv1d_chunked") or causal_conv1d_ref)(x, weight, bias, activation)
    return causal_conv1d_ref(x, weight, bias, activation)
