"""Training-step benchmark of faithful STM3 on PEMSD8 96 -> 96 (paper configuration) and the epoch it implies.

1. Batch 4, ``kernel_backend=torch`` vs ``ref`` (mamba-ssm's reference algorithm) from identical weights: the warm-up
   step of both checks that predictions, auxiliary losses (1e-5) and gradients agree, then steps are timed
   interleaved (torch, ref, torch, ...) so both see the same machine load; ``speedup_vs_ref`` is the ratio of the
   medians.
2. Batch 64 (the training batch), ``torch``, on real PEMS08 training batches from the project's data module: the
   data-loading time (``next(loader)``: one gather per batch) and the step time are timed separately.
   ``epoch_seconds`` = 164 steps (10523 windows, drop_last) x (median step + median data time).
3. Optional: ``torch.compile`` of the model (``--compile``), kept only if faster and equal to eager within 1e-5;
   bf16 autocast (``--bf16``) at the training batch, with its loss deviation from fp32.

    python -m benchmarks.train_step                  # ~3-5 minutes on 2 quiet cores (the ref steps dominate)
    python -m benchmarks.train_step --repeats 5 --ref-repeats 3 --compile --bf16   # everything, ~8 minutes
    python -m benchmarks.train_step --skip-ref       # torch only
    python -m benchmarks.train_step --quick          # tiny model + synthetic data, seconds (CI smoke test)

PEMS08 is read from ``--data-dir`` (default ``$STM3_DATA_DIR``, else ``./data``); without it the batch-64 step runs
on random tensors of the same shape and the JSON says so.
"""

from __future__ import annotations

import argparse
import copy
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from benchmarks.common import (
    PEMS08_LEN,
    PEMS08_NODES,
    PEMS08_TRAIN_WINDOWS,
    RESULTS_DIR,
    PeakMemory,
    Timing,
    TrainStep,
    apply_threads,
    format_table,
    machine_info,
    measure,
    memory_shortfall,
    random_batch,
    section,
    stm3_info,
    timed,
    write_json,
)
from benchmarks.parity import compiled_step, torch_vs_ref
from stm3_lightning.types import DataInfo

TARGET_SPEEDUP, TARGET_EPOCH_S = 50.0, 600.0


@dataclass
class Batches:
    """Where training batches come from: the PEMS08 data module's train loader, or random tensors."""

    source: str
    train_windows: int
    loader: object | None
    info: DataInfo
    mean: Tensor | float = 0.0
    std: Tensor | float = 1.0

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


def load_batches(data: list[str], data_dir: str | None, batch: int) -> Batches:
    """The configured data module's training loader (``data``: compose overrides), or random PEMS08-shaped data."""
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
        print(f"   data unavailable ({reason}); timing random PEMS08-shaped batches instead")
        info = stm3_info(PEMS08_NODES, cfg.data.input_len, cfg.data.horizon)
        return Batches(f"random (no data: {reason})", PEMS08_TRAIN_WINDOWS, None, info)
    mean, std = dm.scaler.tensors()
    loader = dm.train_dataloader()
    return Batches(f"{cfg.data.name} train loader", dm.window_counts["train"], loader, dm.info, mean, std)


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


# --------------------------------------------------------------------------------------------------- options
def bf16_step(model: nn.Module, batches: Batches, batch: int, repeats: int, seed: int) -> dict[str, object]:
    """The training step under ``torch.autocast("cpu", bfloat16)`` vs fp32 (same weights and batch)."""
    x, y = next(batches.iterator(batch, seed))
    fp32 = TrainStep(copy.deepcopy(model), mean=batches.mean, std=batches.std)
    bf16 = TrainStep(copy.deepcopy(model), mean=batches.mean, std=batches.std)

    def run_bf16() -> float:
        with torch.autocast("cpu", dtype=torch.bfloat16):
            return bf16(x, y)

    with torch.no_grad():
        torch.manual_seed(seed)
        loss32 = float(fp32.loss(x, y))
        torch.manual_seed(seed)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss16 = float(bf16.loss(x, y))
    t16 = measure(run_bf16, repeats, warmup=1)
    t32 = measure(lambda: fp32(x, y), repeats, warmup=1)
    return {
        "batch": batch,
        "bf16": t16.as_dict(),
        "fp32": t32.as_dict(),
        "speedup_vs_fp32": t32.median / t16.median,
        "loss_fp32": loss32,
        "loss_bf16": loss16,
        "loss_rel_diff": abs(loss16 - loss32) / max(abs(loss32), 1e-12),
    }


# ------------------------------------------------------------------------------------------------ reporting
def summary_rows(result: dict[str, object]) -> list[list[object]]:
    rows: list[list[object]] = []
    small = result["small_batch"]
    for backend in ("torch", "ref"):
        if backend in small:
            t = small[backend]
            rows.append(
                [
                    f"train step, kernel_backend={backend}",
                    small["batch"],
                    t["median_s"],
                    t["min_s"],
                    t["repeats"],
                ]
            )
    big = result["training_batch"]
    if big:
        rows.append(
            [
                "train step, kernel_backend=torch",
                big["batch"],
                big["step"]["median_s"],
                big["step"]["min_s"],
                big["step"]["repeats"],
            ]
        )
        rows.append(
            [
                "data loading (next(loader))",
                big["batch"],
                big["data"]["median_s"],
                big["data"]["min_s"],
                big["data"]["repeats"],
            ]
        )
    for key, label in (("compile", "compiled"), ("bf16", "bf16")):
        opt = result.get(key)
        if opt and label in opt:
            rows.append(
                [
                    f"train step, {key}",
                    opt["batch"],
                    opt[label]["median_s"],
                    opt[label]["min_s"],
                    opt[label]["repeats"],
                ]
            )
    return rows


def print_summary(result: dict[str, object]) -> None:
    print()
    print(format_table(summary_rows(result), ["measurement", "batch", "median s", "min s", "repeats"]))
    speedup = result.get("speedup_vs_ref")
    if speedup is not None:
        print(
            f"speedup_vs_ref (batch {result['small_batch']['batch']}): {speedup:.1f}x (target {TARGET_SPEEDUP:.0f}x)"
        )
    if result.get("epoch_seconds") is not None:
        print(
            f"epoch_seconds: {result['epoch_seconds']:.0f} s = {result['epoch_seconds'] / 60:.1f} min "
            f"(target {TARGET_EPOCH_S / 60:.0f} min; {result['epoch_basis']})"
        )


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--repeats", type=int, default=5, help="timed torch steps per measurement (median quoted)"
    )
    parser.add_argument("--ref-repeats", type=int, default=3, help="timed ref steps (each ~20-60 s)")
    parser.add_argument("--skip-ref", action="store_true", help="do not run the slow ref backend")
    parser.add_argument("--small-batch", type=int, default=4)
    parser.add_argument("--batch", type=int, default=64, help="training batch of the epoch estimate")
    parser.add_argument("--data-dir", default=os.environ.get("STM3_DATA_DIR"), help="folder holding PEMS08/")
    parser.add_argument(
        "--num-workers", type=int, default=0, help="DataLoader worker processes (data.num_workers)"
    )
    parser.add_argument("--pin-memory", action="store_true", help="pinned host memory (data.pin_memory)")
    parser.add_argument(
        "--compile",
        action="store_true",
        help="also measure torch.compile of the static parts (~1 min to compile)",
    )
    parser.add_argument(
        "--bf16", action="store_true", help="also measure bf16 autocast at the training batch"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="tiny model and synthetic data (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "train_step.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.repeats, args.ref_repeats, args.small_batch, args.batch = 2, 1, 2, 4
    if args.skip_ref:
        args.ref_repeats = 0
    return args


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    apply_threads(args.threads)
    meta = machine_info()
    print(
        f"{meta['cpu']}, {meta['torch_threads']} threads, torch {meta['torch']}, load {meta['load_avg_at_start']}"
    )
    if args.quick:
        data = [
            "data=synthetic",
            "data.input_len=16",
            "data.horizon=16",
            "data.synthetic.num_nodes=8",
            "data.synthetic.num_steps=400",
        ]
    else:
        data = ["data=pems08", f"data.input_len={PEMS08_LEN}", f"data.horizon={PEMS08_LEN}"]
    data += [f"data.num_workers={args.num_workers}", f"data.pin_memory={str(args.pin_memory).lower()}"]
    with section("data"):
        batches = load_batches(data, args.data_dir, args.batch)
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
    with section(f"training batch {batch}, scan=torch, {batches.source}"):
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
    if args.compile:
        with section(f"torch.compile of embedding, AGCCN blocks and head, batch {batch}"):
            result["compile"] = comp = compiled_step(model, info, batch, args.repeats, args.seed)
            if "error" in comp:
                print(f"   torch.compile failed: {comp['error']}")
            else:
                print(
                    f"   {comp['speedup_vs_eager']:.2f}x vs eager, parity {'ok' if comp['parity']['ok'] else 'MISMATCH'}"
                    f" -> {'keep' if comp['kept'] else 'do not keep'}"
                )
    if args.bf16:
        with section(f"bf16 autocast, batch {batch}"):
            result["bf16"] = bf16_step(model, batches, batch, args.repeats, args.seed)
    result["targets"] = {
        "speedup_vs_ref": TARGET_SPEEDUP,
        "epoch_seconds": TARGET_EPOCH_S,
        "speedup_met": None
        if result["speedup_vs_ref"] is None
        else result["speedup_vs_ref"] >= TARGET_SPEEDUP,
        "epoch_met": result["epoch_seconds"] <= TARGET_EPOCH_S,
    }
    meta["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    print_summary(result)
    print(f"wrote {write_json(result, args.out)}")
    if "parity" in small and not small["parity"]["ok"]:
        raise SystemExit("torch and ref backends disagree beyond tolerance (see 'parity' in the JSON).")
    return result


if __name__ == "__main__":
    main()
