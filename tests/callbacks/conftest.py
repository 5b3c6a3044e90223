"""Shared tiny STM3 runs with the analysis callbacks (trained once per session) and a reader of offline W&B runs."""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from stm3_lightning.config.compose import compose
from stm3_lightning.config.schema import AnalysisCallbackConfig
from stm3_lightning.models.registry import build_model
from stm3_lightning.models.stm3.config import STM3Config
from stm3_lightning.types import DataInfo

TINY_DATA = [
    "data.synthetic.num_nodes=6",
    "data.synthetic.num_steps=700",
    "trainer.max_epochs=2",
    "trainer.limit_train_batches=4",
    "callbacks.progress_bar=none",
]
TINY_STM3 = [
    "model=stm3",
    "model.hidden_dim=2",
    "model.scales=[1,3]",
    "model.num_experts=3",
    "model.node_emb_dim=4",
]
ANALYSIS = ["callbacks=analysis", "callbacks.routing.batch_size=4", "callbacks.disentanglement.batch_size=4"]
TINY_INFO = DataInfo(num_nodes=6, input_len=12, horizon=3, input_dim=1)


def run_training(output_dir: Path, args: list[str], wandb_mode: str = "disabled") -> Path:
    """Train with ``args`` into ``output_dir`` (W&B in ``wandb_mode``) and return the run directory."""
    from stm3_lightning.run.train import train

    saved = {key: os.environ.get(key) for key in ("WANDB_MODE", "STM3_RUN_DIR")}
    os.environ["WANDB_MODE"] = wandb_mode
    os.environ.pop("STM3_RUN_DIR", None)
    try:
        train(compose([*args, f"logger.wandb.mode={wandb_mode}", f"paths.output_dir={output_dir}"]))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return output_dir


def read_wandb_history(run_dir: Path, records: Callable[[Path], list]) -> list[dict[str, object]]:
    """History rows logged to the offline W&B run under ``run_dir``: ``{"a/b": value, "img.path": ...}`` each."""
    rows = []
    for record in records(run_dir):
        if record.WhichOneof("record_type") == "history":
            rows.append(
                {
                    ".".join([i.key] if i.key else list(i.nested_key)): json.loads(i.value_json)
                    for i in record.history.item
                }
            )
    return rows


def read_metrics_csv(run_dir: Path) -> list[dict[str, float]]:
    """Rows of ``<run_dir>/csv/metrics.csv`` with their non-empty cells as floats."""
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        return [{key: float(value) for key, value in row.items() if value != ""} for row in csv.DictReader(f)]


@pytest.fixture
def tiny_data_args() -> list[str]:
    """Overrides of a tiny run (2 epochs of 4 batches, 6 nodes) with the default callbacks; add a model."""
    return list(TINY_DATA)


@pytest.fixture
def tiny_run_args() -> list[str]:
    """Overrides of a tiny STM3 run (2 epochs of 4 batches, 6 nodes) with both analysis callbacks."""
    return [*TINY_STM3, *TINY_DATA, *ANALYSIS]


@pytest.fixture
def train_tiny() -> Callable[..., Path]:
    """``train_tiny(output_dir, args, wandb_mode="disabled") -> run_dir``."""
    return run_training


@pytest.fixture
def read_metrics() -> Callable[[Path], list[dict[str, float]]]:
    return read_metrics_csv


@pytest.fixture(scope="session")
def wandb_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny STM3 run with both analysis callbacks under CSV + an offline ``WandbLogger``."""
    return run_training(tmp_path_factory.mktemp("wandb_run"), [*TINY_STM3, *TINY_DATA, *ANALYSIS], "offline")


@pytest.fixture(scope="session")
def wandb_history(wandb_run: Path, wandb_records: Callable[[Path], list]) -> list[dict[str, object]]:
    return read_wandb_history(wandb_run, wandb_records)


@pytest.fixture(scope="session")
def csv_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The same run as ``wandb_run`` with W&B disabled (CSV logger only)."""
    return run_training(tmp_path_factory.mktemp("csv_run"), [*TINY_STM3, *TINY_DATA, *ANALYSIS])


@pytest.fixture(scope="session")
def csv_metrics(csv_run: Path) -> list[dict[str, float]]:
    return read_metrics_csv(csv_run)


@pytest.fixture
def analysis_cfg() -> AnalysisCallbackConfig:
    return AnalysisCallbackConfig(enabled=True, batch_size=4, sensitivity_sigma=0.05, sensitivity_samples=2)


def _tiny_stm3(seed: int = 0, **overrides: object) -> nn.Module:
    """A tiny STM3 network for ``TINY_INFO`` (pure-PyTorch scan), initialised from ``seed``."""
    cfg = STM3Config(
        hidden_dim=2, scales=[1, 3], num_experts=3, node_emb_dim=4, kernel_backend="torch", **overrides
    )
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return build_model(cfg, TINY_INFO)


@pytest.fixture
def make_stm3() -> Callable[..., nn.Module]:
    """``make_stm3(seed=0, **STM3Config overrides)`` -> a tiny STM3 network for x: [B, 12, 6, 1]."""
    return _tiny_stm3


@pytest.fixture
def tiny_batch() -> torch.Tensor:
    """x: [4, 12, 6, 1] standard normal, seeded."""
    return torch.randn(4, 12, 6, 1, generator=torch.Generator().manual_seed(1))
