"""Training-step benchmark of faithful STM3 on PEMSD8 96 -> 96 (paper configuration) and the epoch it implies.

1. Batch 4, ``kernel_backend=torch`` vs ``ref`` (mamba-ssm's reference algorithm) from identical weights: the warm-up
   step of both checks that predictions, auxiliary losses (1e-5) and gradients agree, then steps are timed
   interleaved (torch, ref, torch, ...) so both see the same machine load; ``speedup_vs_ref`` is the ratio of the
   medians.
2. Batch 64 (the training batch), ``torch``, on real PEMS08 training batches from the project's data module: the
   data-loading time (``next(loader)``: one gather per batch) and the step time are timed separately.
   ``epoch_seconds`` = 164 steps (10523 windows, drop_last) x (median step + median data time).
3. ETTh1 96 -> 96 (``experiment=reproduce/etth1``: N=7, D=12, d_e=8, 1 layer, 132 steps of 64): step + data time
   on its real training batches; ``etth1_epoch_seconds`` (``--skip-etth1`` leaves it out).
4. Options: ``--compile`` (``torch.compile`` of the training step, compile time and break-even epochs:
   benchmarks/compilation.py); ``--bf16`` (step time under bf16 autocast vs fp32) and ``--bf16-train`` (test MAE
   after a short PEMS08 12 -> 12 training with ``trainer.precision=bf16-mixed`` vs fp32: benchmarks/precision.py).

    python -m benchmarks.train_step                  # ~3 minutes on 2 quiet cores (the ref steps dominate)
    python -m benchmarks.train_step --compile --bf16 --bf16-train   # everything (what make bench runs)
    python -m benchmarks.train_step --skip-ref       # torch only
    python -m benchmarks.train_step --quick          # tiny model + synthetic data, seconds (CI smoke test)

PEMS08 and ETTh1 are read from ``--data-dir`` (default ``$STM3_DATA_DIR``, else ``./data``); without them the steps run
on random tensors of the same shapes and the JSON says so (``--bf16-train`` needs PEMS08).
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks import compilation, precision
from benchmarks.common import (
    PEMS08_LEN,
    PEMS08_NODES,
    PEMS08_TRAIN_WINDOWS,
    RESULTS_DIR,
    PeakMemory,
    Timing,
    TrainStep,
    apply_threads,
    machine_info,
    memory_shortfall,
    random_batch,
    section,
    stm3_info,
    timed,
    write_json,
)
from benchmarks.parity import torch_vs_ref
from benchmarks.train_step_report import TARGET_EPOCH_S, TARGET_ETTH1_EPOCH_S, TARGET_SPEEDUP, print_summary
from stm3_lightning.types import DataInfo

# ETTh1 96 -> 96 (experiment=reproduce/etth1): 7 series, Informer borders, 8640 - 96 - 96 + 1 training windows.
ETTH1_NODES, ETTH1_TRAIN_WINDOWS = 7, 8449


# ----------------------------------------------------------------------------------------------- training
@dataclass
class Batches:
    """Where training batches come from: the PEMS08 data module's train loader, or random tensors."""

    source: str
    train_windows: int
    loader: object | None
    info: DataInfo
    mean: Tensor | float = 0.0
    std: Tensor | float = 1.0
    model_cfg: object | None = None  # the composed model config (``cfg.model``)

    def iterator(self, batch: int, seed: int) -> Iterator[tuple[Tensor, Tensor]]:
        """Endless (x: [batch, L, N, C], y: [batch, H, N, 1]) pairs; loader batches are cut to ``batch`` when the
        memory guard chose a smaller batch than the loader's."""
        if self.loader is not None:
            while True:
                for x, y in self.loader:
                    yield x[:batch], y[:batch]
        x, y = random_batch(batch, self.info, seed=seed)
        while True:
            yield x, y


def load_batches(
    data: list[str],
    data_dir: str | None,
    batch: int,
    fallback_nodes: int = PEMS08_NODES,
    fallback_windows: int = PEMS08_TRAIN_WINDOWS,
) -> Batches:
    """The configured data module's training loader (``data``: compose overrides), or random batches of the same
    shape (``fallback_nodes`` nodes, ``fallback_windows`` training windows) when the data is not there.

    The loss is in original units (the scaler's mean/std) where ``data.real_value`` is set, as training does it.
    """
    from stm3_lightning.config.compose import compose
    from stm3_lightning.data.datamodule import SpatioTemporalDataModule

    overrides = [*data, "data.download=false", f"data.batch_size={batch}"]
    if data_dir:
        overrides.append(f"paths.data_dir={data_dir}")
    cfg = compose(overrides)
    dm = SpatioTemporalDataModule(cfg.data, cfg.paths.data_dir)
    try:
        dm.setup()
    except (OSError, ValueError) as exc:  # DataError is a ValueError; missing files an OSError
        reason = str(exc).splitlines()[0]
        print(f"   data unavailable ({reason}); timing random {cfg.data.name}-shaped batches instead")
        info = stm3_info(fallback_nodes, cfg.data.input_len, cfg.data.horizon)
        return Batches(f"random (no data: {reason})", fallback_windows, None, info, model_cfg=cfg.model)
    mean, std = dm.scaler.tensors() if cfg.data.real_value else (0.0, 1.0)
    loader = dm.train_dataloader()
    return Batches(
        f"{cfg.data.name} train loader", dm.window_counts["train"], loader, dm.info, mean, std, cfg.model
    )


def training_batch(
    model: nn.Module, batches: Batches, batch: int, repeats: int, seed: int
) -> dict[str, object]:
    """Warm-up + ``repeats`` steps at ``batch`` on loader batches: data time and step time separately."""
    step = TrainStep(model, mean=batches.mean, std=batches.std)
    it = batches.iterator(batch, seed)
    data, steps = Timing(), Timing()
    with PeakMemory() as mem:
        step(*next(it))
        for _ in range(repeats):
            x, y = timed(lambda: next(it), data)
            timed(lambda x=x, y=y: step(x, y), steps)
    return {
        "batch": batch,
        "data_source": batches.source,
        "step": steps.as_dict(),
        "data": data.as_dict(),
        "samples_per_s": batch / steps.median,
        **mem.as_dict(),
    }


def fitting_batch(target: int, need_per_sample_mib: float) -> tuple[int, str | None]:
    """``target`` if it fits in available memory, else the largest power of two below it that does."""
    reason = memory_shortfall(need_per_sample_mib * target, f"A training step at batch {target}")
    if reason is None:
        return target, None
    batch = target
    while batch > 1 and memory_shortfall(need_per_sample_mib * batch, "") is not None:
        batch //= 2
    return batch, reason


def epoch_estimate(result: dict[str, object], train_windows: int, epoch_batch: int) -> dict[str, object]:
    """Epoch seconds at ``epoch_batch`` (drop_last) from the measured per-step (or per-window) times."""
    steps = train_windows // epoch_batch
    batch = int(result["batch"])
    per_step = result["step"]["median_s"] + result["data"]["median_s"]
    seconds = steps * per_step * epoch_batch / batch
    basis = f"{steps} steps x measured batch-{batch} step + data time"
    if batch != epoch_batch:
        basis += f", scaled per window to batch {epoch_batch} (memory-limited)"
    return {
        "epoch_seconds": seconds,
        "epoch_steps": steps,
        "train_windows": train_windows,
        "epoch_basis": basis,
    }


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=3, help="timed torch steps per measurement (median quoted)"
    )
    parser.add_argument("--ref-repeats", type=int, default=2, help="timed ref steps (each ~30-90 s)")
    parser.add_argument("--skip-ref", action="store_true", help="do not run the slow ref backend")
    parser.add_argument("--small-batch", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="training batch of the epoch estimate")
    parser.add_argument(
        "--data-dir", default=os.environ.get("STM3_DATA_DIR"), help="folder holding the datasets"
    )
    parser.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader worker processes (data.num_workers)"
    )
    parser.add_argument("--pin-memory", action="store_true", help="pinned host memory (data.pin_memory)")
    parser.add_argument("--skip-etth1", action="store_true", help="do not time the ETTh1 96->96 step")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also measure torch.compile of the training step (compile time included; minutes)",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also time the training step under bf16 autocast vs fp32"
    )
    parser.add_argument(
        "--bf16-train",
        action="store_true",
        help="also train PEMS08 12->12 briefly in fp32 and bf16-mixed (same seed) and compare the test MAE",
    )
    parser.add_argument("--bf16-epochs", type=int, default=2, help="epochs of the --bf16-train comparison")
    parser.add_argument(
        "--bf16-batches", type=int, default=20, help="train/val/test batches per epoch of --bf16-train"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model and synthetic data (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_step.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.ref_repeats, args.small_batch, args.batch = 2, 1, 2, 4
        args.bf16_epochs, args.bf16_batches = 1, 2
    if args.skip_ref:
        args.ref_repeats = 0
    return args


QUICK_DATA = [
    "data=synthetic",
    "data.input_len=16",
    "data.horizon=16",
    "data.synthetic.num_nodes=8",
    "data.synthetic.num_steps=400",
]
# The ETTh1 experiment's model (experiment=reproduce/etth1), for --quick on synthetic data.
ETTH1_MODEL = [
    "model.num_layers=1",
    "model.hidden_dim=12",
    "model.node_emb_dim=8",
    "model.contrast_loss_weight=0.3",
]


def data_overrides(args: argparse.Namespace) -> dict[str, list[str]]:
    """Compose overrides of each measured setting: PEMS08 96->96, ETTh1 96->96 and the PEMS08 12->12 bf16 run."""
    loader = [f"data.num_workers={args.num_workers}", f"data.pin_memory={str(args.pin_memory).lower()}"]
    if args.quick:
        return {"pems08": QUICK_DATA + loader, "etth1": QUICK_DATA + ETTH1_MODEL + loader, "bf16": QUICK_DATA}
    return {
        "pems08": ["data=pems08", f"data.input_len={PEMS08_LEN}", f"data.horizon={PEMS08_LEN}", *loader],
        "etth1": ["experiment=reproduce/etth1", *loader],
        "bf16": ["data=pems08", "data.input_len=12", "data.horizon=12", "data.batch_size=64"],
    }


def etth1_epoch(args: argparse.Namespace, data: list[str]) -> dict[str, object]:
    """The ETTh1 96->96 experiment's model and training batches: step + data time and the epoch they imply."""
    from stm3_lightning.models.registry import build_model

    batches = load_batches(data, args.data_dir, args.batch, ETTH1_NODES, ETTH1_TRAIN_WINDOWS)
    torch.manual_seed(args.seed)
    model = build_model(batches.model_cfg, batches.info)
    big = training_batch(model, batches, args.batch, args.repeats, args.seed)
    print(
        f"   {batches.source}: step {big['step']['median_s']:.3f} s, peak RSS {big['peak_rss_mib'] or 0:.0f} MiB"
    )
    return {"training_batch": big, **epoch_estimate(big, batches.train_windows, args.batch)}


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    apply_threads(args.threads)
    meta = machine_info()
    print(
        f"{meta['cpu']}, {meta['torch_threads']} threads, torch {meta['torch']}, load {meta['load_avg_at_start']}"
    )
    data = data_overrides(args)
    with section("data"):
        batches = load_batches(data["pems08"], args.data_dir, args.batch)
        info = batches.info
        print(
            f"   {batches.source}: N={info.num_nodes}, L={info.input_len}, H={info.horizon}, "
            f"{batches.train_windows} training windows"
        )
    result: dict[str, object] = {"meta": meta, "config": {**vars(args), "out": str(args.out)}}
    title = "torch vs ref" if args.ref_repeats else "torch"
    with section(f"{title}, batch {args.small_batch} (warm-up step checks parity, then interleaved timing)"):
        small = torch_vs_ref(info, args.small_batch, args.repeats, args.ref_repeats, args.seed)
        model = small.pop("model")
        if "parity" in small:
            p = small["parity"]
            print(
                f"   parity: pred {p['max_abs_pred_diff']:.2e}, aux {p['max_abs_aux_diff']:.2e}, "
                f"grad (rel) {p['max_rel_grad_diff']:.2e} -> {'ok' if p['ok'] else 'MISMATCH'}"
            )
    result["small_batch"] = small
    result["speedup_vs_ref"] = small.get("speedup_vs_ref")
    per_sample = (small["first_step_memory"]["peak_extra_mib"] or 0.0) / args.small_batch
    batch, shortfall = fitting_batch(args.batch, per_sample)
    with section(f"training batch {batch}, kernel_backend=torch, {batches.source}"):
        if shortfall:
            print(f"   {shortfall} Measuring batch {batch} instead.")
        big = training_batch(model, batches, batch, args.repeats, args.seed)
        print(
            f"   step {big['step']['median_s']:.3f} s, data {big['data']['median_s'] * 1e3:.1f} ms per batch, "
            f"peak RSS {big['peak_rss_mib'] or 0:.0f} MiB"
        )
    result["training_batch"] = big
    result.update(epoch_estimate(big, batches.train_windows, args.batch))
    result["memory_note"] = shortfall
    if not args.skip_etth1:
        with section(f"ETTh1 96->96 (experiment=reproduce/etth1), batch {args.batch}"):
            result["etth1"] = etth1 = etth1_epoch(args, data["etth1"])
        result["etth1_epoch_seconds"] = etth1["epoch_seconds"]
    if args.compile:
        with section(f"torch.compile of the training step, batch {batch} (compile time included)"):
            x, y = next(batches.iterator(batch, args.seed))
            result["compile"] = comp = compilation.compiled_step(
                model, x, y, args.repeats, args.seed, result["epoch_steps"], batches.mean, batches.std
            )
            print(f"   {compilation.describe(comp)}")
    if args.bf16 or args.bf16_train:
        result["bf16"] = bf16 = {}
    if args.bf16:
        with section(f"bf16 autocast vs fp32 step, batch {batch}"):
            x, y = next(batches.iterator(batch, args.seed))
            bf16["step"] = step16 = precision.bf16_step(
                model, x, y, args.repeats, args.seed, batches.mean, batches.std
            )
            print(
                f"   bf16 {step16['speedup_vs_fp32']:.2f}x vs fp32, loss rel diff {step16['loss_rel_diff']:.1e}"
            )
    if args.bf16_train:
        with section(f"bf16-mixed vs fp32 training, {args.bf16_epochs} epochs x {args.bf16_batches} batches"):
            bf16["training"] = precision.bf16_training(
                data["bf16"], args.bf16_epochs, args.bf16_batches, args.data_dir
            )
    result["targets"] = {
        "speedup_vs_ref": TARGET_SPEEDUP,
        "epoch_seconds": TARGET_EPOCH_S,
        "etth1_epoch_seconds": TARGET_ETTH1_EPOCH_S,
        "speedup_met": None
        if result["speedup_vs_ref"] is None
        else result["speedup_vs_ref"] >= TARGET_SPEEDUP,
        "epoch_met": result["epoch_seconds"] <= TARGET_EPOCH_S,
        "etth1_epoch_met": None
        if result.get("etth1_epoch_seconds") is None
        else result["etth1_epoch_seconds"] <= TARGET_ETTH1_EPOCH_S,
    }
    meta["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print_summary(result)
    print(f"wrote {write_json(result, args.out)}")
    if "parity" in small and not small["parity"]["ok"]:
        raise SystemExit("torch and ref backends disagree beyond tolerance (see 'parity' in the JSON).")
    return result


if __name__ == "__main__":
    main()
