"""GPU checks of the scan and conv kernel backends: torch on CUDA vs the CPU reference, and cuda (mamba_ssm) vs torch."""

from __future__ import annotations

import pytest
import torch

from stm3_lightning.models.stm3.kernels.backends import cuda_ops_importable, resolve_backend
from stm3_lightning.models.stm3.kernels.causal_conv import causal_conv1d, causal_conv1d_ref
from stm3_lightning.models.stm3.kernels.scan import selective_scan, selective_scan_ref

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]
needs_cuda_ops = pytest.mark.skipif(
    not cuda_ops_importable(), reason="mamba_ssm / causal_conv1d CUDA extensions are not installed"
)

NAMES = ("u", "delta", "A", "B", "C", "D", "z", "delta_bias")


def scan_inputs(device: str, b: int = 3, d: int = 32, n: int = 16, length: int = 96) -> list[torch.Tensor]:
    """u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d] (seeded, requiring grad)."""
    g = torch.Generator().manual_seed(0)
    xs = [
        torch.randn(b, d, length, generator=g),
        torch.randn(b, d, length, generator=g) * 0.5,
        -torch.rand(d, n, generator=g) * 2 - 0.1,
        torch.randn(b, n, length, generator=g).tanh(),
        torch.randn(b, n, length, generator=g).tanh(),
        torch.rand(d, generator=g),
        torch.randn(b, d, length, generator=g),
        torch.rand(d, generator=g) - 0.5,
    ]
    return [x.to(device).requires_grad_(True) for x in xs]


def values_and_grads(fn, xs: list[torch.Tensor]) -> list[torch.Tensor]:
    y = fn(*xs)
    grad_out = torch.randn(y.shape, generator=torch.Generator().manual_seed(1)).to(y.device, y.dtype)
    return [y, *torch.autograd.grad(y, xs, grad_out)]


def assert_all_close(actual: list[torch.Tensor], expected: list[torch.Tensor], tol: float) -> None:
    for name, a, e in zip(("y", *NAMES), actual, expected, strict=False):
        scale = max(1.0, e.abs().max().item())
        err = (a.detach().cpu().double() - e.detach().cpu().double()).abs().max().item()
        assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"


def test_torch_backend_on_cuda_matches_cpu_reference() -> None:
    expected = values_and_grads(lambda *x: selective_scan_ref(*x), scan_inputs("cpu"))
    actual = values_and_grads(lambda *x: selective_scan(*x, backend="torch"), scan_inputs("cuda"))
    assert actual[0].device.type == "cuda"
    assert_all_close(actual, expected, 1e-4)


def test_torch_conv_on_cuda_matches_cpu_reference() -> None:
    g = torch.Generator().manual_seed(2)
    x, w, b = (
        torch.randn(3, 32, 50, generator=g),
        torch.randn(32, 4, generator=g),
        torch.randn(32, generator=g),
    )
    y = causal_conv1d(x.cuda(), w.cuda(), b.cuda(), backend="torch")
    torch.testing.assert_close(y.cpu(), causal_conv1d_ref(x, w, b), rtol=1e-4, atol=1e-4)


@needs_cuda_ops
def test_auto_resolves_to_cuda() -> None:
    assert resolve_backend("auto", torch.device("cuda")) == "cuda"


@needs_cuda_ops
def test_cuda_scan_matches_torch_backend() -> None:
    expected = values_and_grads(lambda *x: selective_scan(*x, backend="torch"), scan_inputs("cuda"))
    actual = values_and_grads(lambda *x: selective_scan(*x, backend="cuda"), scan_inputs("cuda"))
    assert_all_close(actual, expected, 1e-4)


@needs_cuda_ops
def test_cuda_conv_matches_torch_backend() -> None:
    g = torch.Generator().manual_seed(3)
    leaves = [
        t.cuda().requires_grad_(True)
        for t in (torch.randn(3, 32, 50, generator=g), torch.randn(32, 4, generator=g))
    ]
    expected = values_and_grads(lambda x, w: causal_conv1d(x, w, backend="torch"), leaves)
    actual = values_and_grads(lambda x, w: causal_conv1d(x, w, backend="cuda"), leaves)
    assert_all_close(actual, expected, 1e-4)
