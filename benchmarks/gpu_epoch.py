"""A faithful PEMS08 96 -> 96 training epoch on a GPU: ``kernel_backend=chunked`` vs the PyTorch loop, fp32 and bf16.

For each backend (``chunked``; ``torch``, which on CUDA is the PyTorch loop over L) and precision (fp32; bf16
autocast, the scan recurrence staying fp32), a freshly seeded faithful STM3 (release PEMSD8 configuration) runs
training steps at batch 64 (forward, L1 loss in original units + aux losses, backward, AdamW) on PEMS08 training
batches from the project's data module (random PEMS08-shaped batches when ``--data-dir``/``$STM3_DATA_DIR`` has
no PEMS08). Warm-up steps first, then ``--repeats`` timed steps; host-to-device copy and ``next(loader)`` are timed
separately as data time. ``epoch_seconds`` = 164 steps (10523 windows // 64) x (median step + median data time).
The first fp32 step of each backend is also a parity check (same weights, same batch, same RNG state).

On CPU (``--device cpu``) it additionally times the selective scan alone, forward + backward at STM3's sizes,
``chunked`` against the compiled CPU kernels (``torch``), and reports their ratio (issue target: at most 2).

    python -m benchmarks.gpu_epoch                      # on a GPU machine, ~1-3 minutes
    python -m benchmarks.gpu_epoch --device cpu --quick  # seconds: tiny model, synthetic data (smoke test)

Prints a table and writes JSON (``--out``, default ``benchmarks/results/gpu_epoch.json``).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import platform
import statistics
import sys
from collections.abc import Callable, Iterator
from contextlib import nullcontext
from datetime import datetime, timezone
from pathlib import Path

import torch
from torch import Tensor

from benchmarks.common import (
    PEMS08_LEN,
    RESULTS_DIR,
    Timing,
    TrainStep,
    build_stm3,
    format_table,
    section,
    timed,
    write_json,
)
from benchmarks.train_step import Batches, epoch_estimate, load_batches
from stm3_lightning.models.stm3.config import STM3Config

BACKENDS = ("chunked", "torch")  # on CUDA, ``torch`` is the PyTorch loop over L (the peer to beat)
PRECISIONS = ("fp32", "bf16")
TARGET_EPOCH_S = 15.0  # chunked fp32 on one H200-class GPU
TARGET_CPU_RATIO = 2.0  # chunked / CPU kernels, selective scan forward + backward on CPU
PARITY_RTOL = 1e-4  # first-step loss, chunked vs loop (fp32)
QUICK_MODEL = {"hidden_dim": 2, "node_emb_dim": 4, "d_state": 4}  # --quick: a small STM3
# The model's kernel switch: ``kernel_backend`` (``scan_backend`` is its older name and alias).
BACKEND_KEY = next(
    f.name for f in dataclasses.fields(STM3Config) if f.name in ("kernel_backend", "scan_backend")
)


# ------------------------------------------------------------------------------------------------- machine
def device_info(device: torch.device) -> dict[str, object]:
    """What makes the numbers interpretable: the device (GPU name, memory), versions, date."""
    info: dict[str, object] = {
        "device": str(device),
        "python": sys.version.split()[0],
        "torch": torch.__version__,
        "cuda": torch.version.cuda,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info |= {
            "gpu": props.name,
            "gpu_memory_gib": props.total_memory / 2**30,
            "gpu_capability": f"{props.major}.{props.minor}",
            "cudnn": torch.backends.cudnn.version(),
            "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        }
    else:
        from stm3_lightning.run.machine import cpu_name

        info["cpu"] = cpu_name()
    return info


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ------------------------------------------------------------------------------------------------ training
def run_step(step: TrainStep, x: Tensor, y: Tensor, bf16: bool) -> float:
    """One training step (autocast around forward + loss only, as Lightning's bf16-mixed does); returns the loss."""
    step.opt.zero_grad(set_to_none=True)
    device_type = x.device.type
    with torch.autocast(device_type, dtype=torch.bfloat16) if bf16 else nullcontext():
        loss = step.loss(x, y)
    loss.backward()
    step.opt.step()
    return float(loss.detach())  # waits for the device


def device_batches(
    batches: Batches, batch: int, seed: int, device: torch.device
) -> Iterator[tuple[Tensor, Tensor]]:
    """(x: [batch, L, N, C], y: [batch, H, N, 1]) on ``device``."""
    for x, y in batches.iterator(batch, seed):
        yield x.to(device, non_blocking=True), y.to(device, non_blocking=True)


def time_training(
    backend: str, precision: str, batches: Batches, args: argparse.Namespace, device: torch.device
) -> dict[str, object]:
    """Warm-up + ``repeats`` timed steps of a freshly seeded STM3 with ``backend`` at ``precision``."""
    model = build_stm3(batches.info, backend, args.seed, **args.model).to(device)
    mean, std = (v.to(device) if isinstance(v, Tensor) else v for v in (batches.mean, batches.std))
    step = TrainStep(model, mean=mean, std=std)
    it = device_batches(batches, args.batch, args.seed, device)
    bf16 = precision == "bf16"

    def next_batch() -> tuple[Tensor, Tensor]:
        out = next(it)
        synchronize(device)
        return out

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    torch.manual_seed(args.seed)
    first_loss = run_step(step, *next_batch(), bf16)
    for _ in range(args.warmup - 1):
        run_step(step, *next_batch(), bf16)
    data, steps = Timing(), Timing()
    for _ in range(args.repeats):
        x, y = timed(next_batch, data)
        timed(lambda x=x, y=y: run_step(step, x, y, bf16), steps)
    result: dict[str, object] = {
        "backend": backend,
        "precision": precision,
        "batch": args.batch,
        "first_step_loss": first_loss,
        "step": steps.as_dict(),
        "data": data.as_dict(),
    }
    if device.type == "cuda":
        result["peak_gpu_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    result.update(epoch_estimate(result, batches.train_windows, args.batch))
    return result


def guarded(fn: Callable[[], dict[str, object]], label: dict[str, object]) -> dict[str, object]:
    """``fn()``, or ``label`` with the error when the device runs out of memory (the other runs still happen)."""
    try:
        return fn()
    except torch.cuda.OutOfMemoryError as exc:
        return {**label, "error": f"out of memory: {str(exc).splitlines()[0]}"}
    finally:
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


# ----------------------------------------------------------------------------------------- CPU scan ratio
def cpu_scan_ratio(batch_rows: list[int], length: int, repeats: int) -> dict[str, object]:
    """Selective scan forward + backward on CPU at STM3's sizes (d = 32, n = 16): chunked vs the CPU kernels."""
    from benchmarks.scan import scan_impls, scan_inputs, time_op
    from stm3_lightning.models.stm3.kernels.chunked import selective_scan_chunked

    impls = {"chunked": lambda x: selective_scan_chunked(*x), "kernel": scan_impls()["torch"]}
    rows = []
    for b in batch_rows:
        inputs = scan_inputs(b, length)
        times: dict[str, list[float]] = {name: [] for name in impls}
        for _ in range(repeats):  # interleaved, so both see the same machine load
            for name, fn in impls.items():
                run = time_op(lambda fn=fn, x=inputs: fn(x), inputs, 1, True)
                times[name].append(run["wall_s"])
        chunked, kern = (statistics.median(times[k]) for k in impls)
        rows.append({"b": b, "L": length, "chunked_s": chunked, "kernel_s": kern, "ratio": chunked / kern})
    worst = max(r["ratio"] for r in rows)
    return {"rows": rows, "worst_ratio": worst, "target": TARGET_CPU_RATIO, "met": worst <= TARGET_CPU_RATIO}


# ------------------------------------------------------------------------------------------------ reporting
def parity(runs: list[dict[str, object]]) -> dict[str, object] | None:
    """First fp32 step loss of chunked vs the loop (same weights, batch and RNG state)."""
    losses = {
        r["backend"]: r["first_step_loss"] for r in runs if r["precision"] == "fp32" and "error" not in r
    }
    if not {"chunked", "torch"} <= set(losses):
        return None
    rel = abs(losses["chunked"] - losses["torch"]) / max(abs(losses["torch"]), 1e-12)
    return {"losses": losses, "rel_diff": rel, "rtol": PARITY_RTOL, "ok": rel <= PARITY_RTOL}


def targets(runs: list[dict[str, object]], device: torch.device) -> dict[str, object]:
    epochs = {(r["backend"], r["precision"]): r["epoch_seconds"] for r in runs if "error" not in r}
    out: dict[str, object] = {"epoch_seconds_chunked_fp32": TARGET_EPOCH_S}
    fp32, bf16, loop = (epochs.get(k) for k in (("chunked", "fp32"), ("chunked", "bf16"), ("torch", "fp32")))
    if device.type == "cuda" and fp32 is not None:
        out["epoch_met"] = fp32 <= TARGET_EPOCH_S
    if fp32 is not None and bf16 is not None:
        out["bf16_faster"] = bf16 < fp32
    if fp32 is not None and loop is not None:
        out["chunked_speedup_vs_loop_fp32"] = loop / fp32
    return out


def table(runs: list[dict[str, object]]) -> str:
    rows = []
    for r in runs:
        if "error" in r:
            rows.append([r["backend"], r["precision"], None, None, None, None, r["error"]])
            continue
        rows.append(
            [
                r["backend"],
                r["precision"],
                r["step"]["median_s"],
                r["data"]["median_s"],
                r["epoch_seconds"],
                r.get("peak_gpu_memory_gib"),
                "",
            ]
        )
    header = ["backend", "precision", "step s", "data s", "epoch s", "peak GiB", "note"]
    return format_table(rows, header)


# ----------------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", help="cuda (default), cuda:N or cpu")
    parser.add_argument("--backends", default=",".join(BACKENDS), help="comma-separated kernel backends")
    parser.add_argument("--precisions", default=",".join(PRECISIONS), help="comma-separated: fp32, bf16")
    parser.add_argument(
        "--batch", type=int, default=64, help="training batch (the epoch is 10523 // batch steps)"
    )
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps first (>= 1)")
    parser.add_argument("--repeats", type=int, default=5, help="timed steps (median quoted)")
    parser.add_argument("--data-dir", default=os.environ.get("STM3_DATA_DIR"), help="folder holding PEMS08/")
    parser.add_argument("--cpu-ratio-rows", default="680,2720", help="scan batch rows of the CPU ratio")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--gpu-tests", default=None, help="summary line of the gpu-marked tests (gpu_check.sh)"
    )
    parser.add_argument("--gpu-tests-exit-code", type=int, default=None, help="their pytest exit code")
    parser.add_argument("--quick", action="store_true", help="tiny model and synthetic data (smoke test)")
    parser.add_argument("--out", default=str(RESULTS_DIR / "gpu_epoch.json"))
    args = parser.parse_args(argv)
    args.model = {}
    if args.quick:
        args.batch, args.warmup, args.repeats, args.cpu_ratio_rows = 4, 1, 1, "34"
        args.model = QUICK_MODEL
    args.backends, args.precisions = args.backends.split(","), args.precisions.split(",")
    unknown = set(args.precisions) - set(PRECISIONS)
    if unknown:
        parser.error(f"unknown precision {sorted(unknown)[0]!r}; choose from {', '.join(PRECISIONS)}.")
    if args.warmup < 1 or args.repeats < 1:
        parser.error("--warmup and --repeats must be at least 1.")
    return args


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(
            "No CUDA GPU is visible (torch.cuda.is_available() is False); run on a GPU machine or pass --device cpu."
        )
    return device


def main(argv: list[str] | None = None) -> dict[str, object]:
    args = parse_args(argv)
    device = resolve_device(args.device)
    meta = device_info(device)
    print(f"{meta.get('gpu') or meta.get('cpu')}: torch {meta['torch']}, CUDA {meta['cuda']}")
    if args.quick:
        data = ["data=synthetic", "data.input_len=16", "data.horizon=16", "data.synthetic.num_nodes=8"]
        data.append("data.synthetic.num_steps=400")
    else:
        data = ["data=pems08", f"data.input_len={PEMS08_LEN}", f"data.horizon={PEMS08_LEN}"]
    with section("data"):
        batches = load_batches(data, args.data_dir, args.batch)
        info = batches.info
        print(f"   {batches.source}: N={info.num_nodes}, L={info.input_len}, H={info.horizon}")
    runs = []
    for backend in args.backends:
        for precision in args.precisions:
            with section(f"{BACKEND_KEY}={backend}, {precision}, batch {args.batch} on {device}"):
                label = {"backend": backend, "precision": precision, "batch": args.batch}
                run = guarded(
                    lambda b=backend, p=precision: time_training(b, p, batches, args, device), label
                )
                runs.append(run)
                if "error" in run:
                    print(f"   {run['error']}")
                else:
                    print(f"   step {run['step']['median_s']:.4f} s -> epoch {run['epoch_seconds']:.1f} s")
    result: dict[str, object] = {
        "meta": meta,
        "config": {**vars(args), "backend_key": BACKEND_KEY},
        "data_source": batches.source,
        "train_windows": batches.train_windows,
        "runs": runs,
        "parity": parity(runs),
        "targets": targets(runs, device),
    }
    if args.gpu_tests is not None or args.gpu_tests_exit_code is not None:
        result["gpu_tests"] = {"summary": args.gpu_tests, "exit_code": args.gpu_tests_exit_code}
    if device.type == "cpu":
        with section("selective scan forward + backward on CPU: chunked vs the CPU kernels"):
            rows = [int(b) for b in args.cpu_ratio_rows.split(",")]
            result["cpu_scan_ratio"] = ratio = cpu_scan_ratio(rows, info.input_len, args.repeats)
            for r in ratio["rows"]:
                print(
                    f"   b={r['b']}, L={r['L']}: chunked {r['chunked_s']:.4f} s / kernel {r['kernel_s']:.4f} s = {r['ratio']:.2f}x"
                )
    print()
    print(table(runs))
    if result["parity"] is not None:
        p = result["parity"]
        print(
            f"first-step loss, chunked vs loop: rel. diff {p['rel_diff']:.2e} -> {'ok' if p['ok'] else 'MISMATCH'}"
        )
    print(f"targets: {result['targets']}")
    print(f"wrote {write_json(result, Path(args.out))}")
    if result["parity"] is not None and not result["parity"]["ok"]:
        raise SystemExit(
            "The chunked and loop backends disagree beyond tolerance (see 'parity' in the JSON)."
        )
    return result


if __name__ == "__main__":
    main()
