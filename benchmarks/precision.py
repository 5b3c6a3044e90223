"""bf16 mixed precision on CPU (``trainer.precision=bf16-mixed``, i.e. ``torch.autocast("cpu", bfloat16)`` around
forward and loss, fp32 weights and optimiser), against fp32.

1. :func:`bf16_step`: the training step's time under autocast vs fp32 (same weights, same batch, interleaved), and
   the loss deviation of one forward.
2. :func:`bf16_training`: the accuracy cost. Two short real trainings through ``stm3 train`` (same seed, same
   batches), ``trainer.precision=32-true`` and ``bf16-mixed``, each tested on the same test windows: the test MAE
   of both, their difference, and the wall time of each fit.
"""

from __future__ import annotations

import copy
import tempfile
import time

import torch
from torch import Tensor, nn

from benchmarks.common import Timing, TrainStep, timed

PRECISIONS = ("32-true", "bf16-mixed")


def bf16_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    repeats: int,
    seed: int,
    mean: Tensor | float = 0.0,
    std: Tensor | float = 1.0,
) -> dict[str, object]:
    """x: [B, L, N, C], y: [B, H, N, 1]. Step time under bf16 autocast vs fp32 (one warm-up each, then
    interleaved), and the forward loss of both from the same RNG state."""
    fp32 = TrainStep(copy.deepcopy(model), mean=mean, std=std)
    bf16 = TrainStep(copy.deepcopy(model), mean=mean, std=std)

    def run_bf16() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bf16(x, y)

    with torch.no_grad():
        torch.manual_seed(seed)
        loss32 = float(fp32.loss(x, y))
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss16 = float(bf16.loss(x, y))
    times = {"bf16": Timing(), "fp32": Timing()}
    run_bf16(), fp32(x, y)  # warm-up
    for _ in range(repeats):
        timed(run_bf16, times["bf16"])
        timed(lambda: fp32(x, y), times["fp32"])
    return {
        "batch": x.shape[0],
        "bf16": times["bf16"].as_dict(),
        "fp32": times["fp32"].as_dict(),
        "speedup_vs_fp32": times["fp32"].median / times["bf16"].median,
        "loss_fp32": loss32,
        "loss_bf16": loss16,
        "loss_rel_diff": abs(loss16 - loss32) / max(abs(loss32), 1e-12),
    }


def training_overrides(data: list[str], epochs: int, batches: int, output_dir: str) -> list[str]:
    """``stm3 train`` overrides of the short comparison run: ``epochs`` epochs of ``batches`` training batches,
    validated and tested on ``batches`` batches, no loggers, plots or progress bar."""
    return [
        *data,
        "model=stm3",
        "seed=0",
        f"trainer.max_epochs={epochs}",
        f"trainer.limit_train_batches={batches}",
        f"trainer.limit_val_batches={batches}",
        f"trainer.limit_test_batches={batches}",
        "trainer.num_sanity_val_steps=0",
        "trainer.enable_progress_bar=false",
        "callbacks.progress_bar=none",
        "callbacks.plots=false",
        "callbacks.early_stopping.enabled=false",
        "logger.csv=false",
        "logger.wandb.mode=disabled",
        f"paths.output_dir={output_dir}",
    ]


def bf16_training(data: list[str], epochs: int, batches: int, data_dir: str | None) -> dict[str, object]:
    """Train the same seeded STM3 twice (fp32, bf16-mixed) for ``epochs`` x ``batches`` steps and test both.

    ``data``: compose overrides of the dataset (e.g. PEMS08 12 -> 12). Returns each precision's test metrics and
    fit+test seconds, and ``mae_diff`` = MAE(bf16) - MAE(fp32) (absolute and relative to fp32).
    """
    from stm3_lightning.config.compose import compose
    from stm3_lightning.console import configure_console
    from stm3_lightning.run.train import train

    configure_console()  # the CLI's console: no Lightning tips or known deprecation noise in the benchmark log
    runs: dict[str, dict[str, object]] = {}
    for precision in PRECISIONS:
        with tempfile.TemporaryDirectory(prefix="stm3-bf16-") as out:
            overrides = training_overrides(data, epochs, batches, out) + [f"trainer.precision={precision}"]
            if data_dir:
                overrides.append(f"paths.data_dir={data_dir}")
            start = time.perf_counter()
            results = train(compose(overrides))
            seconds = time.perf_counter() - start
        runs[precision] = {"seconds": seconds, **{k: float(v) for k, v in results["overall"].items()}}
    mae32, mae16 = runs["32-true"]["mae"], runs["bf16-mixed"]["mae"]
    return {
        "data": data,
        "epochs": epochs,
        "batches_per_epoch": batches,
        "runs": runs,
        "mae_diff": mae16 - mae32,
        "mae_rel_diff": (mae16 - mae32) / max(abs(mae32), 1e-12),
        "time_ratio_bf16_vs_fp32": runs["bf16-mixed"]["seconds"] / runs["32-true"]["seconds"],
    }
