"""Epoch-seeded, resumable training order: same batches after a restore, DDP shards cover every window."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import TensorDataset

from stm3_lightning.data.resumable import EpochShuffleSampler, ResumableDataLoader, epoch_seed, resumable_copy


def loader(size: int = 23, batch_size: int = 4, seed: int = 7, **kwargs) -> ResumableDataLoader:
    data = TensorDataset(torch.arange(size))
    return ResumableDataLoader(data, EpochShuffleSampler(size, seed), batch_size=batch_size, **kwargs)


def epoch_batches(dl: ResumableDataLoader, epoch: int) -> list[list[int]]:
    dl.sampler.set_epoch(epoch)
    return [b[0].tolist() for b in dl]


def test_order_is_a_function_of_seed_and_epoch() -> None:
    a, b = loader(seed=7), loader(seed=7)
    assert epoch_batches(a, 3) == epoch_batches(b, 3)
    assert epoch_batches(a, 0) != epoch_batches(a, 1)
    assert epoch_batches(loader(seed=8), 0) != epoch_batches(loader(seed=7), 0)
    assert sorted(sum(epoch_batches(a, 2), [])) == list(range(23))
    assert epoch_seed(1, 2) != epoch_seed(2, 1) and 0 <= epoch_seed(-5, 0) < 2**63


def test_global_rng_does_not_change_the_order() -> None:
    torch.manual_seed(0)
    first = epoch_batches(loader(), 1)
    torch.manual_seed(123)
    torch.rand(10)
    assert epoch_batches(loader(), 1) == first


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize("done", [0, 2, 5])
def test_state_dict_restores_the_remaining_batches(done: int, drop_last: bool) -> None:
    full = epoch_batches(loader(drop_last=drop_last), 4)
    first = loader(drop_last=drop_last)
    first.sampler.set_epoch(4)
    iterator = iter(first)
    seen = [next(iterator)[0].tolist() for _ in range(done)]
    state = first.state_dict()
    assert state == {"epoch": 4, "batches": done}
    resumed = loader(drop_last=drop_last)
    resumed.load_state_dict(state)
    resumed.sampler.set_epoch(4)  # Lightning sets the same epoch again: the skip must survive
    rest = [b[0].tolist() for b in resumed]
    assert seen + rest == full
    assert resumed.state_dict()["batches"] == len(full)
    assert epoch_batches(resumed, 5) == epoch_batches(loader(drop_last=drop_last), 5)  # next epoch: no skip


def test_end_of_epoch_state_starts_the_next_epoch_in_full() -> None:
    dl = loader()
    batches = epoch_batches(dl, 0)
    resumed = loader()
    resumed.load_state_dict(dl.state_dict())
    resumed.sampler.set_epoch(1)
    assert len(batches) == 6 and epoch_batches(resumed, 1) == epoch_batches(loader(), 1)


@pytest.mark.parametrize("size, world", [(23, 2), (10, 4), (3, 4)])
def test_ddp_shards_cover_every_index_with_equal_lengths(size: int, world: int) -> None:
    samplers = [EpochShuffleSampler(size, seed=1, num_replicas=world, rank=r) for r in range(world)]
    shards = [list(s) for s in samplers]
    assert {len(s) for s in shards} == {len(samplers[0])}
    assert set(sum(shards, [])) == set(range(size))
    with pytest.raises(ValueError, match="rank"):
        EpochShuffleSampler(size, 1, num_replicas=world, rank=world)


def test_resumable_copy_keeps_the_loader_settings() -> None:
    base = torch.utils.data.DataLoader(
        TensorDataset(torch.arange(9)), batch_size=2, drop_last=True, shuffle=True
    )
    copy = resumable_copy(base, seed=3)
    assert isinstance(copy.sampler, EpochShuffleSampler)
    assert (copy.batch_size, copy.drop_last, len(copy)) == (2, True, 4)
