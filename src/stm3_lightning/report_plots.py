"""Figures of the ablation report: error bars per variant, per-horizon MAE, analysis metrics over epochs.

Built on ``matplotlib.figure.Figure`` (no pyplot state); save with :func:`stm3_lightning.analysis.plots.save_figure`.
A *curve* is ``(x: [T], mean: [T], std: [T])`` over the runs of one variant.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

Curve = tuple[np.ndarray, np.ndarray, np.ndarray]


class _MeanStd(Protocol):
    mean: float
    std: float


def plot_error_bars(
    stats: Mapping[str, Mapping[str, _MeanStd]], metrics: Sequence[tuple[str, str, float]], title: str
) -> Figure:
    """One panel per metric ``(key, label, scale)``, one bar per variant, error bars = std over seeds; every value
    axis starts at 0."""
    groups = list(stats)
    fig = Figure(
        figsize=(max(6.0, 1.6 * len(metrics) + 0.45 * len(groups) * len(metrics)), 3.8), layout="constrained"
    )
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    x = np.arange(len(groups))
    for ax, (key, label, scale) in zip(axes, metrics, strict=True):
        means = [stats[g][key].mean * scale if key in stats[g] else math.nan for g in groups]
        stds = [stats[g][key].std * scale if key in stats[g] else math.nan for g in groups]
        ax.bar(x, means, yerr=np.nan_to_num(stds), capsize=3, color="tab:blue", alpha=0.8)
        ax.set_ylim(bottom=0.0)  # bar lengths are the values: a truncated axis would exaggerate differences
        ax.set_xticks(x, groups, rotation=45, ha="right", fontsize=8)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title)
    return fig


def plot_horizon_mae(curves: Mapping[str, Curve], title: str) -> Figure:
    """Test MAE at each forecast step, one line per variant, shaded ± std over seeds."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    for group, (x, mean, std) in curves.items():
        ax.plot(x, mean, marker="o", markersize=2, label=group)
        ax.fill_between(x, mean - std, mean + std, alpha=0.2)
    ax.set_xlabel("forecast step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel("test MAE")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    return fig


def plot_histories(histories: Mapping[str, Mapping[str, Curve]], title: str, ncols: int = 3) -> Figure:
    """One panel per routing/disentanglement metric: its value over epochs, one line per variant (± std)."""
    names = list(histories)
    cols = min(ncols, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.2 * cols, 2.8 * rows + 0.4), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    for ax, name in zip(axes, names, strict=False):
        for group, (x, mean, std) in histories[name].items():
            ax.plot(x, mean, marker="o", markersize=2, label=group)
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig
