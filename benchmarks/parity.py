"""Numerical agreement of training-step variants from identical weights: the ``torch`` vs ``ref`` scan backends
and ``torch.compile`` vs eager (predictions and auxiliary losses within 1e-5, gradients within 1e-4 of the largest
one), with their timings. Used by :mod:`benchmarks.train_step`.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from benchmarks.common import PeakMemory, Timing, TrainStep, build_stm3, random_batch, timed
from stm3_lightning.types import DataInfo

PARITY_ATOL = 1e-5  # predictions and auxiliary losses
GRAD_RTOL = 1e-4  # max |grad difference| / largest |grad| of the model


@dataclass
class StepTrace:
    """What one seeded step produced: pred [B, H, N, 1], aux losses, loss and parameter gradients."""

    pred: Tensor
    aux: dict[str, Tensor]
    loss: float
    grads: dict[str, Tensor]


def traced_step(step: TrainStep, x: Tensor, y: Tensor, seed: int) -> StepTrace:
    """One full training step from the global RNG state ``seed`` (router noise, contrastive negatives)."""
    torch.manual_seed(seed)
    step.opt.zero_grad(set_to_none=True)
    pred, aux = step.model(x)
    loss = step.objective(pred, aux, y)
    loss.backward()
    grads = {  # names without torch.compile's wrapper prefix, so compiled and eager models compare
        n.replace("_orig_mod.", ""): p.grad.detach().clone()
        for n, p in step.model.named_parameters()
        if p.grad is not None
    }
    step.opt.step()
    return StepTrace(pred.detach(), {k: v.detach() for k, v in aux.items()}, float(loss.detach()), grads)


def compare(a: StepTrace, b: StepTrace) -> dict[str, object]:
    """Largest prediction / aux / relative gradient differences and whether they are within tolerance."""
    pred = float((a.pred - b.pred).abs().max())
    aux = max((float((a.aux[k] - b.aux[k]).abs()) for k in a.aux), default=0.0)
    # Relative to the largest gradient of the model: some parameters have (near-)zero gradients by
    # construction (the key bias of the scale attention, the released router gate), where only rounding is left.
    scale = max((float(g.abs().max()) for g in a.grads.values()), default=0.0) or 1.0
    rel = max((float((g - b.grads[n]).abs().max()) for n, g in a.grads.items()), default=0.0) / scale
    ok = pred <= PARITY_ATOL and aux <= PARITY_ATOL and rel <= GRAD_RTOL and a.grads.keys() == b.grads.keys()
    return {
        "max_abs_pred_diff": pred,
        "max_abs_aux_diff": aux,
        "max_rel_grad_diff": rel,
        "loss_diff": abs(a.loss - b.loss),
        "atol": PARITY_ATOL,
        "grad_rtol": GRAD_RTOL,
        "ok": ok,
    }


# ------------------------------------------------------------------------------------------- torch vs ref
def backend_pair(info: DataInfo, seed: int) -> tuple[TrainStep, TrainStep]:
    """``torch`` and ``ref`` training steps of the same freshly initialised STM3."""
    fast = build_stm3(info, "torch", seed)
    ref = build_stm3(info, "ref", seed)
    ref.load_state_dict(fast.state_dict())
    return TrainStep(fast), TrainStep(ref)


def torch_vs_ref(info: DataInfo, batch: int, repeats: int, ref_repeats: int, seed: int) -> dict[str, object]:
    """Parity on the warm-up step, then interleaved timing; ``ref_repeats=0`` times ``torch`` only."""
    fast, ref = backend_pair(info, seed)
    x, y = random_batch(batch, info, seed=seed)
    with PeakMemory() as first:
        fast_trace = traced_step(fast, x, y, seed)
    out: dict[str, object] = {"batch": batch, "first_step_memory": first.as_dict()}
    if ref_repeats:
        out["parity"] = compare(fast_trace, traced_step(ref, x, y, seed))
    times = {"torch": Timing(), "ref": Timing()}
    with PeakMemory() as mem:
        for i in range(max(repeats, ref_repeats)):
            if i < repeats:
                timed(lambda: fast(x, y), times["torch"])
            if i < ref_repeats:
                timed(lambda: ref(x, y), times["ref"])
    out["torch"] = {**times["torch"].as_dict(), **mem.as_dict()}
    if ref_repeats:
        out["ref"] = times["ref"].as_dict()
        out["speedup_vs_ref"] = times["ref"].median / times["torch"].median
    out["model"] = fast.model
    return out


# ----------------------------------------------------------------------------------------------- training


def compile_static_parts(model: nn.Module) -> list[str]:
    """Replace the embedding, each layer's AGCCN block and the head by ``torch.compile`` versions (in place).

    The mixture (data-dependent routing, compiled C++ scan) and the contrastive loss (``nonzero``, random indices)
    stay eager: compiling the whole network fails on them. Returns the compiled module names.
    """
    model.embedding = torch.compile(model.embedding)
    model.head = torch.compile(model.head)
    names = ["embedding", "head"]
    for i, layer in enumerate(model.layers):
        if layer.spatial is not None:
            layer.spatial = torch.compile(layer.spatial)
            names.append(f"layers.{i}.spatial")
    return names


def compiled_step(model: nn.Module, info: DataInfo, batch: int, repeats: int, seed: int) -> dict[str, object]:
    """``torch.compile`` of the static parts of a copy of ``model``: compile time, parity with eager (1e-5) and
    step time vs eager (interleaved); ``kept`` says whether it is both correct and faster."""
    eager = TrainStep(copy.deepcopy(model))
    compiled_model = copy.deepcopy(model)
    compiled = TrainStep(compiled_model)
    names = compile_static_parts(compiled_model)
    x, y = random_batch(batch, info, seed=seed)
    first = Timing()
    try:
        a = timed(lambda: traced_step(compiled, x, y, seed), first)
    except Exception as exc:  # noqa: BLE001 - report any compile failure instead of aborting the benchmark
        return {
            "compiled_modules": names,
            "error": f"{type(exc).__name__}: {str(exc).splitlines()[0]}",
            "kept": False,
        }
    parity = compare(a, traced_step(eager, x, y, seed))
    times = {"compiled": Timing(), "eager": Timing()}
    eager(x, y)
    for _ in range(repeats):
        timed(lambda: compiled(x, y), times["compiled"])
        timed(lambda: eager(x, y), times["eager"])
    speedup = times["eager"].median / times["compiled"].median
    return {
        "batch": batch,
        "compiled_modules": names,
        "compile_and_first_step_s": first.wall[0],
        "compiled": times["compiled"].as_dict(),
        "eager": times["eager"].as_dict(),
        "speedup_vs_eager": speedup,
        "parity": parity,
        "kept": bool(parity["ok"] and speedup > 1.0),
    }
