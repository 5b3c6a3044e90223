"""Shared fixtures: W&B never touches the network, data from STM3_DATA_DIR or ../shared/data when present."""

from __future__ import annotations

import os
import struct
import time
from collections.abc import Callable, Iterator
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


# LevelDB log format of ``run-<id>.wandb``: 32 KiB blocks, records with a 7-byte header (crc32, length, type).
_WANDB_HEADER = 7  # ":W&B" + magic (2 bytes) + version (1 byte)
_BLOCK = 32 * 1024
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def _leveldb_records(path: Path) -> Iterator[bytes]:
    """Payloads of the records of a LevelDB-log ``.wandb`` file."""
    data = path.read_bytes()
    pos, pending = _WANDB_HEADER, b""
    while pos + 7 <= len(data):
        if _BLOCK - pos % _BLOCK < 7:  # block trailer padding
            pos += _BLOCK - pos % _BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        chunk = data[pos + 7 : pos + 7 + length]
        pos += 7 + length
        if kind == 0:  # zero padding up to the block end
            pos += (_BLOCK - pos % _BLOCK) % _BLOCK
        elif kind in (_FULL, _FIRST):
            pending = chunk
        else:
            pending += chunk
        if kind in (_FULL, _LAST):
            yield pending


def offline_wandb_records(run_dir: Path, timeout_s: float = 60.0) -> list:
    """Every record (``wandb_internal_pb2.Record``) of the one offline W&B run under ``run_dir``.

    W&B's service may still be writing the file when ``wandb.finish()`` returns: wait for its ``exit`` record.
    """
    from wandb.proto import wandb_internal_pb2

    (run_file,) = run_dir.glob("wandb/offline-run-*/run-*.wandb")
    deadline = time.monotonic() + timeout_s
    while True:
        records = []
        for payload in _leveldb_records(run_file):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(payload)
            records.append(record)
        if any(r.WhichOneof("record_type") == "exit" for r in records) or time.monotonic() > deadline:
            return records
        time.sleep(0.2)


@pytest.fixture(scope="session")
def wandb_records() -> Callable[[Path], list]:
    """``wandb_records(run_dir)`` -> the records of the offline W&B run under ``run_dir``."""
    return offline_wandb_records
