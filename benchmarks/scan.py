"""Selective scan and causal conv: ``ref`` vs ``torch`` (compiled CPU kernel, and its PyTorch fallback).

Times the forward (no grad) and forward + backward at STM3's sizes (d = 32 = d_inner, n = 16, b = 680 = batch 4 x
170 nodes, b = 2720 = one routed expert at batch 64), inputs laid out as STM3's Mamba expert produces them
(``[b, d, L]`` views of time-major storage). Prints a table and writes JSON.

    python -m benchmarks.scan                      # full grid, ~4-8 minutes on 2 cores (mostly ref)
    python -m benchmarks.scan --quick              # b = 680, L = 96 only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import torch

from stm3_lightning.models.stm3.kernels import scan
from stm3_lightning.models.stm3.kernels.causal_conv import (
    causal_conv1d,
    causal_conv1d_ref,
    cpu_conv_kernel_available,
)
from stm3_lightning.models.stm3.kernels.scan import (
    cpu_scan_kernel_available,
    selective_scan,
    selective_scan_ref,
)

D_INNER, D_STATE, CONV_K = 32, 16, 4
# The reference holds two [b, d, L, n] tensors and its backward costs ~ b*d*n*L^2 (one full-size zero gradient
# per step); the PyTorch loop keeps one [b, d, n] state per step for autograd. They are timed only below these
# sizes (elements) and reported as skipped above them.
REF_FWD_MAX = 150_000_000
REF_BWD_MAX = 4_000_000_000


def scan_inputs(b: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """[u, delta, A, B, C, D, z, delta_bias] at STM3-like scales, [b, d, L] views of [b, L, d] storage."""
    g = torch.Generator().manual_seed(seed)

    def time_major(channels: int, scale: float = 1.0) -> torch.Tensor:
        return (torch.randn(b, length, channels, generator=g) * scale).transpose(1, 2)

    u, delta, z = time_major(D_INNER), time_major(D_INNER, 0.5), time_major(D_INNER)
    B, C = time_major(D_STATE).tanh(), time_major(D_STATE).tanh()
    A = -torch.rand(D_INNER, D_STATE, generator=g) * 2 - 0.1
    D, bias = torch.rand(D_INNER, generator=g), torch.rand(D_INNER, generator=g)
    return [x.requires_grad_(True) for x in (u, delta, A, B, C, D, z, bias)]


def conv_inputs(b: int, length: int, seed: int = 0) -> list[torch.Tensor]:
    """[x, weight, bias]; x: [b, d, L] contiguous (the multiscale convs' output layout)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(b, D_INNER, length, generator=g)
    weight, bias = torch.randn(D_INNER, CONV_K, generator=g), torch.randn(D_INNER, generator=g)
    return [t.requires_grad_(True) for t in (x, weight, bias)]


def median_time(fn: Callable[[], object], repeats: int, warmup: int) -> tuple[float, float]:
    """Median wall and process-CPU seconds of ``fn`` over ``repeats`` runs after ``warmup`` runs."""
    for _ in range(warmup):
        fn()
    walls, cpus = [], []
    for _ in range(repeats):
        w, c = time.perf_counter(), time.process_time()
        fn()
        walls.append(time.perf_counter() - w)
        cpus.append(time.process_time() - c)
    return statistics.median(walls), statistics.median(cpus)


def time_op(
    run: Callable[[], torch.Tensor], inputs: list[torch.Tensor], repeats: int, backward: bool
) -> dict:
    """Forward-only (no grad) or forward + backward timing of ``run``."""
    if not backward:
        with torch.no_grad():
            wall, cpu = median_time(run, repeats, warmup=1)
    else:

        def step() -> None:
            out = run()
            grads = torch.autograd.grad(out, inputs, torch.ones_like(out))
            del grads

        wall, cpu = median_time(step, repeats, warmup=1)
    return {"wall_s": wall, "cpu_s": cpu}


def scan_impls() -> dict[str, Callable[[list[torch.Tensor]], torch.Tensor]]:
    impls: dict[str, Callable[[list[torch.Tensor]], torch.Tensor]] = {
        "ref": lambda x: selective_scan_ref(*x),
        "torch": lambda x: selective_scan(*x, backend="torch"),
    }
    if cpu_scan_kernel_available():
        impls["torch-eager"] = lambda x: scan._scan_eager(*x, delta_softplus=True)
    return impls


def conv_impls() -> dict[str, Callable[[list[torch.Tensor]], torch.Tensor]]:
    return {
        "ref": lambda x: causal_conv1d_ref(*x, activation="silu"),
        "torch": lambda x: causal_conv1d(*x, activation="silu", backend="torch"),
    }


def too_big(op: str, impl: str, size: int, length: int, backward: bool) -> str | None:
    """Why a slow scan implementation is not timed at this size (None: time it)."""
    if op != "selective_scan" or impl == "torch":
        return None
    if size > REF_FWD_MAX:
        return f"holds [b, d, L, n] tensors of {size:.2g} elements > {REF_FWD_MAX:.2g}"
    if impl == "ref" and backward and size * length > REF_BWD_MAX:
        return f"backward cost b*d*n*L^2 = {size * length:.2g} > {REF_BWD_MAX:.2g}"
    return None


def run_grid(batches: list[int], lengths: list[int], repeats: int) -> list[dict]:
    rows = []
    for op, impls, make in (
        ("selective_scan", scan_impls(), scan_inputs),
        ("causal_conv1d", conv_impls(), conv_inputs),
    ):
        for b in batches:
            for length in lengths:
                inputs = make(b, length)
                size = b * D_INNER * D_STATE * length
                for impl, fn in impls.items():
                    row = {"op": op, "impl": impl, "b": b, "d": D_INNER, "n": D_STATE, "L": length}
                    for phase, backward in (("fwd", False), ("fwd_bwd", True)):
                        reason = too_big(op, impl, size, length, backward)
                        if reason:
                            row[phase] = {"skipped": reason}
                            continue
                        reps = repeats if impl == "torch" else max(1, repeats // 2)
                        row[phase] = time_op(lambda fn=fn, x=inputs: fn(x), inputs, reps, backward)
                    rows.append(row)
                    print(format_row(row), flush=True)
    return rows


def format_row(row: dict) -> str:
    def cell(phase: str) -> str:
        v = row.get(phase, {})
        return f"{'skipped':>10}" if "skipped" in v else f"{v['wall_s']:10.4f}"

    return f"{row['op']:>15} {row['impl']:>12} {row['b']:>6} {row['L']:>5} {cell('fwd')} {cell('fwd_bwd')}"


def speedups(rows: list[dict]) -> list[dict]:
    """torch vs ref wall-time ratios where both were measured."""
    out = []
    for row in rows:
        if row["impl"] != "torch":
            continue
        for other in rows:
            same = all(other[k] == row[k] for k in ("op", "b", "L"))
            if not same or other["impl"] == "torch":
                continue
            for phase in ("fwd", "fwd_bwd"):
                if "wall_s" in row[phase] and "wall_s" in other.get(phase, {}):
                    ratio = other[phase]["wall_s"] / row[phase]["wall_s"]
                    key = {k: row[k] for k in ("op", "b", "L")}
                    out.append({**key, "phase": phase, "baseline": other["impl"], "speedup": ratio})
    return out


def machine_info() -> dict:
    cpu = platform.processor()
    try:
        names = [ln for ln in Path("/proc/cpuinfo").read_text().splitlines() if ln.startswith("model name")]
        cpu = names[0].split(":", 1)[1].strip() if names else cpu
    except OSError:
        pass
    return {
        "torch": torch.__version__,
        "python": sys.version.split()[0],
        "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(),
        "cpu": cpu,
        "machine": platform.machine(),
        "platform": platform.platform(),
        "load_avg_at_start": os.getloadavg() if hasattr(os, "getloadavg") else None,
        "scan_kernel": cpu_scan_kernel_available(),
        "conv_kernel": cpu_conv_kernel_available(),
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="only b=680, L=96")
    parser.add_argument("--batches", type=int, nargs="+", default=[680, 2720])
    parser.add_argument("--lengths", type=int, nargs="+", default=[96, 336, 720])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/scan.json"))
    parser.add_argument(
        "--keep-denormals",
        action="store_true",
        help="leave denormal arithmetic on (by default all implementations run with torch.set_flush_denormal(True);"
        " the PyTorch ones can be several times slower without it, the kernels flush on their own)",
    )
    args = parser.parse_args(argv)
    torch.set_flush_denormal(not args.keep_denormals)
    batches, lengths = ([680], [96]) if args.quick else (args.batches, args.lengths)
    meta = {**machine_info(), "flush_denormal": not args.keep_denormals}
    print(
        f"torch {meta['torch']}, {meta['threads']} threads, {meta['cpu']}, load {meta['load_avg_at_start']}"
    )
    print(f"{'op':>15} {'impl':>12} {'b':>6} {'L':>5} {'fwd s':>10} {'fwd+bwd s':>10}")
    rows = run_grid(batches, lengths, args.repeats)
    ratios = speedups(rows)
    for r in ratios:
        print(f"speedup {r['op']} b={r['b']} L={r['L']} {r['phase']}: {r['speedup']:.1f}x vs {r['baseline']}")
    meta["load_avg_at_end"] = os.getloadavg() if hasattr(os, "getloadavg") else None
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"meta": meta, "results": rows, "speedups": ratios}, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
