"""Deterministic split of the CPU kernels' batch over ``torch.get_num_threads()`` worker threads.

The chunks depend only on the batch size, the work per item and the thread count, and each chunk accumulates its
parameter gradients into its own buffer (summed in chunk order afterwards): same thread count, same bits.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import torch

_pool_state: dict[str, Any] = {}


def _thread_pool(threads: int) -> ThreadPoolExecutor:
    """A pool of ``threads`` workers, rebuilt after a fork or when the thread count changes."""
    key = (os.getpid(), threads)
    if _pool_state.get("key") != key:
        old = _pool_state.get("pool")
        if isinstance(old, ThreadPoolExecutor) and _pool_state["key"][0] == key[0]:
            old.shutdown(wait=False)
        _pool_state["key"] = key
        _pool_state["pool"] = ThreadPoolExecutor(threads, thread_name_prefix="stm3-kernel")
    pool = _pool_state["pool"]
    assert isinstance(pool, ThreadPoolExecutor)
    return pool


def batch_ranges(batch: int, work_per_item: int) -> list[tuple[int, int]]:
    """Split ``range(batch)`` into contiguous chunks for ``torch.get_num_threads()`` threads.

    Small problems stay in one chunk; large ones get four chunks per thread for load balance.
    """
    threads = torch.get_num_threads()
    if threads <= 1 or batch <= 1 or batch * work_per_item < 1 << 16:
        return [(0, batch)]
    chunks = min(batch, 4 * threads)
    return [(batch * i // chunks, batch * (i + 1) // chunks) for i in range(chunks)]


def run_ranges(fn: Callable[[int, int, int], object], ranges: list[tuple[int, int]]) -> None:
    """Call ``fn(chunk_index, start, stop)`` for every range, in parallel when there are several."""
    if len(ranges) == 1:
        fn(0, *ranges[0])
        return
    pool = _thread_pool(torch.get_num_threads())
    for future in [pool.submit(fn, i, start, stop) for i, (start, stop) in enumerate(ranges)]:
        future.result()
