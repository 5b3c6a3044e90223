"""The CPU kernels are torch.library custom ops: opcheck passes and torch.compile traces them like eager."""

from __future__ import annotations

from collections.abc import Callable

import pytest
import torch

from stm3_lightning.models.stm3.kernels import causal_conv, scale_attention, scan

pytestmark = pytest.mark.filterwarnings(
    "ignore::DeprecationWarning"
)  # torch.jit deprecations raised by dynamo


def _scan_inputs(with_optional: bool) -> list[torch.Tensor | None]:
    """u, delta, A, B, C, D, z, delta_bias with b=2, d=20 (padded channels), n=4, L=7."""
    g = torch.Generator().manual_seed(0)
    b, d, n, length = 2, 20, 4, 7
    xs = [
        torch.randn(b, d, length, generator=g),
        torch.randn(b, d, length, generator=g) * 0.5,
        -torch.rand(d, n, generator=g) - 0.1,
        torch.randn(b, n, length, generator=g),
        torch.randn(b, n, length, generator=g),
        torch.rand(d, generator=g),
        torch.randn(b, d, length, generator=g),
        torch.rand(d, generator=g) - 0.5,
    ]
    if not with_optional:
        xs[5] = xs[6] = xs[7] = None
    return [None if x is None else x.requires_grad_() for x in xs]


def _conv_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    return [t.requires_grad_() for t in (torch.randn(2, 20, 9, generator=g), torch.randn(20, 4, generator=g))]


def _attention_inputs() -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    xs = (
        torch.randn(3, 5, 4, 4, generator=g),
        torch.randn(4, 4, 4, generator=g),
        torch.randn(4, 4, generator=g),
    )
    return [t.requires_grad_() for t in xs]


def _values_and_grads(fn: Callable[..., torch.Tensor], xs: list[torch.Tensor | None]) -> list[torch.Tensor]:
    y = fn(*xs)
    leaves = [x for x in xs if x is not None]
    return [y, *torch.autograd.grad(y, leaves, torch.linspace(-1, 1, y.numel()).view_as(y))]


OPS: dict[str, tuple[Callable[..., torch.Tensor], Callable[[], list[torch.Tensor | None]]]] = {
    "scan": (lambda *x: scan.selective_scan(*x, backend="torch"), lambda: _scan_inputs(True)),
    "scan-plain": (lambda *x: scan.selective_scan(*x, backend="torch"), lambda: _scan_inputs(False)),
    "conv": (lambda x, w: causal_conv.causal_conv1d(x, w, None, "silu", backend="torch"), _conv_inputs),
    "attention": (lambda *x: scale_attention.scale_attention(*x, backend="torch"), _attention_inputs),
}


@pytest.fixture(autouse=True)
def kernels_or_skip() -> None:
    if not all(m._KERNEL.available() for m in (scan, causal_conv, scale_attention)):
        pytest.skip("no C++ compiler: the CPU kernels are unavailable")


@pytest.mark.parametrize("name", list(OPS))
def test_compiled_matches_eager(name: str) -> None:
    """``torch.compile(aot_eager, fullgraph=True)``: one graph through the dispatch and the custom ops (forward
    and backward), the same bits as eager."""
    torch._dynamo.reset()
    fn, inputs = OPS[name]
    eager = _values_and_grads(fn, inputs())
    compiled = _values_and_grads(torch.compile(fn, backend="aot_eager", fullgraph=True), inputs())
    for got, want in zip(compiled, eager, strict=True):
        assert torch.equal(got, want)


@pytest.mark.parametrize(
    "op, args",
    [
        (scan._scan_cpu, lambda: [*_scan_inputs(True), True]),
        (scan._scan_cpu, lambda: [*_scan_inputs(False), False]),
        (causal_conv._conv_cpu, lambda: [*_conv_inputs(), None, True]),
        (
            scale_attention._attention_cpu,
            lambda: [_attention_inputs()[0].flatten(0, 1), *_attention_inputs()[1:]],
        ),
    ],
    ids=["scan", "scan-plain", "conv", "attention"],
)
def test_opcheck(op: object, args: Callable[[], list[object]]) -> None:
    """Schema, fake (meta) implementation and autograd registration agree with the real kernels."""
    torch.library.opcheck(
        op, args(), test_utils=("test_schema", "test_autograd_registration", "test_faketensor")
    )
