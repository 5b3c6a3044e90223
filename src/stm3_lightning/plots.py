"""Every figure the project draws: routing/disentanglement diagnostics, a run's per-step errors, the ablation
report's comparisons.

Figures are built with ``matplotlib.figure.Figure`` directly, never through pyplot, so no GUI backend is
touched, nothing is kept in a global figure registry, and PNGs are rendered by the Agg canvas. Each
``plot_*`` function returns the Figure; :func:`save_figure` writes a PNG, :func:`figure_image` renders it for
``wandb.Image``. A *curve* is ``(x: [T], mean: [T], std: [T] or None)``, e.g. over the runs of one variant.
"""

from __future__ import annotations

import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Protocol

import matplotlib
import numpy as np
from matplotlib.axes import Axes
from matplotlib.colors import Colormap
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator
from PIL import Image
from torch import Tensor

Curve = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def _expert_cmap(num_experts: int) -> Colormap:
    """A colormap with ``num_experts`` distinct discrete colours."""
    name = "tab10" if num_experts <= 10 else "tab20" if num_experts <= 20 else "viridis"
    return matplotlib.colormaps[name].resampled(num_experts)


def plot_assignment_map(
    assign: Tensor, num_experts: int, coords: Tensor | None = None, title: str = "Node → expert assignment"
) -> Figure:
    """Map of each node's top-1 expert.

    assign: [N] or [R, N] integer expert indices; rows R (e.g. batch samples or epochs) become image rows.
    coords: optional [N, 2] node positions; with it a 1-D ``assign`` is drawn as a coloured scatter instead.
    """
    values = assign.detach().cpu().numpy()
    if values.ndim not in (1, 2) or (coords is not None and values.ndim != 1):
        raise ValueError(
            f"assign must be [N] (or [R, N] without coords), got shape {values.shape} with coords={coords is not None}."
        )
    fig = Figure(figsize=(10, 4), layout="constrained")
    ax = fig.add_subplot()
    cmap = _expert_cmap(num_experts)
    if coords is not None:
        xy = coords.detach().cpu().numpy()
        art = ax.scatter(xy[:, 0], xy[:, 1], c=values, cmap=cmap, vmin=-0.5, vmax=num_experts - 0.5, s=25)
        ax.set_aspect("equal")
    else:
        art = ax.imshow(
            np.atleast_2d(values),
            cmap=cmap,
            vmin=-0.5,
            vmax=num_experts - 0.5,
            aspect="auto",
            interpolation="nearest",
        )
        ax.set_xlabel("node")
        if values.ndim == 2:
            ax.yaxis.set_major_locator(MaxNLocator(integer=True))
            ax.set_ylabel("row")
        else:
            ax.set_yticks([])
    fig.colorbar(art, ax=ax, ticks=range(num_experts), label="expert")
    ax.set_title(title)
    return fig


def plot_expert_load(loads: Tensor, title: str = "Expert load") -> Figure:
    """Bar chart of the fraction of routes per expert, with the uniform load 1/E as a dashed line.

    loads: [E] counts or fractions (rescaled to fractions).
    """
    frac = loads.detach().cpu().double().numpy()
    frac = frac / frac.sum()
    fig = Figure(figsize=(5, 3.5), layout="constrained")
    ax = fig.add_subplot()
    ax.bar(range(frac.size), frac, color=[_expert_cmap(frac.size)(i) for i in range(frac.size)])
    ax.axhline(1.0 / frac.size, color="black", linestyle="--", linewidth=1, label="uniform")
    ax.set_xticks(range(frac.size))
    ax.set_xlabel("expert")
    ax.set_ylabel("fraction of routes")
    ax.legend()
    ax.set_title(title)
    return fig


def plot_similarity_heatmap(
    matrix: Tensor, title: str = "Expert similarity", labels: Sequence[str] | None = None
) -> Figure:
    """Annotated heatmap of a square similarity matrix, e.g. pairwise CKA or centroid cosine (range [−1, 1]).

    matrix: [K, K]. labels: K tick labels (default "e0", "e1", ...). NaN entries are shown blank.
    """
    values = matrix.detach().cpu().double().numpy()
    if values.ndim != 2 or values.shape[0] != values.shape[1]:
        raise ValueError(f"matrix must be square [K, K], got shape {values.shape}.")
    names = list(labels) if labels is not None else [f"e{i}" for i in range(values.shape[0])]
    fig = Figure(figsize=(4.5, 4), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(values, cmap="RdBu_r", vmin=-1.0, vmax=1.0)
    for (i, j), value in np.ndenumerate(values):
        if np.isfinite(value):
            colour = "white" if abs(value) > 0.6 else "black"
            ax.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=8, color=colour)
    ax.set_xticks(range(len(names)), names)
    ax.set_yticks(range(len(names)), names)
    fig.colorbar(image, ax=ax)
    ax.set_title(title)
    return fig


def plot_routing_history(
    history: Mapping[str, Sequence[float]], epochs: Sequence[int] | None = None, title: str = "Routing change"
) -> Figure:
    """Line plot of routing metrics over evaluations, one line per metric (e.g. "routing/flip_rate").

    history: metric name -> values, all of the same length T. epochs: T x-values (default 0..T−1).
    """
    lengths = {len(values) for values in history.values()}
    if len(lengths) != 1 or (epochs is not None and len(epochs) not in lengths):
        raise ValueError(
            f"All history series and epochs must have the same length, got lengths {sorted(lengths)}."
        )
    steps = list(epochs) if epochs is not None else list(range(lengths.pop()))
    fig = Figure(figsize=(6, 3.5), layout="constrained")
    ax = fig.add_subplot()
    for name, values in history.items():
        ax.plot(steps, list(values), marker="o", markersize=3, label=name)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_xlabel("epoch")
    ax.set_ylabel("value")
    ax.legend()
    ax.set_title(title)
    return fig


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


def _draw_curves(ax: Axes, curves: Mapping[str, Curve]) -> None:
    """One line per curve, shaded ± std where the curve has one."""
    for label, (x, mean, std) in curves.items():
        ax.plot(x, mean, marker="o", markersize=2, label=label)
        if std is not None:
            ax.fill_between(x, mean - std, mean + std, alpha=0.2)


def plot_horizon_mae(curves: Mapping[str, Curve], title: str, ylabel: str = "test MAE") -> Figure:
    """Test error at each forecast step, one line per curve: the variants of a report (± std over seeds) or
    the MAE and RMSE of one run."""
    fig = Figure(figsize=(6.5, 3.8), layout="constrained")
    ax = fig.add_subplot()
    _draw_curves(ax, curves)
    ax.set_xlabel("forecast step")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylabel(ylabel)
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
        _draw_curves(ax, histories[name])
        ax.set_title(name, fontsize=9)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    for ax in axes[len(names) :]:
        ax.set_visible(False)
    axes[0].legend(fontsize=7)
    fig.suptitle(title)
    return fig


def save_figure(fig: Figure, path: str | Path, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG to ``path`` (parent folders created) and return the path."""
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png", dpi=dpi)
    return out


def figure_image(fig: Figure, dpi: int = 100) -> Image.Image:
    """Render ``fig`` with the Agg canvas to an in-memory RGBA PIL image."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    buf.seek(0)
    image = Image.open(buf)
    image.load()
    return image
