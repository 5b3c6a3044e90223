"""FLOP counting for STM3: ``torch.utils.flop_counter`` for matmuls/convolutions plus analytic counts for the
fused selective scan and causal convolution, which run in compiled kernels that PyTorch cannot see.

Conventions: a multiply-add is 2 FLOPs, ``exp``/``softplus``/``sigmoid`` count as 1 FLOP each, the scan backward
includes the recomputation of the forward states (the kernel stores none). Other elementwise work (LayerNorm,
softmax, activations, residual adds) is not counted, as in ``FlopCounterMode``.

Per element of the state ``[b, d_inner, L, d_state]`` the scan forward does ``exp(dt * A)`` (2), ``h = e h + x B``
(3) and ``y += h C`` (2); the backward recomputes those 7 and does 15 more (state gradient, dB, dC, d(delta), dA).
Per element of ``[b, d_inner, L]`` softplus, ``dt * u``, ``D u`` and the ``silu(z)`` gate cost about 10 forward and
20 backward.

The analytic scan count assumes the compiled CPU kernel (the default on CPU); on PyTorch fallback paths
FlopCounterMode additionally sees the einsums inside the scan loop, so measure FLOPs with ``kernel_backend=torch``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

from torch import Tensor, nn
from torch.utils.flop_counter import FlopCounterMode

from stm3_lightning.models.stm3.kernels.backends import Impl
from stm3_lightning.models.stm3.kernels.causal_conv import conv_impl
from stm3_lightning.models.stm3.mamba import MultiscaleMamba
from stm3_lightning.models.stm3.scale_attention import CausalScaleAttention

SCAN_FWD_PER_STATE, SCAN_BWD_PER_STATE = 7, 22
SCAN_FWD_PER_CHANNEL, SCAN_BWD_PER_CHANNEL = 10, 20
# Causal conv per output element, kernel width k: 2k (+ bias and SiLU ~5) forward; dx and dw 4k (+ ~6) backward.
CONV_FWD_EXTRA, CONV_BWD_EXTRA = 5, 6


def selective_scan_flops(rows: int, d_inner: int, length: int, d_state: int, backward: bool = True) -> int:
    """FLOPs of one selective scan over u: [rows, d_inner, length] with a d_state-wide state (fwd [+ bwd])."""
    per_state = SCAN_FWD_PER_STATE + (SCAN_BWD_PER_STATE if backward else 0)
    per_channel = SCAN_FWD_PER_CHANNEL + (SCAN_BWD_PER_CHANNEL if backward else 0)
    channels = rows * d_inner * length
    return channels * (d_state * per_state + per_channel)


def causal_conv_flops(rows: int, channels: int, length: int, kernel: int, backward: bool = True) -> int:
    """FLOPs of one depthwise causal conv (+ bias, SiLU) over x: [rows, channels, length] (fwd [+ bwd])."""
    per_out = 2 * kernel + CONV_FWD_EXTRA + ((4 * kernel + CONV_BWD_EXTRA) if backward else 0)
    return rows * channels * length * per_out


def scale_attention_flops(rows: int, dim: int, scales: int, backward: bool = True) -> int:
    """FLOPs of causal scale attention over g: [rows, D, Q]: q/k/v/out projections (4 x 2 D^2 Q), scores and value
    mixing (2 x 2 Q^2 D), softmax (~5 Q^2); the backward is counted as twice the forward."""
    forward = 8 * dim * dim * scales + 4 * scales * scales * dim + 5 * scales * scales
    return rows * forward * (3 if backward else 1)


def conv_runs_in_kernel(backend: str, x: Tensor) -> bool:
    """Whether a causal conv on ``x`` with kernel ``backend`` runs in the compiled CPU kernel, which
    FlopCounterMode cannot see (elsewhere it is an ``F.conv1d`` that it counts)."""
    return conv_impl(x, backend) == Impl.kernel


@dataclass
class FlopCount:
    """FLOPs of a piece of work: ``counted`` by FlopCounterMode (matmul/conv), ``scan`` and ``causal_conv``
    analytic (see the module docstring)."""

    counted: int = 0
    scan: int = 0
    causal_conv: int = 0
    attention: int = 0

    @property
    def total(self) -> int:
        return self.counted + self.scan + self.causal_conv + self.attention

    def as_dict(self) -> dict[str, int]:
        return {
            "total": self.total,
            "counted": self.counted,
            "scan": self.scan,
            "causal_conv": self.causal_conv,
            "attention": self.attention,
        }


@contextmanager
def analytic_mamba_flops(root: nn.Module, count: FlopCount, backward: bool) -> Iterator[None]:
    """Add the scan (and kernel causal conv) FLOPs of every ``MultiscaleMamba`` call under ``root`` to ``count``."""

    def hook(module: nn.Module, args: tuple[Tensor, ...], _out: Tensor) -> None:
        assert isinstance(module, MultiscaleMamba)
        rows, length = args[0].shape[:2]
        count.scan += selective_scan_flops(rows, module.d_inner, length, module.d_state, backward)
        if conv_runs_in_kernel(module.kernel_backend, args[0]):
            kernel = module.conv1d.kernel_size[0]
            count.causal_conv += causal_conv_flops(rows, module.d_inner, length, kernel, backward)

    def attention_hook(module: nn.Module, args: tuple[Tensor, ...], _out: Tensor) -> None:
        assert isinstance(module, CausalScaleAttention)
        g = args[0]
        if module.uses_kernel(g):  # the fused CPU kernel is invisible to FlopCounterMode
            dim, scales = g.shape[-2:]
            count.attention += scale_attention_flops(g.numel() // (dim * scales), dim, scales, backward)

    handles = [m.register_forward_hook(hook) for m in root.modules() if isinstance(m, MultiscaleMamba)]
    handles += [
        m.register_forward_hook(attention_hook) for m in root.modules() if isinstance(m, CausalScaleAttention)
    ]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def count_flops(fn: Callable[[], object], root: nn.Module, backward: bool = True) -> FlopCount:
    """FLOPs of running ``fn`` once; ``root`` is the module whose Mamba experts ``fn`` calls.

    ``backward`` says whether ``fn`` also runs the backward pass (it selects the analytic scan/conv counts).
    """
    count = FlopCount()
    mode = FlopCounterMode(display=False)
    with analytic_mamba_flops(root, count, backward), mode:
        fn()
    count.counted = int(mode.get_total_flops())
    return count


def train_flops_per_sample(model: nn.Module, x: Tensor) -> FlopCount:
    """FLOPs of one forward + backward of ``model`` on x: [B, L, N, C], divided by B (training mode)."""

    def step() -> None:
        pred, aux = model(x)
        loss = pred.abs().mean() + sum(aux.values()) if aux else pred.abs().mean()
        loss.backward()

    was_training = model.training
    model.train()
    try:
        total = count_flops(step, model, backward=True)
    finally:
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    b = x.shape[0]
    return FlopCount(
        counted=total.counted // b,
        scan=total.scan // b,
        causal_conv=total.causal_conv // b,
        attention=total.attention // b,
    )
