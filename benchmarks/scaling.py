"""How STM3's training cost grows with the input length L and the number of nodes N (synthetic nodes).

Times forward + backward (``kernel_backend=torch``, training mode, contrastive loss included) of the faithful STM3 at
a fixed batch for L in {96, 192, 336, 720} (N = 170) and N in {170, 307, 883} (L = 96), with the peak resident
memory of each configuration. The target is linear cost in L: time(L=720) / time(L=96) <= 1.2 x 720 / 96 = 9.

    python -m benchmarks.scaling                   # ~1-3 minutes on 2 cores
    python -m benchmarks.scaling --full-grid       # every (L, N) pair (large ones skipped if memory is short)
    python -m benchmarks.scaling --quick           # tiny sizes, seconds (CI smoke test)
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

import torch

from benchmarks.common import (
    PEMS08_LEN,
    PEMS08_NODES,
    RESULTS_DIR,
    PeakMemory,
    apply_threads,
    build_stm3,
    format_table,
    machine_info,
    measure,
    memory_shortfall,
    random_batch,
    release_memory,
    section,
    stm3_info,
    write_json,
)

LINEARITY_SLACK = 1.2


def grid(lengths: list[int], nodes: list[int], full: bool) -> list[tuple[int, int]]:
    """(L, N) pairs: the L sweep at the first N and the N sweep at the first L, or every pair; smallest first."""
    if full:
        pairs = {(length, n) for length in lengths for n in nodes}
    else:
        pairs = {(length, nodes[0]) for length in lengths} | {(lengths[0], n) for n in nodes}
    return sorted(pairs, key=lambda p: (p[0] * p[1], p))


def measure_config(length: int, nodes: int, batch: int, horizon: int, repeats: int) -> dict[str, object]:
    """Forward + backward of STM3 for x: [batch, length, nodes, 3]; median time and peak RSS."""
    release_memory()
    info = stm3_info(nodes, length, horizon)
    model = build_stm3(info, "torch")
    x, _ = random_batch(batch, info)

    def fwd_bwd() -> None:
        pred, aux = model(x)
        (pred.abs().mean() + sum(aux.values())).backward()
        model.zero_grad(set_to_none=True)

    with PeakMemory() as mem:
        timing = measure(fwd_bwd, repeats, warmup=1)
    return {
        "L": length,
        "N": nodes,
        "batch": batch,
        **timing.as_dict(),
        "us_per_node_step": timing.median / (batch * nodes * length) * 1e6,
        **mem.as_dict(),
    }


def linearity(rows: list[dict], lengths: list[int]) -> list[dict]:
    """time(L_max) / time(L_min) per node count where both were measured, against the 1.2 x L ratio bound."""
    lo, hi = min(lengths), max(lengths)
    out = []
    for n in sorted({r["N"] for r in rows}):
        t = {r["L"]: r["median_s"] for r in rows if r["N"] == n and "median_s" in r}
        if lo in t and hi in t:
            ratio, bound = t[hi] / t[lo], LINEARITY_SLACK * hi / lo
            out.append(
                {"N": n, "L_from": lo, "L_to": hi, "time_ratio": ratio, "bound": bound, "met": ratio <= bound}
            )
    return out


def print_rows(rows: list[dict]) -> None:
    table = [
        [
            r["L"],
            r["N"],
            r["batch"],
            r.get("median_s"),
            r.get("us_per_node_step"),
            r.get("peak_rss_mib"),
            r.get("peak_extra_mib"),
            r.get("skipped", ""),
        ]
        for r in rows
    ]
    print(
        format_table(
            table, ["L", "N", "batch", "fwd+bwd s", "us/(node*step)", "peak RSS MiB", "extra MiB", ""]
        )
    )


def main(argv: list[str] | None = None) -> dict[str, object]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lengths", type=int, nargs="+", default=[96, 192, 336, 720])
    parser.add_argument("--nodes", type=int, nargs="+", default=[PEMS08_NODES, 307, 883])
    parser.add_argument("--batch", type=int, default=4, help="fixed batch size (default 4)")
    parser.add_argument("--horizon", type=int, default=PEMS08_LEN)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per configuration (median quoted)")
    parser.add_argument(
        "--full-grid", action="store_true", help="every (L, N) pair instead of the two sweeps"
    )
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--quick", action="store_true", help="tiny sizes and one repeat (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "scaling.json")
    args = parser.parse_args(argv)
    if args.quick:
        args.lengths, args.nodes, args.batch, args.horizon, args.repeats = [8, 32], [4, 8], 1, 8, 1
    apply_threads(args.threads)
    meta = machine_info()
    print(
        f"{meta['cpu']}, {meta['torch_threads']} threads, torch {meta['torch']}, load {meta['load_avg_at_start']}"
    )
    rows: list[dict] = []
    # Peak extra memory per (sample * node * step) of the last measured (largest so far) configuration.
    per_element_mib: float | None = None
    with section(f"fwd + bwd, batch {args.batch}, horizon {args.horizon}"):
        for length, nodes in grid(args.lengths, args.nodes, args.full_grid):
            size = args.batch * nodes * length
            reason = (
                memory_shortfall(per_element_mib * size, f"L={length}, N={nodes}")
                if per_element_mib
                else None
            )
            if reason:
                rows.append({"L": length, "N": nodes, "batch": args.batch, "skipped": reason})
                print(f"   skipped: {reason}", flush=True)
                continue
            row = measure_config(length, nodes, args.batch, args.horizon, args.repeats)
            rows.append(row)
            if row["peak_extra_mib"]:
                per_element_mib = row["peak_extra_mib"] / size
            print(
                f"   L={length:4d} N={nodes:4d}: {row['median_s']:.3f} s, peak RSS {row['peak_rss_mib'] or 0:.0f} MiB",
                flush=True,
            )
    print()
    print_rows(rows)
    ratios = linearity(rows, args.lengths)
    for r in ratios:
        verdict = "met" if r["met"] else "MISSED"
        print(
            f"N={r['N']}: time(L={r['L_to']}) / time(L={r['L_from']}) = {r['time_ratio']:.2f} "
            f"(bound {r['bound']:.1f}: {verdict})"
        )
    meta["load_avg_at_end"] = list(os.getloadavg()) if hasattr(os, "getloadavg") else None
    result = {
        "meta": meta,
        "config": {**vars(args), "out": str(args.out)},
        "results": rows,
        "linearity": ratios,
        "time_ratio_L": ratios[0]["time_ratio"] if ratios else None,
    }
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    torch.manual_seed(0)
    main()
