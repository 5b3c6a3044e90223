"""train_step helpers: memory-limited batch choice, epoch extrapolation, parity comparison."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from benchmarks import common, compilation, parity, train_step  # noqa: E402


def test_fitting_batch_halves_until_it_fits(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(common, "available_mib", lambda: 1000.0)
    assert train_step.fitting_batch(64, 1.0) == (64, None)
    batch, reason = train_step.fitting_batch(64, 30.0)  # 64 * 30 * 1.25 > 1000; 16 * 30 * 1.25 = 600 fits
    assert batch == 16
    assert reason.startswith("A training step at batch 64 needs about") and "lower the batch size" in reason


def test_epoch_estimate_uses_drop_last_steps_and_data_time() -> None:
    measured = {"batch": 64, "step": {"median_s": 2.0}, "data": {"median_s": 0.5}}
    est = train_step.epoch_estimate(measured, 10523, 64)
    assert est["epoch_steps"] == 164
    assert est["epoch_seconds"] == pytest.approx(164 * 2.5)
    smaller = train_step.epoch_estimate(
        {**measured, "batch": 32}, 10523, 64
    )  # per window: twice the steps of batch 32
    assert smaller["epoch_seconds"] == pytest.approx(164 * 2.5 * 2)
    assert "memory-limited" in smaller["epoch_basis"]


def _trace(pred: float, grad: float, zero_grad: float = 0.0) -> parity.StepTrace:
    grads = {"w": torch.tensor([grad, 1.0]), "gate": torch.tensor([zero_grad])}
    return parity.StepTrace(torch.tensor([pred]), {"c": torch.tensor(0.5)}, 1.0, grads)


def test_compare_tolerances() -> None:
    assert parity.compare(_trace(1.0, 2.0), _trace(1.0 + 5e-6, 2.0))["ok"]
    assert not parity.compare(_trace(1.0, 2.0), _trace(1.0 + 5e-5, 2.0))["ok"]
    assert not parity.compare(_trace(1.0, 2.0), _trace(1.0, 2.01))["ok"]
    # A gradient that is ~0 by construction is judged against the model's largest gradient, not its own scale.
    assert parity.compare(_trace(1.0, 2.0, 1e-10), _trace(1.0, 2.0, -1e-10))["ok"]


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit deprecations raised by importing dynamo
def test_compile_static_parts_keeps_the_mixture_eager() -> None:
    info = common.stm3_info(4, 8, 4)
    model = common.build_stm3(info, "torch")
    names = compilation.compile_static_parts(model)
    assert names == ["embedding", "head", "layers.0.spatial", "layers.1.spatial"]
    assert not hasattr(model.layers[0].moe, "_orig_mod")


def test_break_even_epochs() -> None:
    # 60 s of compile overhead, 0.5 s saved on each of 120 steps: paid back after one epoch.
    assert compilation.break_even_epochs(60.0, 2.0, 1.5, 120) == pytest.approx(1.0)
    assert compilation.break_even_epochs(60.0, 2.0, 2.5, 120) is None  # slower when compiled: never


def test_bf16_training_overrides_are_a_short_quiet_run() -> None:
    from benchmarks import precision

    overrides = precision.training_overrides(["data=pems08"], 2, 20, "/tmp/x")
    assert {"trainer.max_epochs=2", "trainer.limit_train_batches=20", "logger.wandb.mode=disabled"} <= set(
        overrides
    )
    assert overrides[0] == "data=pems08" and "paths.output_dir=/tmp/x" in overrides
