"""Kernel backend names, ``auto`` resolution, the per-op choice and the fallbacks (no CPU kernel for CUDA tensors)."""

from __future__ import annotations

import logging
import sys
import types
from collections.abc import Iterator

import pytest
import torch

from stm3_lightning.cli import main
from stm3_lightning.models.stm3 import config
from stm3_lightning.models.stm3.kernels import backends, build, causal_conv, scale_attention, scan
from stm3_lightning.models.stm3.kernels.backends import (
    KERNEL_BACKENDS,
    Impl,
    KernelBackend,
    choose_impl,
    resolve_backend,
)

CPU = torch.device("cpu")


@pytest.fixture(autouse=True)
def fresh_warnings(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Warnings not yet given, the chunked module not yet probed (before and after each test)."""
    monkeypatch.setattr(backends, "_warned", set())
    probe = backends.chunked_importable
    probe.cache_clear()
    yield
    probe.cache_clear()


def _never() -> bool:
    raise AssertionError("a CPU kernel was looked for although the tensors are not on the CPU")


def test_backend_names_are_defined_once() -> None:
    assert KERNEL_BACKENDS == ("auto", "torch", "ref", "cuda", "chunked")
    assert config.KernelBackend is KernelBackend
    assert config.STM3Config().kernel_backend is KernelBackend.auto


def test_resolve_backend() -> None:
    assert resolve_backend("auto", CPU) is KernelBackend.torch
    expected_cuda = KernelBackend.cuda if backends.cuda_ops_importable() else KernelBackend.chunked
    assert resolve_backend("auto", "cuda") is expected_cuda
    for name in ("torch", "ref", "cuda", "chunked"):
        assert resolve_backend(name, CPU) == name
    with pytest.raises(
        ValueError, match="Unknown kernel backend 'fast'; choose one of auto, torch, ref, cuda"
    ):
        resolve_backend("fast", CPU)


def test_resolve_backend_logs_choice_once(caplog: pytest.LogCaptureFixture) -> None:
    backends._log_choice.cache_clear()
    with caplog.at_level(logging.INFO, logger=backends.__name__):
        resolve_backend("auto", CPU)
        resolve_backend("auto", CPU)
    assert sum("resolved to 'torch'" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.filterwarnings("ignore:.*is unavailable.*using the chunked backend")
@pytest.mark.parametrize("name", ["auto", "torch", "cuda"])
def test_cuda_tensors_never_look_for_a_cpu_kernel(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    monkeypatch.setattr(build, "load_cpu_kernel", lambda source: _never())
    monkeypatch.setattr(backends, "chunked_importable", lambda: False)
    assert choose_impl(name, "cuda", cuda_ready=lambda: False, kernel_ready=_never) is Impl.eager
    for module in (scan, causal_conv, scale_attention):
        assert module._impl(name, "cuda", True) in (Impl.eager, Impl.cuda)


def test_cuda_fallbacks(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.warns(UserWarning, match="'cuda' needs CUDA tensors; using the torch backend"):
        assert choose_impl("cuda", "cpu", lambda: True, lambda: True) is Impl.kernel
    monkeypatch.setattr(backends, "chunked_importable", lambda: True)
    assert choose_impl("cuda", "cuda", lambda: False, _never) is Impl.chunked
    assert choose_impl("cuda", "cuda", lambda: True, _never) is Impl.cuda
    # Ops without a CUDA kernel (scale attention) run their PyTorch code under `cuda`, with no warning.
    assert choose_impl("cuda", "cuda", None, _never) is Impl.eager


def test_missing_chunked_module_falls_back_to_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, backends.CHUNKED_MODULE, None)  # makes the import fail
    with pytest.warns(UserWarning, match="chunked kernels cannot be imported"):
        assert choose_impl("chunked", "cpu", None, lambda: True) is Impl.kernel


def _fake_chunked(monkeypatch: pytest.MonkeyPatch, **functions: object) -> list[str]:
    """Install a stand-in for kernels/chunked.py whose functions record their calls and return ``ref``'s."""
    calls: list[str] = []
    module = types.ModuleType(backends.CHUNKED_MODULE)
    for name, impl in functions.items():
        setattr(module, name, lambda *a, _n=name, _f=impl: (calls.append(_n), _f(*a))[1])
    monkeypatch.setitem(sys.modules, backends.CHUNKED_MODULE, module)
    return calls


def test_chunked_dispatch(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_chunked(monkeypatch, selective_scan_chunked=scan.selective_scan_ref)
    g = torch.Generator().manual_seed(0)
    u, delta, z = (torch.randn(2, 4, 5, generator=g) for _ in range(3))
    A, B, C = (
        -torch.rand(4, 3, generator=g),
        torch.randn(2, 3, 5, generator=g),
        torch.randn(2, 3, 5, generator=g),
    )
    y = scan.selective_scan(u, delta, A, B, C, z=z, backend="chunked")
    torch.testing.assert_close(y, scan.selective_scan_ref(u, delta, A, B, C, z=z), rtol=0, atol=0)
    x, w = torch.randn(2, 4, 5, generator=g), torch.randn(4, 3, generator=g)
    # Without causal_conv1d_chunked the conv runs the pure-PyTorch F.conv1d path.
    monkeypatch.setattr(causal_conv, "_conv_cpu", lambda *a: _never())
    torch.testing.assert_close(
        causal_conv.causal_conv1d(x, w, backend="chunked"), causal_conv.causal_conv1d_ref(x, w)
    )
    assert calls == ["selective_scan_chunked"]
    calls = _fake_chunked(monkeypatch, causal_conv1d_chunked=causal_conv.causal_conv1d_ref)
    causal_conv.causal_conv1d(x, w, backend="chunked")
    assert calls == ["causal_conv1d_chunked"]
    # The scale attention has no chunked variant: it runs its PyTorch reference.
    g_in, weight, bias = (
        torch.randn(3, 4, 4, generator=g),
        torch.randn(4, 4, 4, generator=g),
        torch.zeros(4, 4),
    )
    assert scale_attention.attention_impl(g_in, (weight, bias), "chunked") == Impl.chunked
    monkeypatch.setattr(scale_attention, "_attention_cpu", lambda *a: _never())
    torch.testing.assert_close(
        scale_attention.scale_attention(g_in, weight, bias, backend="chunked"),
        scale_attention.scale_attention_ref(g_in, weight, bias),
    )


def test_summary_prints_the_kernel_backend(capsys: pytest.CaptureFixture) -> None:
    """Through the CLI: the deprecated model.scan_backend lands in model.kernel_backend, summary names it."""
    args = ["summary", "model=stm2", "model.hidden_dim=2", "model.scales=[1,3]", "model.node_emb_dim=4"]
    with pytest.warns(DeprecationWarning, match="model.scan_backend is deprecated; use model.kernel_backend"):
        assert main([*args, "data.synthetic.num_nodes=5", "model.scan_backend=ref"]) == 0
    out = capsys.readouterr().out
    assert "kernel_backend: ref" in out and "kernel backend: ref (requested ref, device cpu)" in out
