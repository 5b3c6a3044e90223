"""FLOP counting: analytic scan/conv formulas, their hook into FlopCounterMode counts, per-sample totals."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.profiling import (  # noqa: E402
    SCAN_BWD_PER_CHANNEL,
    SCAN_BWD_PER_STATE,
    SCAN_FWD_PER_CHANNEL,
    SCAN_FWD_PER_STATE,
    FlopCount,
    causal_conv_flops,
    conv_runs_in_kernel,
    count_flops,
    selective_scan_flops,
    train_flops_per_sample,
)

from stm3_lightning.models.registry import build_model  # noqa: E402
from stm3_lightning.models.stm3.config import STM3Config  # noqa: E402
from stm3_lightning.models.stm3.mamba import MultiscaleMamba  # noqa: E402
from stm3_lightning.types import DataInfo  # noqa: E402


def test_scan_flops_formula() -> None:
    rows, d, length, n = 3, 32, 10, 16
    fwd = rows * d * length * (n * SCAN_FWD_PER_STATE + SCAN_FWD_PER_CHANNEL)
    assert selective_scan_flops(rows, d, length, n, backward=False) == fwd
    bwd = rows * d * length * (n * SCAN_BWD_PER_STATE + SCAN_BWD_PER_CHANNEL)
    assert selective_scan_flops(rows, d, length, n) == fwd + bwd


def test_causal_conv_flops_formula() -> None:
    assert causal_conv_flops(2, 8, 5, 4, backward=False) == 2 * 8 * 5 * (2 * 4 + 5)
    assert causal_conv_flops(2, 8, 5, 4) == 2 * 8 * 5 * (2 * 4 + 5 + 4 * 4 + 6)


def test_count_flops_adds_the_analytic_mamba_work() -> None:
    torch.manual_seed(0)
    mamba = MultiscaleMamba(16, [1, 3, 5, 7], kernel_backend="torch")
    h = torch.randn(5, 12, 16)
    fwd = count_flops(lambda: mamba(h), mamba, backward=False)
    assert fwd.scan == selective_scan_flops(5, mamba.d_inner, 12, mamba.d_state, backward=False)
    in_proj = 2 * 5 * 12 * 16 * 2 * mamba.d_inner
    assert fwd.counted >= in_proj  # the projections and convolutions are seen by FlopCounterMode
    kernel = conv_runs_in_kernel("torch", h)
    assert (fwd.causal_conv > 0) == kernel
    both = count_flops(lambda: mamba(h).sum().backward(), mamba, backward=True)
    assert both.scan == selective_scan_flops(5, mamba.d_inner, 12, mamba.d_state)
    assert both.counted > 2 * fwd.counted
    assert both.total == both.counted + both.scan + both.causal_conv


def test_hooks_are_removed_after_counting() -> None:
    mamba = MultiscaleMamba(8, [1, 3], kernel_backend="torch")
    count_flops(lambda: mamba(torch.randn(2, 6, 8)), mamba, backward=False)
    assert not mamba._forward_hooks


def test_train_flops_per_sample_does_not_depend_on_batch() -> None:
    info = DataInfo(num_nodes=6, input_len=8, horizon=4)
    torch.manual_seed(0)
    model = build_model(STM3Config(kernel_backend="torch", contrastive="off"), info)
    one = train_flops_per_sample(model, torch.randn(1, 8, 6, 3))
    three = train_flops_per_sample(model, torch.randn(3, 8, 6, 3))
    # Routing decides how rows split among the experts, but every row runs one routed and the shared expert.
    assert three.scan == one.scan
    assert three.counted == pytest.approx(one.counted, rel=0.02)
    assert all(p.grad is None for p in model.parameters())


def test_flop_count_as_dict() -> None:
    count = FlopCount(counted=5, scan=3, causal_conv=2)
    assert count.as_dict() == {"total": 10, "counted": 5, "scan": 3, "causal_conv": 2, "attention": 0}


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny tensors: one thread avoids thread-pool wake-ups that dominate on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_fused_scale_attention_is_counted_analytically() -> None:
    import torch
    from benchmarks.profiling import count_flops, scale_attention_flops

    from stm3_lightning.models.stm3.scale_attention import CausalScaleAttention

    att = CausalScaleAttention(4)
    g = torch.randn(10, 4, 4, requires_grad=True)
    count = count_flops(lambda: att(g).sum().backward(), att, backward=True)
    if att.uses_kernel(g):
        assert count.attention == scale_attention_flops(10, 4, 4, backward=True)
    else:  # reference path: FlopCounterMode sees its matmuls
        assert count.attention == 0 and count.counted > 0
