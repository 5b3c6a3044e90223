"""Deterministic evaluation: every random number drawn while scoring comes from ``eval_seed``.

The release draws its router noise in eval mode too (``model.router_noise_at_eval``), so a test pass depends on the
global RNG state it starts from. Here a pass runs inside :func:`seeded_rng`: the RNG is seeded with the run's
``eval_seed`` (default: ``seed``) and restored afterwards, so two evaluations of one checkpoint give identical
metrics and a test pass during training (``callbacks.test_every_epoch``) leaves the training's random stream as
it was. :func:`evaluate_loader` is that pass outside ``Trainer.test`` (same batches, same order, same numbers),
used to score the test split after each validation and to re-score a checkpoint under protocol variants.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import torch
from omegaconf import DictConfig
from torch.utils.data import DataLoader

from stm3_lightning.callbacks.rng_state import capture_rng, restore_rng
from stm3_lightning.lit.forecaster import Forecaster


def eval_seed(cfg: DictConfig) -> int:
    """The seed of a run's evaluation passes: ``eval_seed``, or the run's ``seed`` when unset."""
    return int(cfg.seed if cfg.get("eval_seed") is None else cfg.eval_seed)


@contextmanager
def seeded_rng(seed: int) -> Iterator[None]:
    """Seed the torch (and CUDA) RNG with ``seed`` inside the block; restore the previous state after it."""
    saved = capture_rng()
    torch.manual_seed(seed)
    try:
        yield
    finally:
        restore_rng(saved)


def num_batches(limit: int | float, total: int) -> int:
    """Batches a pass scores under Lightning's ``limit_*_batches`` semantics (int = count, float = fraction)."""
    if isinstance(limit, bool):
        raise TypeError("limit_test_batches must be an int or a float, not a bool.")
    if isinstance(limit, int):
        return min(limit, total)
    return min(total, max(1, int(total * limit))) if limit > 0 else 0


@dataclass
class EvalPass:
    """One scored pass: ``metrics`` as :meth:`ForecastMetrics.compute` (overall and ``<m>@<h>``), ``per_step``
    lists per metric, and, when kept, ``pred, true: [S, H, N, C]`` in metric units (windows in loader order)."""

    metrics: dict[str, float]
    per_step: dict[str, list[float]]
    pred: np.ndarray | None = None
    true: np.ndarray | None = None


@torch.no_grad()
def evaluate_loader(
    module: Forecaster,
    loader: DataLoader,
    seed: int,
    limit: int | float = 1.0,
    keep_predictions: bool = False,
) -> EvalPass:
    """Score ``module`` on ``loader`` in eval mode with the RNG seeded by ``seed`` (restored afterwards).

    Batches ``x: [B, L, N, C]``, ``y: [B, H, N, 1]``; only the first ``num_batches(limit, len(loader))`` are used.
    """
    metrics = module.new_metrics().to(module.device)
    kept: list[tuple[np.ndarray, np.ndarray]] = []
    was_training = module.training
    module.eval()
    count = num_batches(limit, len(loader))
    try:
        with seeded_rng(seed):
            for i, (x, y) in enumerate(loader):
                if i >= count:
                    break
                pred = module(x.to(module.device))
                target = module.target_units(y.to(module.device))
                metrics.update(pred, target)
                if keep_predictions:
                    kept.append((pred.cpu().numpy(), target.cpu().numpy()))
    finally:
        module.train(was_training)
    if not kept:
        return EvalPass(metrics.compute(), metrics.per_step())
    pred = np.concatenate([p for p, _ in kept])
    true = np.concatenate([t for _, t in kept])
    return EvalPass(metrics.compute(), metrics.per_step(), pred, true)
