"""``RoutingSmoothnessCallback``: how stable and how input-dependent STM3's routing is, per layer, over training.

Logged every ``every_n_epochs`` epochs on the fixed validation batch (reference §8, items 1-5), per layer ``i``:
``routing/layer<i>/{flip_rate, flip_rate_noisy, tv}`` (change since the previous evaluation, from the second
evaluation on), ``sensitivity`` (empirical Lipschitz ratio of the noise-free router to Gaussian perturbations of
the value channel), ``margin``, ``logit_margin``, ``near_tie_frac``, ``noise_flip_frac``, ``load_entropy`` and
``load_cv``. Figures: ``assignment_map`` (top-1 expert per window and node), ``load_bars`` (expert loads) and
``change`` (the change metrics over epochs).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from stm3_lightning.analysis.disentanglement import summarize_layer
from stm3_lightning.analysis.routing import expert_load, input_sensitivity
from stm3_lightning.callbacks.analysis import (
    ANALYSIS_SEED,
    Diagnostics,
    FixedBatchAnalysisCallback,
    layer_keys,
)
from stm3_lightning.callbacks.figure_sink import NamedFigure
from stm3_lightning.config.schema import AnalysisCallbackConfig
from stm3_lightning.plots import plot_assignment_map, plot_expert_load, plot_routing_history

# Change metrics kept over epochs for the ``change`` figure, with their legend labels.
HISTORY_LABELS = {
    "flip_rate": "flip rate (noise-free)",
    "flip_rate_noisy": "flip rate (routes used)",
    "tv": "total variation",
}


def value_perturbations(
    x: Tensor, sigma: float, samples: int, seed: int = ANALYSIS_SEED
) -> tuple[Tensor, Tensor]:
    """``samples`` Gaussian perturbations δ ~ N(0, σ²) of the value channel (channel 0) only, from a CPU generator
    seeded with ``seed`` (the same δ at every evaluation).

    x: [B, L, N, C]. Returns (delta [S, B, L, N, C], zero outside channel 0; norms [S, B] = ‖δ_{s,b}‖₂).
    """
    gen = torch.Generator().manual_seed(seed)
    noise = torch.randn((samples, *x.shape[:-1], 1), generator=gen) * sigma  # [S, B, L, N, 1]
    delta = F.pad(noise, (0, x.shape[-1] - 1))
    return delta.to(device=x.device, dtype=x.dtype), noise.flatten(2).norm(dim=2).to(x.device)


class RoutingSmoothnessCallback(FixedBatchAnalysisCallback):
    """Routing flip rate, total variation, input sensitivity, margins and load balance per STM3 layer.

    The previous evaluation's routing and the metric history are part of the callback's checkpoint state, so a
    resumed run keeps measuring change against the last evaluation before the interruption.
    """

    family = "routing"
    all_experts = False

    def __init__(self, cfg: AnalysisCallbackConfig, run_dir: str | Path) -> None:
        super().__init__(cfg, run_dir)
        if cfg.sensitivity_samples < 0 or (cfg.sensitivity_samples > 0 and cfg.sensitivity_sigma <= 0):
            raise ValueError(
                "callbacks.routing needs sensitivity_samples >= 0 and, when it is positive, sensitivity_sigma > 0; "
                f"got {cfg.sensitivity_samples} and {cfg.sensitivity_sigma}."
            )
        self._prev: list[dict[str, Tensor]] = []
        self._history: list[dict[str, list[float]]] = []
        self._history_epochs: list[int] = []

    def _sensitivity(self, model: nn.Module, x: Tensor, diags: Diagnostics) -> list[Tensor]:
        """Per-layer ``input_sensitivity`` averaged over the perturbation draws (same router noise as at x).

        x: [B, L, N, C]; diags: the per-layer diagnostics at x. Returns one 0-d tensor per layer.
        """
        cfg = self.cfg
        deltas, norms = value_perturbations(x, cfg.sensitivity_sigma, cfg.sensitivity_samples)
        runs = [self.diagnostics(model, x + delta) for delta in deltas]
        return [
            input_sensitivity(
                diag["probs"].repeat(cfg.sensitivity_samples, 1, 1),
                torch.cat([run[i]["probs"] for run in runs]),
                norms.reshape(-1),
            )
            for i, diag in enumerate(diags)
        ]

    def _previous(self, layer: int, diag: dict[str, Tensor]) -> dict[str, Tensor] | None:
        """The layer's routing at the previous evaluation, on ``diag``'s device, if it is comparable."""
        if layer >= len(self._prev) or self._prev[layer]["probs"].shape != diag["probs"].shape:
            return None
        return {key: value.to(diag["probs"].device) for key, value in self._prev[layer].items()}

    def _record(self, diags: Diagnostics, scalars: dict[str, float], epoch: int, changed: bool) -> None:
        """Keep this evaluation's routing for the next change metrics; when ``changed`` (the change metrics were
        measured), extend their history."""
        self._prev = [{key: diag[key].detach().cpu() for key in ("probs", "assign")} for diag in diags]
        if not changed:
            return
        self._history_epochs.append(epoch)
        while len(self._history) < len(diags):
            self._history.append({name: [] for name in HISTORY_LABELS})
        for i, series in enumerate(self._history):
            for name, values in series.items():
                values.append(scalars[f"routing/layer{i}/{name}"])

    def measure(
        self, model: nn.Module, x: Tensor, diags: Diagnostics, epoch: int, draw: bool
    ) -> tuple[dict[str, float], list[NamedFigure]]:
        """Routing scalars per layer, and the assignment map, load bars and change-over-epochs figures.

        x: [B, L, N, C]; diags: per-layer ``routing_diagnostics(x)`` (see ``FixedBatchAnalysisCallback``).
        """
        sensitivity = self._sensitivity(model, x, diags) if self.cfg.sensitivity_samples > 0 else []
        prevs = [self._previous(i, diag) for i, diag in enumerate(diags)]
        scalars: dict[str, float] = {}
        for i, (diag, prev) in enumerate(zip(diags, prevs, strict=True)):
            summary = summarize_layer(diag, prev)
            layer = {key: value for key, value in summary.items() if key.startswith("routing/")}
            if sensitivity:
                layer["routing/sensitivity"] = float(sensitivity[i])
            scalars.update(layer_keys(layer, i))
        self._record(diags, scalars, epoch, changed=all(prev is not None for prev in prevs))
        return scalars, (self._figures(diags, epoch) if draw else [])

    def _figures(self, diags: Diagnostics, epoch: int) -> list[NamedFigure]:
        figures = []
        for i, diag in enumerate(diags):
            assign, num_experts = diag["assign"], diag["probs"].shape[-1]
            head = f"Layer {i}, epoch {epoch}"
            figures += [
                NamedFigure(
                    f"routing/layer{i}/assignment_map",
                    plot_assignment_map(
                        assign, num_experts, title=f"{head}: top-1 expert (rows: validation windows)"
                    ),
                ),
                NamedFigure(
                    f"routing/layer{i}/load_bars",
                    plot_expert_load(expert_load(assign, num_experts), title=f"{head}: expert load"),
                ),
            ]
            if i < len(self._history) and self._history_epochs:
                series = {HISTORY_LABELS[name]: values for name, values in self._history[i].items()}
                figure = plot_routing_history(
                    series, self._history_epochs, title=f"Layer {i}: routing change"
                )
                figures.append(NamedFigure(f"routing/layer{i}/change", figure, per_epoch=False))
        return figures

    # ------------------------------------------------------------------------------------- checkpoint state
    def state_dict(self) -> dict[str, Any]:
        return {
            "prev": self._prev,
            "history": self._history,
            "history_epochs": self._history_epochs,
            "last_evaluation": list(self._last_evaluation),
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self._prev = list(state_dict["prev"])
        self._history = list(state_dict["history"])
        self._history_epochs = list(state_dict["history_epochs"])
        # Checkpoints written before evaluations were keyed by step hold only the epoch.
        last = state_dict.get("last_evaluation", [state_dict.get("last_epoch", -1), -1])
        self._last_evaluation = (int(last[0]), int(last[1]))
