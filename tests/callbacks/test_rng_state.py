"""RNG streams travel with the checkpoint and are restored right before the first resumed batch."""

from __future__ import annotations

import torch

from stm3_lightning.callbacks.rng_state import RngState, capture_rng, restore_rng


def test_capture_and_restore_roundtrip() -> None:
    torch.manual_seed(3)
    state = capture_rng()
    expected = torch.rand(5)
    torch.rand(100)
    restore_rng(state)
    assert torch.equal(torch.rand(5), expected)


def test_callback_applies_the_loaded_state_once_at_train_start() -> None:
    torch.manual_seed(5)
    callback = RngState()
    saved = callback.state_dict()
    expected = torch.rand(4)
    torch.manual_seed(99)
    resumed = RngState()
    resumed.load_state_dict(saved)
    assert not torch.equal(torch.rand(4), expected)  # nothing restored before training starts
    resumed.on_train_start(None, None)  # type: ignore[arg-type]
    assert torch.equal(torch.rand(4), expected)
    after = torch.get_rng_state()
    resumed.on_train_start(None, None)  # type: ignore[arg-type]
    assert torch.equal(torch.get_rng_state(), after)
