"""The fast selective-scan implementations agree with the sequential reference, values and gradients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from stm3_lightning.models.stm3.kernels import backends, scan
from stm3_lightning.models.stm3.kernels.scan import (
    cpu_scan_kernel_available,
    selective_scan,
    selective_scan_ref,
)

IMPLS = ["kernel", "eager"]


@pytest.fixture(autouse=True)
def fast_cpu() -> Iterator[None]:
    """One intra-op thread (these tensors are tiny: on a busy machine two threads wait on each other ~10x longer)
    and no denormals (long decays drive the PyTorch paths' gradients into them, ~100x slower on x86)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


def make_inputs(
    b: int, d: int, n: int, length: int, dtype: torch.dtype = torch.float32, seed: int = 0
) -> dict[str, torch.Tensor]:
    """u, delta, z: [b, d, L]; A: [d, n]; B, C: [b, n, L]; D, delta_bias: [d] (all requiring grad)."""
    g = torch.Generator().manual_seed(seed)
    x = {
        "u": torch.randn(b, d, length, generator=g),
        "delta": torch.randn(b, d, length, generator=g) * 0.5,
        "A": -torch.rand(d, n, generator=g) * 2 - 0.1,
        "B": torch.randn(b, n, length, generator=g).tanh(),
        "C": torch.randn(b, n, length, generator=g).tanh(),
        "D": torch.rand(d, generator=g),
        "z": torch.randn(b, d, length, generator=g),
        "delta_bias": torch.rand(d, generator=g) - 0.5,
    }
    return {k: v.to(dtype).requires_grad_(True) for k, v in x.items()}


def use_impl(monkeypatch: pytest.MonkeyPatch, impl: str) -> None:
    """Route the torch backend to the compiled CPU kernel or to the PyTorch loop (skip if impossible)."""
    if impl == "kernel":
        if not cpu_scan_kernel_available():
            pytest.skip("no C++ compiler: the CPU scan kernel is unavailable")
    else:
        monkeypatch.setattr(scan, "KERNEL_DTYPES", ())


def available_impls() -> list[str]:
    return IMPLS if cpu_scan_kernel_available() else ["eager"]


def assert_close_scaled(actual: torch.Tensor, expected: torch.Tensor, tol: float, name: str) -> None:
    """|actual - expected| <= tol * max(1, max|expected|) elementwise."""
    scale = max(1.0, expected.abs().max().item())
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= tol * scale, f"{name}: max error {err:.3g} > {tol:.1g} * {scale:.3g}"


def check_against_ref(
    monkeypatch: pytest.MonkeyPatch, x: dict[str, torch.Tensor | None], tol: float, softplus: bool = True
) -> None:
    """Outputs and gradients w.r.t. every given input of each torch implementation match the reference."""
    used = {k: v for k, v in x.items() if v is not None}
    y_ref = selective_scan_ref(**x, delta_softplus=softplus)
    grad_out = torch.randn(y_ref.shape, generator=torch.Generator().manual_seed(7)).to(y_ref.dtype)
    g_ref = torch.autograd.grad(y_ref, list(used.values()), grad_out)
    for impl in available_impls():
        with monkeypatch.context() as m:
            use_impl(m, impl)
            y = selective_scan(**x, delta_softplus=softplus, backend="torch")
            g = torch.autograd.grad(y, list(used.values()), grad_out)
        assert y.shape == y_ref.shape and y.dtype == y_ref.dtype
        assert_close_scaled(y, y_ref, tol, f"{impl} y")
        for name, a, e in zip(used, g, g_ref, strict=True):
            assert a.shape == e.shape, name
            assert_close_scaled(a, e, tol, f"{impl} d{name}")


OPTIONAL = {"z+D": (True, True), "plain": (False, False), "z": (True, False)}
CASES = [
    (shape, opt)
    for shape in [(2, 8, 4, 1), (3, 5, 4, 7), (2, 32, 16, 96), (2, 40, 16, 33)]
    for opt in OPTIONAL
]
CASES += [((2, 16, 7, 96), "z+D"), ((1, 16, 16, 336), "z+D"), ((1, 16, 16, 336), "plain")]


@pytest.mark.parametrize(
    "shape,optional", CASES, ids=lambda c: "b{}d{}n{}L{}".format(*c) if isinstance(c, tuple) else c
)
def test_torch_matches_ref(
    monkeypatch: pytest.MonkeyPatch, shape: tuple[int, int, int, int], optional: str
) -> None:
    """Kernel and PyTorch loop vs the reference: y and gradients w.r.t. u, delta, A, B, C, D, z, delta_bias."""
    with_z, with_d = OPTIONAL[optional]
    x = make_inputs(*shape)
    if not with_z:
        x["z"] = None
    if not with_d:
        x["D"] = x["delta_bias"] = None
    check_against_ref(monkeypatch, x, tol=1e-5)


def test_without_softplus(monkeypatch: pytest.MonkeyPatch) -> None:
    x = make_inputs(2, 16, 16, 20)
    with torch.no_grad():
        x["delta"].abs_()
    check_against_ref(monkeypatch, x, tol=1e-5, softplus=False)


def test_float64_is_exact(monkeypatch: pytest.MonkeyPatch) -> None:
    """float64 inputs run the PyTorch loop in float64: agreement to 1e-12."""
    check_against_ref(monkeypatch, make_inputs(2, 8, 4, 50, dtype=torch.float64), tol=1e-12)


@pytest.mark.parametrize("impl", IMPLS)
def test_time_major_views_and_broadcast_b(monkeypatch: pytest.MonkeyPatch, impl: str) -> None:
    """[b, d, L] views of [b, L, d] storage, and a B expanded over the batch (stride 0), are read correctly."""
    use_impl(monkeypatch, impl)
    x = make_inputs(3, 32, 16, 24)
    with torch.no_grad():
        views = {k: x[k].transpose(1, 2).contiguous().transpose(1, 2) for k in ("u", "delta", "z", "C")}
    views = {k: v.requires_grad_(True) for k, v in views.items()}
    b_shared = x["B"][:1].detach().clone().requires_grad_(True)
    args = {**x, **views, "B": b_shared.expand(3, -1, -1)}
    y_ref = selective_scan_ref(**args)
    y = selective_scan(**args, backend="torch")
    assert_close_scaled(y, y_ref, 1e-5, "y")
    (g_ref,) = torch.autograd.grad(y_ref.sum(), [b_shared])
    (g,) = torch.autograd.grad(y.sum(), [b_shared])
    assert_close_scaled(g, g_ref, 1e-5, "dB")


def test_multithreaded_kernel_matches_single_thread() -> None:
    if not cpu_scan_kernel_available():
        pytest.skip("no C++ compiler: the CPU scan kernel is unavailable")
    x = make_inputs(16, 32, 16, 96)
    threads = torch.get_num_threads()
    results = []
    try:
        for t in (1, 2):
            torch.set_num_threads(t)
            y = selective_scan(**x, backend="torch")
            results.append([y, *torch.autograd.grad(y.sum(), [x["A"], x["u"]])])
    finally:
        torch.set_num_threads(threads)
    for name, single, multi in zip(("y", "dA", "du"), *results, strict=True):
        assert_close_scaled(multi, single, 1e-5, name)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype: torch.dtype) -> None:
    """Half inputs compute in float32 and come back in their dtype (as mamba_ssm does)."""
    x = make_inputs(2, 16, 16, 12, dtype=dtype)
    y = selective_scan(**x, backend="torch")
    assert y.dtype == dtype
    y_ref = selective_scan_ref(**{k: v.detach().float() for k, v in x.items()})
    assert_close_scaled(y.float(), y_ref, 1e-2, "y")
    y.float().sum().backward()
    assert all(v.grad is not None and v.grad.dtype == dtype for v in x.values())


def test_no_grad_forward() -> None:
    x = make_inputs(2, 16, 16, 10)
    with torch.no_grad():
        y = selective_scan(**x, backend="torch")
    assert not y.requires_grad
    assert_close_scaled(y, selective_scan_ref(**x), 1e-5, "y")


def test_cuda_backend_on_cpu_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_warned", set())
    x = make_inputs(2, 16, 16, 9)
    with pytest.warns(UserWarning, match="needs CUDA tensors"):
        y = selective_scan(**x, backend="cuda")
    assert_close_scaled(y, selective_scan_ref(**x), 1e-5, "y")


def test_rejects_grouped_b() -> None:
    x = make_inputs(2, 8, 4, 5)
    x["B"] = x["B"][:, None]
    with pytest.raises(ValueError, match="grouped"):
        selective_scan(**x)
