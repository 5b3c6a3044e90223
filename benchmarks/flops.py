"""Where an STM3 training step spends its FLOPs and its time, next to the machine's matmul throughput.

Each part (embedding, AGCCN and its graph conv / scale attention, the mixture and its experts, the experts' linear
projections, multiscale convs, causal conv and selective scan, head, contrastive loss, optimizer) is recorded
during one real training forward with its actual inputs (same shapes and memory layouts), then re-run in
isolation, forward + backward, for FLOPs (``FlopCounterMode`` + analytic scan/conv, see
:mod:`benchmarks.profiling`) and median time. "rest" rows are the parent's time minus its measured children.

    python -m benchmarks.flops                 # PEMSD8 96 -> 96 paper configuration, batch 8, ~1-2 minutes
    python -m benchmarks.flops --batch 64      # the training batch (needs several GB)
    python -m benchmarks.flops --quick         # tiny model, seconds (CI smoke test)
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from unittest import mock

import torch
from torch import Tensor, nn

from benchmarks.common import (
    RESULTS_DIR,
    TrainStep,
    apply_threads,
    build_stm3,
    format_table,
    machine_info,
    matmul_gflops,
    measure,
    random_batch,
    section,
    stm3_info,
    write_json,
)
from benchmarks.profiling import (
    FlopCount,
    causal_conv_flops,
    conv_runs_in_kernel,
    count_flops,
    selective_scan_flops,
    train_flops_per_sample,
)
from stm3_lightning.models.stm3 import mamba as mamba_module
from stm3_lightning.models.stm3.moe import MoEOutput
from stm3_lightning.models.stm3.router import Routing

# Part tree: name -> parent ("" for top level). Top-level parts add up to the step (plus "rest").
TREE: dict[str, str] = {
    "embedding": "",
    "agccn": "",
    "agccn/graph conv": "agccn",
    "agccn/scale attention": "agccn",
    "moe": "",
    "moe/routed experts": "moe",
    "moe/shared expert": "moe",
    "expert/projections": "experts",
    "expert/multiscale convs": "experts",
    "expert/causal conv": "experts",
    "expert/selective scan": "experts",
    "head": "",
    "contrastive": "",
    "optimizer": "",
}
# Functions of mamba.py recorded as parts (module attribute -> part).
FUNCTION_PARTS = {"causal_conv1d": "expert/causal conv", "selective_scan": "expert/selective scan"}
# What the time of a parent not covered by its measured children is.
REST = {
    "agccn": "agccn/rest (layer norms)",
    "moe": "moe/rest (router, row gather, combine)",
    "experts": "expert/rest (dt, tanh, layout copies)",
    "": "rest (loss, residuals, glue)",
}


def layout_copy(x: object) -> object:
    """A detached copy of a tensor with the same strides (and ``requires_grad``); other values unchanged."""
    if not isinstance(x, Tensor):
        return x
    out = torch.empty_strided(x.shape, x.stride(), dtype=x.dtype, device=x.device)
    out.copy_(x.detach())
    return out.requires_grad_(x.requires_grad)


@dataclass
class Call:
    """One recorded call: ``fn(*args, **kwargs)`` then backward of its output with a fixed random gradient."""

    fn: Callable[..., object]
    args: tuple
    kwargs: dict = field(default_factory=dict)
    grad: Tensor | None = None

    @classmethod
    def record(cls, fn: Callable[..., object], args: tuple, kwargs: dict) -> Call:
        return cls(fn, tuple(layout_copy(a) for a in args), {k: layout_copy(v) for k, v in kwargs.items()})

    def leaves(self) -> Iterator[Tensor]:
        for value in (*self.args, *self.kwargs.values()):
            if isinstance(value, Tensor) and value.requires_grad:
                yield value
        if isinstance(self.fn, nn.Module):
            yield from self.fn.parameters()

    def run(self) -> None:
        """Forward + backward once; gradients are cleared afterwards, as ``zero_grad(set_to_none)`` does."""
        out = self.fn(*self.args, **self.kwargs)
        out = out.out if isinstance(out, MoEOutput) else out
        if out.requires_grad:
            if out.dim() == 0:
                out.backward()
            else:
                if self.grad is None:
                    self.grad = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
                out.backward(self.grad)
        for leaf in self.leaves():
            leaf.grad = None


def module_parts(model: nn.Module) -> dict[str, list[nn.Module]]:
    """Modules of each module-backed part of an STM3 network."""
    moes = [layer.moe for layer in model.layers if layer.moe is not None]
    spatial = [layer.spatial for layer in model.layers if layer.spatial is not None]
    routed = [e for moe in moes for e in moe.experts]
    shared = [moe.shared_expert for moe in moes if moe.shared_expert is not None]
    experts = routed + shared + [layer.mamba for layer in model.layers if layer.mamba is not None]
    return {
        "embedding": [model.embedding],
        "agccn": spatial,
        "agccn/graph conv": [s.graph for s in spatial if s.graph is not None],
        "agccn/scale attention": [s.attention for s in spatial if s.attention is not None],
        "moe": moes,
        "moe/routed experts": routed,
        "moe/shared expert": shared,
        "expert/projections": [p for e in experts for p in (e.in_proj, e.x_proj, e.out_proj)],
        "expert/multiscale convs": [c for e in experts for c in e.scale_convs],
        "head": [model.head],
    }


def contrastive_call(model: nn.Module, layer: nn.Module, mixed: MoEOutput) -> Call:
    """The contrastive loss of one layer on a copy of its mixture output (the means carry the gradient)."""
    r = mixed.routing
    routing = Routing(r.logits.detach(), r.noise.detach(), r.weights.detach(), r.indices)
    copy = MoEOutput(out=mixed.out.detach(), routing=routing, means=layout_copy(mixed.means))
    return Call(partial(model._contrastive, layer), (copy,))


@contextmanager
def recording(model: nn.Module, calls: dict[str, list[Call]]) -> Iterator[None]:
    """Record every part's calls during the forward passes run inside the block (into ``calls``)."""
    handles = []
    layer_of = {id(layer.moe): layer for layer in model.layers if layer.moe is not None}
    for part, modules in module_parts(model).items():
        for module in modules:

            def hook(mod: nn.Module, args: tuple, kwargs: dict, out: object, part: str = part) -> None:
                calls[part].append(Call.record(mod, args, kwargs))
                layer = layer_of.get(id(mod))
                if layer is not None and model.contrastive_on and out.means is not None:
                    calls["contrastive"].append(contrastive_call(model, layer, out))

            handles.append(module.register_forward_hook(hook, with_kwargs=True))

    def recorder(name: str, original: Callable[..., Tensor]) -> Callable[..., Tensor]:
        def wrapped(*args: object, **kwargs: object) -> Tensor:
            calls[FUNCTION_PARTS[name]].append(Call.record(original, args, kwargs))
            return original(*args, **kwargs)

        return wrapped

    patches = [
        mock.patch.object(mamba_module, name, recorder(name, getattr(mamba_module, name)))
        for name in FUNCTION_PARTS
    ]
    try:
        for p in patches:
            p.start()
        yield
    finally:
        for p in patches:
            p.stop()
        for h in handles:
            h.remove()


def function_flops(part: str, call: Call) -> FlopCount:
    """Analytic FLOPs (forward + backward) of a recorded scan or causal-conv call."""
    x = call.args[0]
    rows, channels, length = x.shape
    if part == "expert/selective scan":
        return FlopCount(scan=selective_scan_flops(rows, channels, length, call.args[2].shape[1]))
    if conv_runs_in_kernel(str(call.kwargs.get("backend", "auto")), x):
        return FlopCount(causal_conv=causal_conv_flops(rows, channels, length, call.args[1].shape[1]))
    return FlopCount()


def part_flops(part: str, calls: list[Call]) -> FlopCount:
    """FLOPs of one forward + backward of every call of ``part``."""
    total = FlopCount()
    for call in calls:
        root = call.fn if isinstance(call.fn, nn.Module) else nn.Module()
        count = count_flops(call.run, root, backward=True)
        extra = function_flops(part, call) if part in FUNCTION_PARTS.values() else FlopCount()
        total.counted += count.counted
        total.scan += count.scan + extra.scan
        total.causal_conv += count.causal_conv + extra.causal_conv
        total.attention += count.attention + extra.attention
    return total


def profile_parts(model: nn.Module, x: Tensor, y: Tensor, repeats: int) -> dict[str, dict]:
    """Time (median of ``repeats``) and FLOPs of every part, of the whole step, and the "rest" rows."""
    step = TrainStep(model)
    step(x, y)  # warm-up (kernels compiled, memory touched)
    calls: dict[str, list[Call]] = {part: [] for part in TREE}
    with recording(model, calls):
        step.loss(x, y)
    model.zero_grad(set_to_none=True)
    batch = x.shape[0]
    out: dict[str, dict] = {}
    for part, part_calls in calls.items():
        if part == "optimizer" or not part_calls:
            continue
        timing = measure(lambda c=part_calls: [call.run() for call in c], repeats, warmup=1)
        out[part] = {"calls": len(part_calls), "time": timing, "flops": part_flops(part, part_calls)}
    step(x, y)  # leaves gradients in place for the optimizer timing
    out["optimizer"] = {"calls": 1, "time": measure(step.opt.step, repeats, warmup=1), "flops": FlopCount()}
    whole = measure(lambda: step(x, y), repeats, warmup=1)
    out["step"] = {"calls": 1, "time": whole, "flops": scaled(train_flops_per_sample(model, x), batch)}
    return out


def scaled(count: FlopCount, factor: int) -> FlopCount:
    return FlopCount(
        count.counted * factor, count.scan * factor, count.causal_conv * factor, count.attention * factor
    )


def summarise(parts: dict[str, dict], batch: int, peak_gflops: float) -> list[dict]:
    """One row per part (tree order, with "rest" rows), times in ms per step and FLOPs per sample."""
    step_s = parts["step"]["time"].median
    rows: list[dict] = []

    def row(name: str, seconds: float, flops: int | None, calls: int | None) -> dict:
        rate = flops / seconds / 1e9 if flops and seconds > 0 else None
        return {
            "part": name,
            "calls": calls,
            "gflop_per_sample": None if flops is None else flops / batch / 1e9,
            "ms_per_step": seconds * 1e3,
            "share_of_step": seconds / step_s,
            "gflops": rate,
            "fraction_of_matmul_peak": None if rate is None else rate / peak_gflops,
        }

    def add(name: str) -> None:
        p = parts[name]
        rows.append(row(name, p["time"].median, p["flops"].total, p["calls"]))

    def rest(name: str, parent_s: float, parent_flops: int, children: list[str]) -> None:
        kids = [c for c in children if c in parts]
        seconds = parent_s - sum(parts[c]["time"].median for c in kids)
        flops = parent_flops - sum(parts[c]["flops"].total for c in kids)
        rows.append(row(name, seconds, max(flops, 0), None))

    for top in [p for p, parent in TREE.items() if parent == "" and p in parts]:
        add(top)
        children = [p for p, parent in TREE.items() if parent == top and p in parts]
        for child in children:
            add(child)
        if children:
            rest(REST[top], parts[top]["time"].median, parts[top]["flops"].total, children)
        if top == "moe":
            expert_parts = ["moe/routed experts", "moe/shared expert"]
            expert_s = sum(parts[p]["time"].median for p in expert_parts if p in parts)
            expert_flops = sum(parts[p]["flops"].total for p in expert_parts if p in parts)
            inner = [p for p, parent in TREE.items() if parent == "experts" and p in parts]
            for child in inner:
                add(child)
            rest(REST["experts"], expert_s, expert_flops, inner)
    top_level = [p for p, parent in TREE.items() if parent == "" and p in parts]
    rest(REST[""], step_s, parts["step"]["flops"].total, top_level)
    add("step")
    return rows


def biggest(rows: list[dict]) -> dict[str, str]:
    """Largest top-level part and largest leaf (a part without measured children) by time."""
    parents = {"agccn", "moe", "moe/routed experts", "moe/shared expert", "step"}
    top = [r for r in rows if TREE.get(r["part"]) == ""]
    leaves = [r for r in rows if r["part"] not in parents]
    return {
        "top_level": max(top, key=lambda r: r["ms_per_step"])["part"],
        "leaf": max(leaves, key=lambda r: r["ms_per_step"])["part"],
    }


def print_rows(rows: list[dict]) -> None:
    table = [
        [
            r["part"],
            r["calls"],
            r["gflop_per_sample"],
            r["ms_per_step"],
            100 * r["share_of_step"],
            r["gflops"],
            None if r["fraction_of_matmul_peak"] is None else 100 * r["fraction_of_matmul_peak"],
        ]
        for r in rows
    ]
    header = ["part", "calls", "GFLOP/sample", "ms/step", "% step", "GFLOP/s", "% matmul peak"]
    print(format_table(table, header))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=8, help="batch size of the profiled step (default 8)")
    parser.add_argument("--repeats", type=int, default=3, help="timed repeats per part (median quoted)")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: one per core)")
    parser.add_argument("--quick", action="store_true", help="tiny model and one repeat (smoke test)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR / "flops.json")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    info = stm3_info(8, 16, 16) if args.quick else stm3_info()
    batch, repeats = (2, 1) if args.quick else (args.batch, args.repeats)
    meta = machine_info()
    print(
        f"{meta['cpu']}, {meta['torch_threads']} threads, torch {meta['torch']}, load {meta['load_avg_at_start']}"
    )
    with section("machine matmul throughput (2048^2)"):
        size = 256 if args.quick else 2048
        peak = {"fp32": matmul_gflops(size), "bf16": matmul_gflops(size, dtype=torch.bfloat16)}
        print(f"   fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s")
    with section(
        f"STM3 N={info.num_nodes} L={info.input_len} H={info.horizon}, batch {batch}, fwd + bwd per part"
    ):
        model = build_stm3(info, "torch")
        x, y = random_batch(batch, info)
        parts = profile_parts(model, x, y, repeats)
        rows = summarise(parts, batch, peak["fp32"])
        print_rows(rows)
    big = biggest(rows)
    step = parts["step"]
    print(
        f"\nFLOPs per sample (fwd + bwd): {step['flops'].total / batch / 1e9:.3f} GFLOP "
        f"({step['flops'].scan / batch / 1e9:.3f} in the scan); biggest part: {big['top_level']}, "
        f"biggest leaf: {big['leaf']}"
    )
    result = {
        "meta": meta,
        "config": {
            "num_nodes": info.num_nodes,
            "input_len": info.input_len,
            "horizon": info.horizon,
            "batch": batch,
            "repeats": repeats,
            "kernel_backend": "torch",
        },
        "matmul_gflops": peak,
        "flops_per_sample": {k: v / batch for k, v in step["flops"].as_dict().items()},
        "step_seconds": step["time"].median,
        "achieved_gflops": step["flops"].total / step["time"].median / 1e9,
        "parts": rows,
        "biggest": big,
    }
    print(f"wrote {write_json(result, args.out)}")
    return result


if __name__ == "__main__":
    main()
