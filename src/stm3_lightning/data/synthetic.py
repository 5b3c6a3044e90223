"""Deterministic synthetic spatio-temporal data: graph-diffused daily/weekly periodic signals plus noise.

It is the offline default dataset: it needs no file, no network, and is identical for a given seed on every machine.
"""

from __future__ import annotations

import numpy as np

from stm3_lightning.config.schema import SyntheticConfig


def knn_graph(num_nodes: int, rng: np.random.Generator, k: int = 4) -> np.ndarray:
    """Row-normalised k-nearest-neighbour graph of random points in the unit square.

    Returns: ``adj: [N, N]`` float32, each row summing to 1, zero diagonal.
    """
    pos = rng.random((num_nodes, 2))
    dist = np.linalg.norm(pos[:, None] - pos[None], axis=-1)
    np.fill_diagonal(dist, np.inf)
    k = min(k, num_nodes - 1)
    adj = np.zeros((num_nodes, num_nodes), dtype=np.float64)
    if k > 0:
        nearest = np.argsort(dist, axis=1)[:, :k]
        rows = np.repeat(np.arange(num_nodes), k)
        adj[rows, nearest.ravel()] = 1.0
        adj = np.maximum(adj, adj.T)
        adj /= adj.sum(axis=1, keepdims=True)
    return adj.astype(np.float32)


def generate_synthetic(cfg: SyntheticConfig) -> tuple[np.ndarray, np.ndarray]:
    """Generate the series and its graph.

    Each node has a daily profile (three harmonics with node-specific amplitude and phase), a weekday/weekend
    modulation, a positive level, AR(1) noise, and is mixed with its neighbours by ``diffusion_steps`` steps
    of ``x <- 0.5 x + 0.5 A x``.

    Returns: ``values: [T, N]`` float32 (non-negative, flow-like), ``adj: [N, N]`` float32.
    """
    if cfg.num_nodes < 1 or cfg.num_steps < 2:
        raise ValueError("data.synthetic.num_nodes must be >= 1 and data.synthetic.num_steps >= 2.")
    rng = np.random.default_rng(cfg.seed)
    n, t, spd = cfg.num_nodes, cfg.num_steps, cfg.steps_per_day
    adj = knn_graph(n, rng)
    steps = np.arange(t)[:, None]
    phase_day = 2 * np.pi * (steps % spd) / spd
    signal = np.zeros((t, n))
    for harmonic in (1, 2, 3):
        amp = rng.uniform(0.2, 1.0, size=n) / harmonic
        phase = rng.uniform(0, 2 * np.pi, size=n)
        signal += amp * np.sin(harmonic * phase_day + phase)
    weekday = ((steps // spd) % 7) < 5
    signal *= np.where(weekday, 1.0, rng.uniform(0.4, 0.8, size=n))
    noise = np.zeros((t, n))
    eps = rng.normal(scale=cfg.noise, size=(t, n))
    for i in range(1, t):
        noise[i] = 0.7 * noise[i - 1] + eps[i]
    x = signal + noise
    for _ in range(cfg.diffusion_steps):
        x = 0.5 * x + 0.5 * x @ adj.T
    level = rng.uniform(2.0, 4.0, size=n)
    values = np.clip(50.0 * (x + level), 0.0, None)
    return values.astype(np.float32), adj
