"""``torch.compile`` of the STM3 training step, measured honestly: compile time included, parity with eager, the
step time of both (interleaved) and the number of epochs after which compiling pays for itself.

Two scopes are tried in order: the whole model (``torch.compile(model)``: dynamo graph-breaks at data-dependent
control flow such as the contrastive loss's ``pos.any()``, the fused kernels trace as ``torch.library`` ops) and,
if that fails, only the static parts (embedding, AGCCN blocks, head). The result says which scope ran, and why
the other did not.
"""

from __future__ import annotations

import copy
from collections.abc import Callable

import torch
from torch import Tensor, nn

from benchmarks.common import Timing, TrainStep, timed
from benchmarks.parity import compare, traced_step


def compile_whole(model: nn.Module) -> nn.Module:
    """The whole network under ``torch.compile`` (forward; AOTAutograd compiles the backward on first use).

    Inductor would draw the router noise from its own generator, not the eager one (same distribution, other
    numbers); ``fallback_random`` keeps the eager random stream, so compiled and eager steps are comparable.
    """
    import torch._inductor.config as inductor_config

    inductor_config.fallback_random = True
    return torch.compile(model)


def compile_static_parts(model: nn.Module) -> list[str]:
    """Replace the embedding, each layer's AGCCN block and the head by ``torch.compile`` versions (in place).

    The mixture (data-dependent routing, compiled C++ scan) and the contrastive loss stay eager. Returns the
    compiled module names.
    """
    model.embedding = torch.compile(model.embedding)
    model.head = torch.compile(model.head)
    names = ["embedding", "head"]
    for i, layer in enumerate(model.layers):
        if layer.spatial is not None:
            layer.spatial = torch.compile(layer.spatial)
            names.append(f"layers.{i}.spatial")
    return names


def static_parts(model: nn.Module) -> nn.Module:
    """``model`` with its static parts compiled in place (see :func:`compile_static_parts`)."""
    compile_static_parts(model)
    return model


SCOPES: dict[str, Callable[[nn.Module], nn.Module]] = {
    "whole model": compile_whole,
    "static parts": static_parts,
}


def break_even_epochs(
    compile_overhead_s: float, eager_s: float, compiled_s: float, steps: int
) -> float | None:
    """Epochs of ``steps`` steps after which the one-off compile overhead is paid back (None: never, the
    compiled step is not faster)."""
    saved = (eager_s - compiled_s) * steps
    return compile_overhead_s / saved if saved > 0 else None


def error_line(exc: BaseException) -> str:
    """``Type: first line of the message`` of an exception."""
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"


def compiled_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    repeats: int,
    seed: int,
    epoch_steps: int,
    mean: Tensor | float = 0.0,
    std: Tensor | float = 1.0,
) -> dict[str, object]:
    """Compile a copy of ``model`` (first scope of :data:`SCOPES` that works) and compare it with eager.

    x: [B, L, N, C], y: [B, H, N, 1]. ``compile_overhead_s`` is the first compiled step (compilation + one step)
    minus the median eager step; ``break_even_epochs`` divides it by the time saved per epoch of ``epoch_steps``
    steps. ``kept`` says whether the compiled step is both equal to eager (1e-5 / 1e-4 rel) and faster.
    """
    eager = TrainStep(copy.deepcopy(model), mean=mean, std=std)
    failures: dict[str, str] = {}
    for scope, wrap in SCOPES.items():
        compiled = TrainStep(wrap(copy.deepcopy(model)), mean=mean, std=std)
        first = Timing()
        try:
            trace = timed(lambda compiled=compiled: traced_step(compiled, x, y, seed), first)
        except Exception as exc:  # noqa: BLE001 - a compile failure is a result to record, then try the next scope
            failures[scope] = error_line(exc)
            torch._dynamo.reset()
            continue
        parity = compare(trace, traced_step(eager, x, y, seed))
        times = {"compiled": Timing(), "eager": Timing()}
        for _ in range(repeats):
            timed(lambda compiled=compiled: compiled(x, y), times["compiled"])
            timed(lambda: eager(x, y), times["eager"])
        eager_s, compiled_s = times["eager"].median, times["compiled"].median
        overhead = first.wall[0] - eager_s
        return {
            "batch": x.shape[0],
            "scope": scope,
            "failed_scopes": failures,
            "compile_and_first_step_s": first.wall[0],
            "compile_overhead_s": overhead,
            "compiled": times["compiled"].as_dict(),
            "eager": times["eager"].as_dict(),
            "speedup_vs_eager": eager_s / compiled_s,
            "epoch_steps": epoch_steps,
            "break_even_epochs": break_even_epochs(overhead, eager_s, compiled_s, epoch_steps),
            "parity": parity,
            "kept": bool(parity["ok"] and compiled_s < eager_s),
        }
    return {
        "batch": x.shape[0],
        "failed_scopes": failures,
        "error": "; ".join(failures.values()),
        "kept": False,
    }


def describe(result: dict[str, object]) -> str:
    """One line for the console."""
    if "error" in result:
        return f"torch.compile failed in every scope: {result['error']}"
    even = result["break_even_epochs"]
    pays = "never pays back" if even is None else f"pays back after {even:.2f} epochs"
    return (
        f"{result['scope']}: compile + first step {result['compile_and_first_step_s']:.1f} s, "
        f"{result['speedup_vs_eager']:.2f}x vs eager, {pays}, parity "
        f"{'ok' if result['parity']['ok'] else 'MISMATCH'} -> {'keep' if result['kept'] else 'do not keep'}"
    )
