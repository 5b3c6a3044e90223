"""Benchmark helpers: timing with warm-up, peak memory, memory guard, tables, the training step."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks.common import (  # noqa: E402
    PeakMemory,
    TrainStep,
    build_stm3,
    format_table,
    measure,
    memory_shortfall,
    random_batch,
    stm3_info,
)


@pytest.fixture(autouse=True)
def _one_thread() -> object:
    """Tiny tensors: one thread avoids thread-pool wake-ups that dominate on a loaded 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def test_measure_runs_warmup_then_repeats() -> None:
    calls = []
    timing = measure(lambda: calls.append(1), repeats=3, warmup=2)
    assert len(calls) == 5 and len(timing.wall) == 3
    d = timing.as_dict()
    assert d["min_s"] <= d["median_s"] <= d["max_s"] and d["repeats"] == 3


def test_measure_rejects_zero_repeats() -> None:
    with pytest.raises(ValueError, match="repeats"):
        measure(lambda: None, repeats=0)


@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="peak RSS reset needs Linux /proc")
def test_peak_memory_sees_a_temporary_allocation() -> None:
    with PeakMemory() as mem:
        block = torch.ones(64 * 2**20 // 4)  # 64 MiB, touched
        del block
    assert mem.extra_mib is not None and mem.extra_mib >= 50


def test_memory_shortfall_explains_itself() -> None:
    assert memory_shortfall(1.0, "tiny") is None
    reason = memory_shortfall(1e12, "A huge step")
    if reason is not None:  # None only where /proc/meminfo is missing
        assert reason.startswith("A huge step needs about") and "lower the batch size" in reason


def test_format_table_aligns_columns() -> None:
    text = format_table([["a", 1.23456, None], ["bbb", 2, 3.0]], ["name", "x", "y"])
    lines = text.splitlines()
    assert len({len(line) for line in lines}) == 1
    assert "1.235" in lines[1] and "-" in lines[1]


def test_train_step_updates_parameters_and_clears_nothing_else() -> None:
    info = stm3_info(5, 8, 4)
    model = build_stm3(info, "torch", contrastive="off")
    before = [p.detach().clone() for p in model.parameters()]
    step = TrainStep(model, mean=torch.zeros(5), std=torch.ones(5))
    x, y = random_batch(2, info)
    loss = step(x, y)
    assert loss > 0
    assert any(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))
