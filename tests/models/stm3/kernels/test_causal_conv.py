"""The causal depthwise convolution agrees with an ``F.conv1d`` oracle, values and gradients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
import torch.nn.functional as F

from stm3_lightning.models.stm3.kernels import causal_conv
from stm3_lightning.models.stm3.kernels.backends import Impl
from stm3_lightning.models.stm3.kernels.causal_conv import (
    causal_conv1d,
    causal_conv1d_ref,
    conv_impl,
    cpu_conv_kernel_available,
)


@pytest.fixture(autouse=True)
def one_thread() -> Iterator[None]:
    """These tensors are tiny: on a busy machine two intra-op threads wait on each other ~10x longer."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def oracle(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, activation: str | None
) -> torch.Tensor:
    """Left-pad by k - 1 and run a grouped ``F.conv1d``: x: [b, d, L], weight: [d, k] -> [b, d, L]."""
    out = F.conv1d(F.pad(x, (weight.shape[1] - 1, 0)), weight[:, None], bias, groups=x.shape[1])
    return F.silu(out) if activation else out


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str) -> None:
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"


CASES = [(2, 5, 7), (2, 32, 40), (2, 40, 33), (2, 16, 1), (1, 17, 336)]


@pytest.mark.parametrize("k", [2, 3, 4])
@pytest.mark.parametrize("b,d,length", CASES, ids=lambda v: str(v))
@pytest.mark.parametrize("activation,with_bias", [("silu", True), (None, False), ("swish", False)])
@pytest.mark.parametrize("layout", ["channel-major", "time-major"])
def test_torch_matches_oracle(
    b: int, d: int, length: int, k: int, activation: str | None, with_bias: bool, layout: str
) -> None:
    g = torch.Generator().manual_seed(b * 1000 + d * 10 + k)
    x = torch.randn(b, d, length, generator=g)
    if layout == "time-major":
        x = x.transpose(1, 2).contiguous().transpose(1, 2)
    weight = torch.randn(d, k, generator=g)
    bias = torch.randn(d, generator=g) if with_bias else None
    leaves = [t.requires_grad_(True) for t in (x, weight, bias) if t is not None]
    y_ref = oracle(x, weight, bias, activation)
    grad_out = torch.randn(y_ref.shape, generator=g)
    g_ref = torch.autograd.grad(y_ref, leaves, grad_out)
    for backend in ("torch", "ref"):
        y = causal_conv1d(x, weight, bias, activation, backend=backend)
        assert y.shape == y_ref.shape
        assert_close_scaled(y, y_ref, 1e-5, f"{backend} y")
        for name, a, e in zip(
            "x w bias".split(), torch.autograd.grad(y, leaves, grad_out), g_ref, strict=False
        ):
            assert_close_scaled(a, e, 1e-5, f"{backend} d{name}")


def test_kernel_is_used_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    if not cpu_conv_kernel_available():
        pytest.skip("no C++ compiler: the CPU conv kernel is unavailable")
    calls = []
    monkeypatch.setattr(causal_conv, "causal_conv1d_ref", lambda *a: calls.append(a))
    y = causal_conv1d(torch.randn(2, 16, 8), torch.randn(16, 4), backend="torch")
    assert y.shape == (2, 16, 8) and not calls
    assert y.transpose(1, 2).is_contiguous(), "kernel output is time-major storage"


def test_multithreaded_kernel_matches_single_thread() -> None:
    x = torch.randn(64, 32, 96, generator=torch.Generator().manual_seed(3), requires_grad=True)
    weight = torch.randn(32, 4, generator=torch.Generator().manual_seed(4), requires_grad=True)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            y = causal_conv1d(x, weight, backend="torch")
            results.append([y, *torch.autograd.grad(y.square().sum(), [x, weight])])
    finally:
        torch.set_num_threads(threads)
    for name, single, multi in zip(("y", "dx", "dw"), *results, strict=True):
        assert_close_scaled(multi, single, 1e-5, name)


def test_bfloat16_and_float64() -> None:
    g = torch.Generator().manual_seed(5)
    x, weight, bias = torch.randn(2, 16, 12, generator=g), torch.randn(16, 3, generator=g), torch.randn(16)
    expected = causal_conv1d_ref(x, weight, bias)
    y16 = causal_conv1d(x.bfloat16(), weight.bfloat16(), bias.bfloat16(), backend="torch")
    assert y16.dtype == torch.bfloat16
    assert_close_scaled(y16.float(), expected, 5e-2, "bf16 y")
    y64 = causal_conv1d(x.double(), weight.double(), bias.double(), backend="torch")
    assert y64.dtype == torch.float64
    assert_close_scaled(y64, expected.double(), 1e-6, "f64 y")


def test_errors() -> None:
    x, weight = torch.randn(2, 4, 5), torch.randn(4, 3)
    with pytest.raises(ValueError, match="Unknown activation 'relu'"):
        causal_conv1d(x, weight, activation="relu")
    with pytest.raises(ValueError, match=r"weight: \[d, k\]"):
        causal_conv1d(x, torch.randn(3, 3))
    with pytest.raises(ValueError, match="Unknown kernel backend 'fast'"):
        causal_conv1d(x, weight, backend="fast")


def test_conv_impl_per_backend_and_dtype() -> None:
    x = torch.randn(2, 16, 8)
    kernel = Impl.kernel if cpu_conv_kernel_available() else Impl.eager
    assert conv_impl(x, "torch") is kernel and conv_impl(x, "auto") is kernel
    assert conv_impl(x, "ref") is Impl.ref
    assert conv_impl(x.double(), "torch") is Impl.eager
