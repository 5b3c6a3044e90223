"""Selective scan (the Mamba S6 recurrence): reference, PyTorch loop, fused CPU kernel and backend dispatch.

Semantics are those of ``mamba_ssm``'s ``selective_scan_fn``: ``delta = softplus(delta + delta_bias)``,
``h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t``, ``y_t = C_t . h_t + D * u_t``, ``y *= silu(z)``.

The CPU kernel (``csrc/selective_scan.cpp``) is vectorised over channels, splits the batch over
``torch.get_num_threads()`` threads and has a hand-written reverse-scan backward that recomputes the states, so
nothing of size ``[b, d, L, n]`` is ever stored. It is registered as the custom ops ``stm3::selective_scan_cpu``
and ``stm3::selective_scan_cpu_backward``, so ``torch.compile`` traces through it. Backends: see :mod:`.backends`.

Layout tip: inputs that are ``[b, d, L]`` views of time-major ``[b, L, d]`` storage (``x.transpose(1, 2)``, as
produced by ``Linear`` layers) are read in place by the CPU kernel; other layouts cost one copy.
"""

# No ``from __future__ import annotations``: torch.library reads the custom ops' schemas from live annotations.

import ctypes

import torch
import torch.nn.functional as F
from torch import Tensor

from stm3_lightning.models.stm3.kernels.backends import Impl, choose_impl, chunked_op, cuda_op
from stm3_lightning.models.stm3.kernels.build import CpuKernel, ptr
from stm3_lightning.models.stm3.kernels.layout import channel_major, padded, padded_width, time_major
from stm3_lightning.models.stm3.kernels.threads import batch_ranges, run_ranges

KERNEL_DTYPES = (torch.float32, torch.bfloat16, torch.float16)
"""Input dtypes the CPU kernel takes (it computes in float32 and returns the input dtype)."""

_CUDA = ("mamba_ssm.ops.selective_scan_interface", "selective_scan_fn")


def selective_scan_ref(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
) -> Tensor:
    """Plain sequential selective scan indexing every time step (the test oracle and benchmark baseline).

    Computes in float32 (float64 inputs stay float64) and returns u's dtype, like ``selective_scan_ref``.
    u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d]; returns y: [b, d, L].
    """
    dtype_in = u.dtype
    cdtype = torch.promote_types(dtype_in, torch.float32)
    u, delta, A, B, C = (x.to(cdtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, dim, length = u.shape
    delta_a = torch.exp(torch.einsum("bdl,dn->bdln", delta, A))
    delta_b_u = torch.einsum("bdl,bnl,bdl->bdln", delta, B, u)
    h = u.new_zeros(batch, dim, A.shape[1])
    ys = []
    for t in range(length):
        h = delta_a[:, :, t] * h + delta_b_u[:, :, t]
        ys.append(torch.einsum("bdn,bn->bd", h, C[:, :, t]))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(cdtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdtype))
    return y.to(dtype_in)


def _scan_eager(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    """Selective scan as a PyTorch loop over inputs unbound along time once (any device, any float dtype).

    u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d]; returns y: [b, d, L].
    """
    dtype_in = u.dtype
    cdtype = torch.promote_types(dtype_in, torch.float32)
    u, delta, A, B, C = (x.to(cdtype) for x in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(cdtype)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    h = u.new_zeros(u.shape[0], u.shape[1], A.shape[1])
    ys = []
    steps = zip(delta.unbind(2), (delta * u).unbind(2), B.unbind(2), C.unbind(2), strict=True)
    for d_t, x_t, b_t, c_t in steps:
        h = torch.exp(d_t[:, :, None] * A) * h + x_t[:, :, None] * b_t[:, None, :]
        ys.append(torch.einsum("bdn,bn->bd", h, c_t))
    y = torch.stack(ys, dim=2)
    if D is not None:
        y = y + u * D.to(cdtype)[:, None]
    if z is not None:
        y = y * F.silu(z.to(cdtype))
    return y.to(dtype_in)


# ----------------------------------------------------------------------------------------------- CPU kernel


class _View(ctypes.Structure):
    _fields_ = [("p", ctypes.c_void_p), ("sb", ctypes.c_int64), ("st", ctypes.c_int64)]


class _ScanArgs(ctypes.Structure):
    _fields_ = [
        *((name, _View) for name in ("u", "delta", "z", "B", "C", "dy")),
        *((name, ctypes.c_void_p) for name in ("A", "Dskip", "bias", "y", "du", "ddelta", "dz", "dB", "dC")),
        *((name, ctypes.c_int64) for name in ("D", "N", "L")),
        ("softplus", ctypes.c_int),
    ]


_KERNEL = CpuKernel(
    "selective_scan",
    {
        "stm3_scan_fwd": [ctypes.POINTER(_ScanArgs), ctypes.c_int64, ctypes.c_int64],
        "stm3_scan_bwd": [ctypes.POINTER(_ScanArgs), *[ctypes.c_int64] * 2, *[ctypes.c_void_p] * 3],
    },
)


def cpu_scan_kernel_available() -> bool:
    """Whether the compiled CPU selective-scan kernel can be used in this environment."""
    return _KERNEL.available()


def _view(x: Tensor | None) -> _View:
    return _View() if x is None else _View(x.data_ptr(), x.stride(0), x.stride(1))


def _scan_args(inputs: tuple[Tensor | None, ...], softplus: bool) -> tuple[_ScanArgs, list[Tensor | None]]:
    """Kernel arguments for (u, delta, A, B, C, D, z, delta_bias), and the tensors they point into (keep them).

    The channel inputs become time-major float32 ``[b, L, width]`` (views where the storage fits), A^T, D and
    delta_bias float32 zero-padded to ``width``; outputs are left unset.
    """
    u, delta, A, B, C, D, z, delta_bias = inputs
    width = padded_width(u.shape[1])
    mapped = [time_major(u, width), time_major(delta, width), None if z is None else time_major(z, width)]
    mapped += [time_major(B, B.shape[1]), time_major(C, C.shape[1])]
    params = [padded(A.t(), width), padded(D, width), padded(delta_bias, width)]
    tu, tdelta, tz, tB, tC = mapped
    args = _ScanArgs(u=_view(tu), delta=_view(tdelta), z=_view(tz), B=_view(tB), C=_view(tC))
    args.A, args.Dskip, args.bias = (ptr(p) for p in params)
    args.D, args.N, args.L = width, B.shape[1], u.shape[2]
    args.softplus = int(softplus)
    return args, mapped + params


@torch.library.custom_op("stm3::selective_scan_cpu", mutates_args=(), device_types="cpu")
def _scan_cpu(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    """The fused CPU forward (shapes as :func:`selective_scan_ref`)."""
    batch, dim, length = u.shape
    args, _keep = _scan_args((u, delta, A, B, C, D, z, delta_bias), delta_softplus)
    y = torch.empty(batch, length, args.D, dtype=torch.float32)
    args.y = y.data_ptr()
    fwd = _KERNEL.function("stm3_scan_fwd")
    ranges = batch_ranges(batch, length * args.D * A.shape[1])
    run_ranges(lambda _i, b0, b1: fwd(ctypes.byref(args), b0, b1), ranges)
    return channel_major(y, dim, u.dtype)


@_scan_cpu.register_fake
def _scan_cpu_fake(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> Tensor:
    batch, dim, length = u.shape
    return channel_major(u.new_empty(batch, length, padded_width(dim), dtype=torch.float32), dim, u.dtype)


def _scan_grads(
    channel: list[Tensor | None], dB: Tensor, dC: Tensor, acc: Tensor, inputs: tuple[Tensor | None, ...]
) -> tuple[Tensor, ...]:
    """Kernel gradients -> gradients w.r.t. (u, delta, A, B, C, D, z, delta_bias), each in its input's dtype.

    channel: du, ddelta, dz ([b, L, width], dz None without z); dB, dC: [b, L, n]; acc: [n + 2, width] summed
    (dA^T, dD, dbias). Missing inputs get an empty tensor.
    """
    u, _delta, _A, B, *_ = inputs
    dim, n = u.shape[1], B.shape[1]
    du, ddelta, dz = (None if g is None else channel_major(g, dim, torch.float32) for g in channel)
    acc = acc[:, :dim]
    # Copies of the accumulator rows and fresh empties: no two outputs of the op may share memory.
    dA, dD, dbias = acc[:n].t().clone(), acc[n].clone(), acc[n + 1].clone()
    grads = [du, ddelta, dA, dB.transpose(1, 2), dC.transpose(1, 2), dD, dz, dbias]
    return tuple(dB.new_empty(0) if x is None else g.to(x.dtype) for g, x in zip(grads, inputs, strict=True))


@torch.library.custom_op("stm3::selective_scan_cpu_backward", mutates_args=(), device_types="cpu")
def _scan_cpu_backward(
    grad: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The fused CPU backward: gradients w.r.t. (u, delta, A, B, C, D, z, delta_bias), empty for missing ones."""
    inputs = (u, delta, A, B, C, D, z, delta_bias)
    args, _keep = _scan_args(inputs, delta_softplus)
    batch, length, width, n = u.shape[0], u.shape[2], args.D, B.shape[1]
    grad_t = time_major(grad, width)  # keep a reference: the kernel reads its memory
    args.dy = _view(grad_t)
    channel = [torch.empty(batch, length, width) for _ in range(2)]
    channel.append(torch.empty(batch, length, width) if z is not None else None)
    dB, dC = torch.empty(batch, length, n), torch.empty(batch, length, n)
    for name, out in zip(("du", "ddelta", "dz", "dB", "dC"), (*channel, dB, dC), strict=True):
        setattr(args, name, ptr(out))
    ranges = batch_ranges(batch, length * width * n)
    acc = torch.zeros(len(ranges), n + 2, width)
    bwd = _KERNEL.function("stm3_scan_bwd")

    def work(i: int, b0: int, b1: int) -> None:
        bwd(ctypes.byref(args), b0, b1, acc[i, :n].data_ptr(), ptr(acc[i, n]), ptr(acc[i, n + 1]))

    run_ranges(work, ranges)
    return _scan_grads(channel, dB, dC, acc.sum(0), inputs)  # type: ignore[return-value]


@_scan_cpu_backward.register_fake
def _scan_cpu_backward_fake(
    grad: Tensor,
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None,
    z: Tensor | None,
    delta_bias: Tensor | None,
    delta_softplus: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
    batch, length, width, n = u.shape[0], u.shape[2], padded_width(u.shape[1]), B.shape[1]

    def empty(*shape: int) -> Tensor:
        return u.new_empty(*shape, dtype=torch.float32)

    channel = [empty(batch, length, width), empty(batch, length, width)]
    channel.append(empty(batch, length, width) if z is not None else None)
    dB, dC, acc = empty(batch, length, n), empty(batch, length, n), empty(n + 2, width)
    return _scan_grads(channel, dB, dC, acc, (u, delta, A, B, C, D, z, delta_bias))  # type: ignore[return-value]


def _scan_setup_context(ctx: torch.autograd.function.FunctionCtx, inputs: tuple, output: Tensor) -> None:
    ctx.save_for_backward(*inputs[:8])
    ctx.delta_softplus = inputs[8]


def _scan_backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> tuple[Tensor | None, ...]:
    saved = ctx.saved_tensors
    grads = _scan_cpu_backward(grad, *saved, ctx.delta_softplus)
    return (*(None if x is None else g for g, x in zip(grads, saved, strict=True)), None)


_scan_cpu.register_autograd(_scan_backward, setup_context=_scan_setup_context)


# ------------------------------------------------------------------------------------------------ dispatch


@torch.compiler.assume_constant_result
def _impl(backend: str, device_type: str, kernel_dtype: bool) -> Impl:
    return choose_impl(
        backend,
        device_type,
        cuda_ready=lambda: cuda_op(*_CUDA) is not None,
        kernel_ready=lambda: kernel_dtype and _KERNEL.available(),
    )


def selective_scan(
    u: Tensor,
    delta: Tensor,
    A: Tensor,
    B: Tensor,
    C: Tensor,
    D: Tensor | None = None,
    z: Tensor | None = None,
    delta_bias: Tensor | None = None,
    delta_softplus: bool = True,
    backend: str = "auto",
) -> Tensor:
    """Selective scan ``y = SSM(A, B, C, delta)(u) + D * u``, gated by ``silu(z)`` (``selective_scan_fn``).

    u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d]; returns y: [b, d, L] in u's dtype.
    backend: a :class:`~.backends.KernelBackend` name.
    """
    if u.dim() != 3 or B.dim() != 3 or A.dim() != 2:
        raise ValueError(
            f"selective_scan expects u: [b, d, L], A: [d, n], B, C: [b, n, L]; got u {tuple(u.shape)}, "
            f"A {tuple(A.shape)}, B {tuple(B.shape)} (grouped or time-invariant B/C are not supported)."
        )
    impl = _impl(str(backend), u.device.type, u.dtype in KERNEL_DTYPES)
    args = (u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if impl == Impl.ref:
        return selective_scan_ref(*args)
    if impl == Impl.cuda:
        return cuda_op(*_CUDA)(*args)  # type: ignore[misc]
    if impl == Impl.chunked:
        return chunked_op("selective_scan_chunked")(*args)  # type: ignore[misc]
    if impl == Impl.kernel:
        return _scan_cpu(*args)
    return _scan_eager(*args)
