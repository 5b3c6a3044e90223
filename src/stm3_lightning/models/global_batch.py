"""The global batch of a multi-process (DDP) step, for models whose computation couples the samples of a batch.

Under DDP every process holds a shard of the global batch: sample ``j`` of a global batch of ``size`` samples is
held by rank ``j % world`` at local position ``j // world`` (the strided dealing of
:class:`~stm3_lightning.data.resumable.EpochShuffleSampler` for training and of Lightning's
``UnrepeatedDistributedSampler`` for evaluation). The :class:`~stm3_lightning.lit.forecaster.Forecaster` declares
that layout around each step with :func:`use_global_batch`; a model then

- draws random numbers for the whole global batch and keeps its own samples' (:func:`rand_rows`), so every
  process consumes its generators exactly as a single process running the global batch would, and draws the
  same numbers for the same samples;
- gathers, in training only, the tensors a batch-level loss needs from all processes with gradient
  (:func:`gather_rows`), so the loss is the single-process loss of the global batch.

Outside such a step (a single process, analysis passes, user code) both are the plain local operations. Rows
are sample-major: a tensor of ``b * r`` rows holds ``r`` consecutive rows per local sample (e.g. ``(sample,
node)`` rows of STM3's mixture).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor


@dataclass(frozen=True)
class GlobalBatch:
    """Where this process's samples sit in the global batch of one step (see the module docstring).

    size: samples of the global batch; world, rank: the process group; collective: True in training, where
    every process runs every step, so collectives (:func:`gather_rows`) are allowed; False in evaluation, where
    the processes may run different numbers of batches.
    """

    size: int
    world: int
    rank: int
    collective: bool

    def count(self, rank: int) -> int:
        """Samples of the global batch held by ``rank``."""
        return len(range(rank, self.size, self.world))

    @property
    def positions(self) -> Tensor:
        """This process's samples in the global batch, in local order: [count(rank)] long."""
        return torch.arange(self.rank, self.size, self.world)

    def rows_per_sample(self, rows: int) -> int:
        """``rows`` local rows -> rows per sample (``rows`` must be a multiple of the local sample count)."""
        count = self.count(self.rank)
        if count == 0 or rows % count:
            raise ValueError(
                f"{rows} rows do not split into the {count} samples this process holds of a global batch of "
                f"{self.size}; rows must be sample-major."
            )
        return rows // count


_CURRENT: ContextVar[GlobalBatch | None] = ContextVar("stm3_global_batch", default=None)


@contextmanager
def use_global_batch(batch: GlobalBatch | None) -> Iterator[None]:
    """Declare the global batch of the step run in the block (``None``: the local batch is the whole batch)."""
    token = _CURRENT.set(batch)
    try:
        yield
    finally:
        _CURRENT.reset(token)


def current_global_batch() -> GlobalBatch | None:
    """The global batch declared for the running step, or ``None`` (one process, or outside a step)."""
    batch = _CURRENT.get()
    return batch if batch is not None and batch.world > 1 else None


def rand_rows(like: Tensor) -> Tensor:
    """``torch.rand_like(like)`` for ``like: [R, ...]`` (sample-major rows), drawn for the whole global batch.

    With a global batch declared, draws ``[size * r, ...]`` (``r`` rows per sample) exactly as one process holding
    the global batch would, and returns this process's rows: [R, ...]. Otherwise ``torch.rand_like(like)``.
    """
    batch = current_global_batch()
    if batch is None:
        return torch.rand_like(like)
    per_sample = batch.rows_per_sample(like.shape[0])
    full = torch.rand((batch.size * per_sample, *like.shape[1:]), dtype=like.dtype, device=like.device)
    full = full.view(batch.size, per_sample, *like.shape[1:])
    return full[batch.positions.to(like.device)].reshape(like.shape)


class _AllGather(torch.autograd.Function):
    """All-gather of equally shaped tensors ``[n, ...]`` -> ``[world, n, ...]``; the backward sums the gradient of
    every process's copy (all-reduce) and returns this process's part, so that DDP's gradient averaging yields the
    gradient of the single-process loss."""

    @staticmethod
    def forward(ctx: torch.autograd.function.FunctionCtx, local: Tensor) -> Tensor:
        parts = [torch.empty_like(local) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, local.contiguous())
        return torch.stack(parts)

    @staticmethod
    def backward(ctx: torch.autograd.function.FunctionCtx, grad: Tensor) -> Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[dist.get_rank()]


def gather_rows(local: Tensor) -> Tensor:
    """The global batch's rows ``[size * r, ...]`` in single-process order, from every process's ``local: [R, ...]``.

    Only in a training step with a global batch declared (else ``local`` itself). Differentiable: gradients flow
    back to every process's own rows. Processes holding fewer samples are padded for the exchange.
    """
    batch = current_global_batch()
    if batch is None or not batch.collective:
        return local
    per_sample = batch.rows_per_sample(local.shape[0])
    most = math.ceil(batch.size / batch.world)
    samples = local.view(-1, per_sample, *local.shape[1:])
    padded = torch.cat([samples, samples.new_zeros(most - samples.shape[0], *samples.shape[1:])])
    gathered = _AllGather.apply(padded).flatten(0, 1)  # [world * most, r, ...], rank-major
    j = torch.arange(batch.size, device=local.device)
    order = (j % batch.world) * most + j // batch.world  # sample j of the global batch
    return gathered.index_select(0, order).flatten(0, 1)
