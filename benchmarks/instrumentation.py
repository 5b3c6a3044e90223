"""Overhead of the routing and disentanglement callbacks relative to the epoch time, at their default frequency.

Trains STM3 (default PEMS08 configuration: N = 170, 96 -> 96, batch 64, both analysis callbacks at their default
settings, every validation; ``callbacks=analysis`` as an override measures the heavier settings) on
PEMS08-shaped synthetic data (170 nodes, 17856 five-minute steps, hence PEMS08's window counts) for a few
truncated epochs, timing every training batch, every validation batch, every epoch and each callback's
``on_validation_epoch_end`` (all the work the callbacks do). A full PEMS08 epoch takes hours on a CPU, so the
overhead is reported twice: against the measured truncated epochs, and against a full PEMS08 epoch extrapolated
from the mean batch times (the callbacks' cost does not depend on the epoch length). After training, one more
evaluation of each callback is timed with and without figures: figures are drawn and written on the CPU whatever
the accelerator, so together with the diagnostic passes they give the shortest epoch for which the callbacks stay
within the 5% target.

    .venv/bin/python -m benchmarks.instrumentation [--train-batches 2 --val-batches 1 --epochs 2] [overrides...]

Prints a table and writes ``benchmarks/results/instrumentation.json``.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from lightning.pytorch.loggers import CSVLogger
from omegaconf import OmegaConf

from stm3_lightning.callbacks.analysis import FixedBatchAnalysisCallback, eval_mode
from stm3_lightning.callbacks.figure_sink import log_figures
from stm3_lightning.config.compose import compose
from stm3_lightning.run.builders import (
    build_analysis_callbacks,
    build_datamodule,
    build_forecaster,
    build_trainer,
)

TARGET_PCT = 5.0
RESULTS = Path(__file__).resolve().parent / "results" / "instrumentation.json"


class StepTimer(Callback):
    """Wall-clock seconds of every training batch, validation batch and epoch (training + validation + hooks)."""

    def __init__(self) -> None:
        self.train_batches: list[float] = []
        self.val_batches: list[float] = []
        self.epochs: list[float] = []
        self._start: dict[str, float] = {}

    def _tic(self, what: str) -> None:
        self._start[what] = time.perf_counter()

    def _toc(self, what: str, into: list[float]) -> None:
        into.append(time.perf_counter() - self._start.pop(what))

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._tic("epoch")

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._toc("epoch", self.epochs)

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._tic("train")

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._toc("train", self.train_batches)

    def on_validation_batch_start(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._tic("val")

    def on_validation_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        self._toc("val", self.val_batches)


def time_hook(callback: Callback, into: list[float]) -> None:
    """Make ``callback.on_validation_epoch_end`` append its wall-clock seconds to ``into``."""
    hook: Callable[[L.Trainer, L.LightningModule], None] = callback.on_validation_epoch_end

    def timed(trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        start = time.perf_counter()
        hook(trainer, pl_module)
        into.append(time.perf_counter() - start)

    callback.on_validation_epoch_end = timed  # type: ignore[method-assign]


def evaluation_seconds(
    cb: FixedBatchAnalysisCallback, trainer: L.Trainer, module: L.LightningModule
) -> dict[str, float]:
    """One evaluation of ``cb`` on the fitted model, timed in two parts: diagnostic passes + metrics + building the
    figures, and rendering + writing the figures (``log_figures``: CPU-bound whatever the accelerator)."""
    model, epoch = module.model, trainer.current_epoch
    x = cb.fixed_batch(trainer).to(module.device)
    start = time.perf_counter()
    with eval_mode(model):
        _, figures = cb.measure(model, x, cb.diagnostics(model, x), epoch, draw=True)
    middle = time.perf_counter()
    log_figures(trainer, cb.run_dir, figures, epoch)
    end = time.perf_counter()
    return {"compute_s": middle - start, "render_write_s": end - middle, "figures": len(figures)}


def run_overrides(args: argparse.Namespace, out_dir: Path) -> list[str]:
    """Config overrides of the benchmark run (PEMS08-shaped synthetic data, analysis callbacks at defaults)."""
    return [
        "model=stm3",
        "data=synthetic",
        f"data.synthetic.num_nodes={args.nodes}",
        f"data.synthetic.num_steps={args.steps}",
        f"data.input_len={args.input_len}",
        f"data.horizon={args.horizon}",
        f"data.batch_size={args.batch_size}",
        f"data.eval_batch_size={args.batch_size}",
        "callbacks.progress_bar=none",
        f"trainer.max_epochs={args.epochs}",
        f"trainer.limit_train_batches={args.train_batches}",
        f"trainer.limit_val_batches={args.val_batches}",
        "trainer.num_sanity_val_steps=0",
        f"paths.output_dir={out_dir}",
        *args.overrides,
    ]


def measure(args: argparse.Namespace) -> dict[str, Any]:
    """Run the truncated training and the post-training evaluations; return every timing."""
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = Path(tmp)
        cfg = compose(run_overrides(args, run_dir))
        L.seed_everything(cfg.seed)
        dm = build_datamodule(cfg)
        module = build_forecaster(cfg, dm.info)
        analysis = build_analysis_callbacks(cfg, run_dir, module.model)
        hook_s: dict[str, list[float]] = {cb.family: [] for cb in analysis}
        for cb in analysis:
            time_hook(cb, hook_s[cb.family])
        timer = StepTimer()
        trainer = build_trainer(
            cfg, run_dir, [CSVLogger(str(run_dir), name="csv", version="")], [*analysis, timer]
        )
        trainer.fit(module, datamodule=dm)
        post = {cb.family: evaluation_seconds(cb, trainer, module) for cb in analysis}
        windows = dm.window_counts
    return {
        "hook_s": hook_s,
        "post_training_evaluation": post,
        "epoch_s": timer.epochs,
        "train_batch_s": timer.train_batches,
        "val_batch_s": timer.val_batches,
        "windows": windows,
        "model": OmegaConf.to_container(cfg.model, resolve=True),
    }


def summarize(raw: dict[str, Any], args: argparse.Namespace) -> dict[str, Any]:
    """Per-epoch overhead (measured), overhead on a full PEMS08-sized epoch (extrapolated) and the break-even epoch."""
    hooks = raw["hook_s"]
    per_epoch_hook = [sum(values[e] for values in hooks.values()) for e in range(len(raw["epoch_s"]))]
    train_batch = statistics.median(raw["train_batch_s"])
    val_batch = statistics.median(raw["val_batch_s"])
    full_train = raw["windows"]["train"] // args.batch_size
    full_val = math.ceil(raw["windows"]["val"] / args.batch_size)
    full_epoch = full_train * train_batch + full_val * val_batch
    steady_hook = per_epoch_hook[-1]
    render = sum(row["render_write_s"] for row in raw["post_training_evaluation"].values())
    return {
        "measured_epochs": [
            {
                "epoch": e,
                "epoch_s": epoch_s,
                "callbacks_s": hook,
                "callbacks_by_family_s": {name: values[e] for name, values in hooks.items()},
                "overhead_pct": 100 * hook / (epoch_s - hook),
            }
            for e, (epoch_s, hook) in enumerate(zip(raw["epoch_s"], per_epoch_hook, strict=True))
        ],
        "full_epoch_estimate": {
            "train_batches": full_train,
            "val_batches": full_val,
            "median_train_batch_s": train_batch,
            "median_val_batch_s": val_batch,
            "epoch_s": full_epoch,
            "callbacks_s": steady_hook,
            "overhead_pct": 100 * steady_hook / full_epoch,
        },
        "break_even_epoch_s": steady_hook / (TARGET_PCT / 100),
        # Rendering + writing the figures costs the same on any accelerator; on a GPU, where the diagnostic passes
        # take milliseconds, this bounds the shortest epoch that keeps the callbacks within the target.
        "figures_render_write_s": render,
        "break_even_epoch_figures_only_s": render / (TARGET_PCT / 100),
        "target_pct": TARGET_PCT,
        "meets_target": 100 * steady_hook / full_epoch <= TARGET_PCT,
    }


def table(summary: dict[str, Any], raw: dict[str, Any]) -> str:
    """Markdown table of the measured epochs, the extrapolated full epoch and the figure split."""
    lines = [
        "| epoch | epoch time (s) | callbacks (s) | overhead vs rest of epoch |",
        "|---|---|---|---|",
    ]
    for row in summary["measured_epochs"]:
        lines.append(
            f"| {row['epoch']} (truncated) | {row['epoch_s']:.1f} | {row['callbacks_s']:.2f} | {row['overhead_pct']:.1f}% |"
        )
    full = summary["full_epoch_estimate"]
    lines.append(
        f"| full epoch ({full['train_batches']} + {full['val_batches']} batches, extrapolated) | "
        f"{full['epoch_s']:.0f} | {full['callbacks_s']:.2f} | {full['overhead_pct']:.2f}% |"
    )
    lines += [
        "",
        "| callback | passes + metrics + figure objects (s) | render + write figures (s) | figures |",
        "|---|---|---|---|",
    ]
    for name, row in raw["post_training_evaluation"].items():
        lines.append(f"| {name} | {row['compute_s']:.2f} | {row['render_write_s']:.2f} | {row['figures']} |")
    lines.append(
        f"\nTarget <= {summary['target_pct']:.0f}% of epoch time: "
        f"{'met' if summary['meets_target'] else 'NOT met'} on a full epoch; "
        f"met for any epoch longer than {summary['break_even_epoch_s']:.0f} s on this device; the figures alone "
        f"(accelerator-independent) need epochs longer than {summary['break_even_epoch_figures_only_s']:.0f} s."
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--nodes", type=int, default=170)
    parser.add_argument("--steps", type=int, default=17856, help="series length (PEMS08: 17856)")
    parser.add_argument("--input-len", type=int, default=96)
    parser.add_argument("--horizon", type=int, default=96)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-batches", type=int, default=2, help="training batches per truncated epoch")
    parser.add_argument("--val-batches", type=int, default=1, help="validation batches per truncated epoch")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("overrides", nargs="*", help="extra config overrides, e.g. trainer.accelerator=gpu")
    args = parser.parse_args(argv)
    raw = measure(args)
    summary = summarize(raw, args)
    print(table(summary, raw))
    result = {
        "benchmark": "instrumentation",
        "setup": {
            "device": torch.cuda.get_device_name()
            if torch.cuda.is_available()
            else platform.processor() or "cpu",
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        },
        "summary": summary,
        "raw": raw,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
