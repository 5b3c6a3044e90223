"""``PlainProgress``: the rate and eta count only the steps this process ran, also in a resumed epoch."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any

import pytest

from stm3_lightning.callbacks import plain_progress
from stm3_lightning.callbacks.plain_progress import PlainProgress


@pytest.fixture
def bar(monkeypatch: pytest.MonkeyPatch) -> tuple[PlainProgress, io.StringIO, list[float]]:
    """A bar over 10 steps per epoch whose clock reads the last value of ``clock``."""
    clock = [1000.0]
    monkeypatch.setattr(plain_progress.time, "perf_counter", lambda: clock[-1])
    monkeypatch.setattr(PlainProgress, "total_train_batches", property(lambda self: 10))
    monkeypatch.setattr(PlainProgress, "get_metrics", lambda self, *a: {"train/loss": 2.0})
    stream = io.StringIO()
    return PlainProgress(every_n_steps=2, stream=stream), stream, clock


def steps(bar: PlainProgress, clock: list[float], first: int, last: int, seconds: float) -> None:
    trainer: Any = SimpleNamespace(current_epoch=5, max_epochs=15)
    for i in range(first, last):
        bar.on_train_batch_start(trainer, None, None, i)  # type: ignore[arg-type]
        clock.append(clock[-1] + seconds)
        bar.on_train_batch_end(trainer, None, None, None, i)  # type: ignore[arg-type]


def test_a_fresh_epoch_reports_its_rate_and_eta(bar: tuple[PlainProgress, io.StringIO, list[float]]) -> None:
    progress, stream, clock = bar
    progress.on_train_epoch_start(None, None)  # type: ignore[arg-type]
    steps(progress, clock, 0, 4, seconds=2.0)
    assert stream.getvalue().splitlines()[-1] == "epoch 6/15  step 4/10  train/loss=2  0.5 it/s  eta 0:00:12"


def test_a_resumed_epoch_without_epoch_start_counts_only_its_own_steps(
    bar: tuple[PlainProgress, io.StringIO, list[float]],
) -> None:
    """Lightning restarting on an epoch's end skips ``on_train_epoch_start``; a mid-epoch resume starts at step 6."""
    progress, stream, clock = bar
    steps(progress, clock, 6, 8, seconds=4.0)
    assert stream.getvalue().splitlines()[-1] == "epoch 6/15  step 8/10  train/loss=2  0.25 it/s  eta 0:00:08"
    progress.on_train_epoch_end(None, None)  # type: ignore[arg-type]
    clock.append(clock[-1] + 500.0)  # validation, then the next epoch (again without its start hook)
    steps(progress, clock, 0, 2, seconds=1.0)
    assert stream.getvalue().splitlines()[-1] == "epoch 6/15  step 2/10  train/loss=2  1 it/s  eta 0:00:08"
