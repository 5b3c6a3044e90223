"""Same seed, same thread count, same machine: same bits (training through the CLI and the loss on its own)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from stm3_lightning.models.stm3.contrastive import causal_contrastive_loss, scale_representations

REPO = Path(__file__).resolve().parents[1]


def _contrastive_grad(means: torch.Tensor, membership: torch.Tensor, own: torch.Tensor) -> torch.Tensor:
    means = means.detach().requires_grad_()
    torch.manual_seed(3)  # the released loss draws its negatives from the global generator
    reps = scale_representations(means, 4).transpose(-1, -2)
    causal_contrastive_loss(reps, membership, own).backward()
    assert means.grad is not None
    return means.grad


def test_contrastive_backward_is_bit_reproducible_with_two_threads() -> None:
    # Before the fix the negatives were gathered with advanced indexing, whose backward (index_put_ with
    # accumulate) adds duplicate rows in thread-timing order: repeated backward passes differed in the last bits.
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        gen = torch.Generator().manual_seed(0)
        own = torch.randint(0, 4, (5440,), generator=gen)
        membership = F.one_hot(own, 4).bool()
        means = torch.randn(5440, 4, 16, generator=gen) * membership[..., None]
        first = _contrastive_grad(means, membership, own)
        for _ in range(6):
            assert torch.equal(_contrastive_grad(means, membership, own), first)
    finally:
        torch.set_num_threads(threads)


def _train(out: Path, *extra: str) -> dict[str, torch.Tensor]:
    args = [
        *extra,
        "data.synthetic.num_nodes=170",
        "data.synthetic.num_steps=1200",
        "data.input_len=12",
        "data.horizon=12",
        "data.batch_size=32",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=6",
        "trainer.limit_val_batches=1",
        "trainer.limit_test_batches=1",
        "callbacks.progress_bar=none",
        "logger.wandb.mode=disabled",
        "seed=5",
        f"paths.output_dir={out}",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "2", "WANDB_MODE": "disabled"}
    env.pop("STM3_RUN_DIR", None)
    done = subprocess.run(
        [sys.executable, "-m", "stm3_lightning.cli", "train", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    state = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)[
        "state_dict"
    ]
    return state


@pytest.mark.slow
def test_two_cli_trainings_with_the_same_seed_give_identical_weights(tmp_path: Path) -> None:
    # The second run also sets trainer.deterministic=true (Lightning: torch.use_deterministic_algorithms): on CPU
    # the default path is already deterministic, so both must give the same bits.
    first, second = _train(tmp_path / "a"), _train(tmp_path / "b", "trainer.deterministic=true")
    assert first.keys() == second.keys()
    differing = [name for name in first if not torch.equal(first[name], second[name])]
    assert not differing, f"weights differ between identical runs: {differing[:5]}"
