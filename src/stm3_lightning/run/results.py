"""A run's result files: ``test_metrics.json``, ``predictions.npz`` and the per-horizon MAE plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np


def atomic_write_text(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` via a temporary file and ``os.replace`` (never a half-written file)."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def write_test_metrics(run_dir: Path, results: dict, extra: dict) -> Path:
    """``<run_dir>/test_metrics.json``: overall, at reported horizons and per step, with the protocol named."""
    path = run_dir / "test_metrics.json"
    atomic_write_text(path, json.dumps({**extra, **results}, indent=2, sort_keys=True))
    return path


def write_predictions(run_dir: Path, outputs: list[tuple[np.ndarray, np.ndarray]]) -> Path:
    """``<run_dir>/predictions.npz`` with ``pred, true: [S, H, N, C]`` in metric units, test windows in order."""
    path = run_dir / "predictions.npz"
    pred = np.concatenate([p for p, _ in outputs])
    true = np.concatenate([t for _, t in outputs])
    tmp = path.with_name(".predictions.tmp.npz")
    np.savez_compressed(tmp, pred=pred, true=true)
    os.replace(tmp, path)
    return path


def plot_horizon_mae(per_step: dict[str, list[float]], path: Path, title: str) -> Path:
    """PNG of the test MAE (and RMSE) at every forecast step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    steps = np.arange(1, len(per_step["mae"]) + 1)
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    ax.plot(steps, per_step["mae"], marker="o", ms=2, label="MAE")
    ax.plot(steps, per_step["rmse"], marker="s", ms=2, label="RMSE", alpha=0.7)
    ax.set_xlabel("forecast step")
    ax.set_ylabel("error")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
