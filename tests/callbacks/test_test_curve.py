"""``callbacks.test_every_epoch``: a test curve per epoch that changes nothing about training or selection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stm3_lightning.cli import main
from stm3_lightning.reporting.reproduction import best_epoch, read_curves

RUN = [
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=500",
    "data.input_len=12",
    "data.horizon=3",
    "model.num_layers=1",
    "model.router_noise=10.0",
    "trainer.max_epochs=3",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=2",
    "callbacks.progress_bar=none",
    "callbacks.plots=false",
    "logger.wandb.mode=disabled",
]


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("curve")
    with_curve, without = root / "with", root / "without"
    assert main(["train", *RUN, "callbacks.test_every_epoch=true", f"paths.output_dir={with_curve}"]) == 0
    assert main(["train", *RUN, f"paths.output_dir={without}"]) == 0
    return with_curve, without


def test_the_test_curve_leaves_training_and_the_final_test_unchanged(runs: tuple[Path, Path]) -> None:
    with_curve, without = (read_curves(p / "csv" / "metrics.csv") for p in runs)
    assert with_curve["epoch"] == without["epoch"] == [1, 2, 3]
    assert with_curve["val_mae"] == without["val_mae"]  # same random stream: router noise, negatives, order
    assert all(v is not None for v in with_curve["test_mae"]) and all(v is None for v in without["test_mae"])
    results = [json.loads((p / "test_metrics.json").read_text()) for p in runs]
    assert results[0]["overall"] == results[1]["overall"]


def test_the_curve_at_the_best_validation_epoch_is_the_final_test(runs: tuple[Path, Path]) -> None:
    curves = read_curves(runs[0] / "csv" / "metrics.csv")
    results = json.loads((runs[0] / "test_metrics.json").read_text())
    epoch = best_epoch(results["checkpoint"])
    assert epoch == 1 + min(range(3), key=lambda i: curves["val_mae"][i])
    assert curves["test_mae"][epoch - 1] == pytest.approx(results["overall"]["mae"], rel=1e-6)
    assert curves["test_rmse"][epoch - 1] == pytest.approx(results["overall"]["rmse"], rel=1e-6)
