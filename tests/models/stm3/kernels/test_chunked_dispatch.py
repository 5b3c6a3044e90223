"""`kernel_backend=chunked` reaches the chunked scan through the dispatch, and `auto` picks per device."""

from __future__ import annotations

import pytest
import torch

from stm3_lightning.models.stm3.kernels import backends
from stm3_lightning.models.stm3.kernels.backends import Impl, choose_impl
from stm3_lightning.models.stm3.kernels.scan import selective_scan, selective_scan_ref


def _inputs(b: int = 2, d: int = 8, n: int = 4, length: int = 37) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(b, d, length, generator=gen) for _ in range(3))
    A = -torch.rand(d, n, generator=gen) * 3
    B, C = (torch.randn(b, n, length, generator=gen) for _ in range(2))
    return u, delta, A, B, C, torch.randn(d, generator=gen), z


def test_chunked_backend_matches_ref_through_dispatch() -> None:
    u, delta, A, B, C, D, z = _inputs()
    got = selective_scan(u, delta, A, B, C, D=D, z=z, backend="chunked")
    want = selective_scan_ref(u, delta, A, B, C, D=D, z=z)
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-5)


def test_auto_picks_cuda_then_chunked_on_gpu_and_the_cpu_kernel_on_cpu(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def ready() -> bool:
        return True

    def missing() -> bool:
        return False

    monkeypatch.setattr(backends, "cuda_ops_importable", ready)  # mamba-ssm and causal-conv1d import
    assert choose_impl("auto", "cuda", cuda_ready=ready, kernel_ready=ready) is Impl.cuda
    monkeypatch.setattr(backends, "cuda_ops_importable", missing)  # they do not (the GPU boxes here)
    assert choose_impl("auto", "cuda", cuda_ready=missing, kernel_ready=ready) is Impl.chunked
    assert choose_impl("auto", "cpu", cuda_ready=ready, kernel_ready=ready) is Impl.kernel
    assert choose_impl("chunked", "cpu", cuda_ready=ready, kernel_ready=ready) is Impl.chunked


def test_cpu_kernel_is_never_probed_for_cuda_tensors() -> None:
    def probe() -> bool:
        raise AssertionError("the CPU kernel must not be compiled or loaded for CUDA tensors")

    assert choose_impl("auto", "cuda", cuda_ready=lambda: False, kernel_ready=probe) is Impl.chunked
    assert choose_impl("torch", "cuda", cuda_ready=lambda: False, kernel_ready=probe) is Impl.eager
