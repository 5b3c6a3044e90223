"""The global-batch helpers outside a process group: random draws for the global batch, local shards of them."""

from __future__ import annotations

import pytest
import torch

from stm3_lightning.models.global_batch import (
    GlobalBatch,
    current_global_batch,
    gather_rows,
    rand_rows,
    use_global_batch,
)


def test_without_a_global_batch_everything_is_local() -> None:
    like = torch.zeros(6, 3)
    torch.manual_seed(0)
    expected = torch.rand_like(like)
    torch.manual_seed(0)
    assert torch.equal(rand_rows(like), expected)
    assert gather_rows(like) is like and current_global_batch() is None
    with use_global_batch(GlobalBatch(size=5, world=1, rank=0, collective=True)):
        assert current_global_batch() is None  # one process: nothing to emulate


@pytest.mark.parametrize(("size", "rank"), [(5, 0), (5, 1), (4, 1)])
def test_rand_rows_is_this_ranks_share_of_the_single_process_draw(size: int, rank: int) -> None:
    """Sample j of the global batch lives on rank j % 2; each rank gets the numbers one process draws for it and
    leaves the generator where one process leaves it."""
    nodes, experts = 3, 4
    torch.manual_seed(1)
    single = torch.rand(size * nodes, experts).view(size, nodes, experts)
    after = torch.rand(1)
    batch = GlobalBatch(size=size, world=2, rank=rank, collective=False)
    local = torch.zeros(batch.count(rank) * nodes, experts)
    torch.manual_seed(1)
    with use_global_batch(batch):
        drawn = rand_rows(local)
    assert torch.equal(drawn, single[rank::2].reshape(local.shape))
    assert torch.equal(torch.rand(1), after)


def test_rows_must_split_into_the_samples_held() -> None:
    with use_global_batch(GlobalBatch(size=4, world=2, rank=0, collective=False)):
        with pytest.raises(ValueError, match="7 rows do not split into the 2 samples"):
            rand_rows(torch.zeros(7, 2))
