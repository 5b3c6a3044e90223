"""One seeded training step traced (predictions, aux losses, gradients) and two traces compared within the
tolerances of the parity checks: predictions and auxiliary losses 1e-5, gradients 1e-4 relative to the model's
largest gradient."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
