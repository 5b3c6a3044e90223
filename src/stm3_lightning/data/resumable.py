"""Training-data order that survives a restart: epoch-seeded shuffling and a loader that remembers its position.

Lightning restores the loop counters of a mid-epoch checkpoint, but an ordinary shuffled ``DataLoader`` draws a
new order from the global RNG and starts the epoch over, so a resumed run would see different batches than an
uninterrupted one. Here the order of epoch ``e`` is a pure function of ``(seed, e)`` and the loader reports, in
its ``state_dict`` (saved by Lightning in every checkpoint), how many batches of the epoch it has handed out; on
restore it skips exactly those, so the resumed run sees the same remaining batches in the same order.

Hand-written rather than torchdata's ``StatefulDataLoader``: the guarantee (bit-exact resume after SIGKILL) comes
from the epoch-seeded sampler and the private worker-seed generator below, which that loader would still need;
it would replace only the few lines that count served batches, at the price of a dependency (torchdata) that is
not installed here, and its fast-forward would have to be re-proven against the SIGKILL tests.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, Sampler

from stm3_lightning.config.schema import DataConfig
from stm3_lightning.data.datamodule import SpatioTemporalDataModule


def epoch_seed(seed: int, epoch: int) -> int:
    """A 63-bit seed derived from ``(seed, epoch)``; distinct pairs give unrelated seeds."""
    digest = hashlib.sha256(f"stm3-data-order:{seed}:{epoch}".encode()).digest()
    return int.from_bytes(digest[:8], "little") >> 1


class EpochShuffleSampler(Sampler[int]):
    """This rank's window indices for one epoch: a permutation fixed by ``(seed, epoch)``.

    Under DDP rank ``r`` takes every ``num_replicas``-th index from ``r``, as ``DistributedSampler`` does, so the
    ``k``-th local batches of all ranks together are the ``k``-th batch one process would draw (sample ``j`` of
    it on rank ``j % num_replicas``; see :mod:`stm3_lightning.models.global_batch`). The permutation is
    truncated to a multiple of ``num_replicas`` with ``drop_last`` (the dropped tail is never in a full batch),
    else padded by repeating its head. ``start`` indices of the epoch are skipped once (set by
    :meth:`ResumableDataLoader.load_state_dict` when resuming mid-epoch); :meth:`set_epoch` with a new epoch
    clears it.
    """

    def __init__(
        self, size: int, seed: int, num_replicas: int = 1, rank: int = 0, drop_last: bool = False
    ) -> None:
        if num_replicas < 1 or not 0 <= rank < num_replicas:
            raise ValueError(f"rank {rank} is not in [0, {num_replicas}).")
        self.size, self.seed, self.num_replicas, self.rank = size, seed, num_replicas, rank
        self.num_samples = size // num_replicas if drop_last else math.ceil(size / num_replicas)
        self.epoch = 0
        self.start = 0

    def set_epoch(self, epoch: int) -> None:
        if epoch != self.epoch:
            self.start = 0
        self.epoch = epoch

    def order(self) -> torch.Tensor:
        """This rank's indices of the current epoch, ``[num_samples]`` (before skipping ``start``)."""
        generator = torch.Generator().manual_seed(epoch_seed(self.seed, self.epoch))
        perm = torch.randperm(self.size, generator=generator)
        total = self.num_samples * self.num_replicas
        if total > self.size:
            perm = perm.repeat(math.ceil(total / self.size))[:total]
        return perm[self.rank : total : self.num_replicas]

    def __iter__(self) -> Iterator[int]:
        start, self.start = self.start, 0
        yield from self.order()[start:].tolist()

    def __len__(self) -> int:
        return self.num_samples


class ResumableDataLoader(DataLoader):
    """A ``DataLoader`` over an :class:`EpochShuffleSampler` whose position can be saved and restored.

    ``state_dict()`` = ``{"epoch", "batches"}``: the epoch and how many of its batches were handed to the
    training loop. Lightning saves it in checkpoints (the loader implements its ``_Stateful`` protocol) and
    calls ``load_state_dict`` before iterating again. Iteration is lazy, so the worker processes and the
    sampler only start at the first batch, after Lightning has set the epoch. Worker seeds derive from
    ``(seed, epoch)`` through a private generator, so loading never draws from the global RNG.
    """

    def __init__(
        self, dataset: Dataset, sampler: EpochShuffleSampler, batch_size: int, **kwargs: Any
    ) -> None:
        super().__init__(
            dataset, batch_size=batch_size, sampler=sampler, generator=torch.Generator(), **kwargs
        )
        self._served = 0

    def __iter__(self) -> Iterator[Any]:
        sampler: EpochShuffleSampler = self.sampler  # type: ignore[assignment]
        self.generator.manual_seed(epoch_seed(sampler.seed + 1, sampler.epoch))
        self._served = sampler.start // self.batch_size
        for batch in super().__iter__():
            self._served += 1
            yield batch

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self._served}  # type: ignore[attr-defined]

    def load_state_dict(self, state: dict[str, int]) -> None:
        sampler: EpochShuffleSampler = self.sampler  # type: ignore[assignment]
        sampler.epoch = int(state["epoch"])
        sampler.start = int(state["batches"]) * self.batch_size
        self._served = int(state["batches"])


def resumable_copy(
    loader: DataLoader, seed: int, num_replicas: int = 1, rank: int = 0
) -> ResumableDataLoader:
    """``loader``'s dataset, batch size, workers and collation with an epoch-seeded, resumable order."""
    return ResumableDataLoader(
        loader.dataset,
        EpochShuffleSampler(len(loader.dataset), seed, num_replicas, rank, loader.drop_last),  # type: ignore[arg-type]
        batch_size=loader.batch_size,  # type: ignore[arg-type]
        drop_last=loader.drop_last,
        num_workers=loader.num_workers,
        pin_memory=loader.pin_memory,
        persistent_workers=loader.persistent_workers,
        collate_fn=loader.collate_fn,
    )


class ResumableDataModule(SpatioTemporalDataModule):
    """:class:`SpatioTemporalDataModule` whose training loader is a :class:`ResumableDataLoader` seeded by ``seed``."""

    def __init__(self, cfg: DataConfig, data_dir: str | Path, seed: int) -> None:
        super().__init__(cfg, data_dir)
        self.seed = seed

    def train_dataloader(self) -> ResumableDataLoader:
        world, rank = self._world()
        return resumable_copy(super().train_dataloader(), self.seed, world, rank)
