"""Shared fixtures: W&B never touches the network, data from STM3_DATA_DIR or ../shared/data when present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# Forced, not defaulted: CI exports WANDB_MODE=offline, and background W&B processes of one test must not write
# into files another test snapshots. Tests that exercise W&B set the mode themselves.
os.environ["WANDB_MODE"] = "disabled"
os.environ.setdefault("WANDB_SILENT", "true")
os.environ.setdefault("MPLBACKEND", "Agg")


def shared_data_dir() -> Path | None:
    """Folder with the real PEMS08/ETTh1 files, or None."""
    for candidate in (os.environ.get("STM3_DATA_DIR"), REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "PEMS08").is_dir():
            return Path(candidate)
    return None


@pytest.fixture
def real_data_dir() -> Path:
    path = shared_data_dir()
    if path is None:
        pytest.skip("real data not found: set STM3_DATA_DIR to a folder holding PEMS08/ and ETTh1/")
    return path


@pytest.fixture(autouse=True)
def _isolated_run_env(monkeypatch: pytest.MonkeyPatch) -> None:
    # A run exports its folder for DDP workers; tests must never inherit one from another test.
    monkeypatch.delenv("STM3_RUN_DIR", raising=False)
