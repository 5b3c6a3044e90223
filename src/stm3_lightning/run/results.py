"""A run's result files: ``test_metrics.json``, ``predictions.npz`` and the per-horizon MAE plot."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from stm3_lightning.plots import plot_horizon_mae, save_figure


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


def write_horizon_plot(run_dir: Path, per_step: dict[str, list[float]], title: str) -> Path:
    """``<run_dir>/horizon_mae.png``: the test MAE and RMSE at every forecast step."""
    steps = np.arange(1, len(per_step["mae"]) + 1)
    curves = {name.upper(): (steps, np.asarray(per_step[name]), None) for name in ("mae", "rmse")}
    return save_figure(
        plot_horizon_mae(curves, title, ylabel="test error"), run_dir / "horizon_mae.png", dpi=120
    )
