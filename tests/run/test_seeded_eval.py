"""Deterministic evaluation: ``eval_seed`` fixes the router noise drawn at test time; the RNG is left as it was."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from stm3_lightning.cli import main
from stm3_lightning.run.evaluation import load_for_eval
from stm3_lightning.run.seeded_eval import evaluate_loader, num_batches, seeded_rng

# A tiny STM3 whose router noise (x1000 the release's) flips routes, so the eval seed visibly matters.
RUN = [
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=500",
    "data.input_len=12",
    "data.horizon=3",
    "model.num_layers=1",
    "model.router_noise=10.0",
    "trainer.max_epochs=1",
    "trainer.limit_train_batches=2",
    "trainer.limit_val_batches=2",
    "trainer.limit_test_batches=3",
    "callbacks.progress_bar=none",
    "callbacks.plots=false",
    "logger.wandb.mode=disabled",
]


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("seeded") / "run"
    assert main(["train", *RUN, "seed=3", f"paths.output_dir={path}"]) == 0
    return path


def best(run: Path) -> Path:
    return next((run / "checkpoints").glob("best-*.ckpt"))


def eval_overall(run: Path, *args: str) -> dict[str, float]:
    assert main(["eval", f"ckpt={best(run)}", *args]) == 0
    latest = max((run / "eval").iterdir(), key=lambda p: p.stat().st_mtime_ns)
    return json.loads((latest / "test_metrics.json").read_text())["overall"]


def test_two_evals_of_one_checkpoint_give_identical_metrics(run: Path) -> None:
    first, second = eval_overall(run), eval_overall(run)
    assert first == second
    trained = json.loads((run / "test_metrics.json").read_text())
    assert trained["eval_seed"] == 3 and trained["overall"] == first  # default eval_seed = the run's seed


def test_eval_seed_chooses_the_noise_and_matches_the_standalone_pass(run: Path) -> None:
    other = eval_overall(run, "eval_seed=5")
    assert other != eval_overall(run)
    cfg, module, dm = load_for_eval(best(run), [])
    scored = evaluate_loader(module, dm.test_dataloader(), 5, cfg.trainer.limit_test_batches)
    assert scored.metrics["mae"] == pytest.approx(other["mae"], rel=1e-12, abs=0)
    assert scored.metrics["rmse"] == pytest.approx(other["rmse"], rel=1e-12, abs=0)
    again = evaluate_loader(
        module, dm.test_dataloader(), 5, cfg.trainer.limit_test_batches, keep_predictions=True
    )
    assert again.metrics == scored.metrics
    windows = min(dm.window_counts["test"], 3 * cfg.data.eval_batch_size)
    assert again.pred is not None and again.pred.shape == (windows, 3, 4, 1)


def test_seeded_rng_restores_the_random_stream() -> None:
    torch.manual_seed(0)
    expected = torch.rand(3)
    torch.manual_seed(0)
    with seeded_rng(123):
        inside = torch.rand(3)
    assert torch.equal(torch.rand(3), expected) and not torch.equal(inside, expected)
    with seeded_rng(123):
        assert torch.equal(torch.rand(3), inside)


@pytest.mark.parametrize(
    ("limit", "total", "expected"), [(1.0, 10, 10), (0.25, 10, 2), (3, 10, 3), (30, 10, 10)]
)
def test_num_batches_follows_lightning_limits(limit: float, total: int, expected: int) -> None:
    assert num_batches(limit, total) == expected
