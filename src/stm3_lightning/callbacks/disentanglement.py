"""``ExpertDisentanglementCallback``: whether STM3's experts and scales learn distinct patterns, per layer.

Logged every ``every_n_epochs`` epochs on the fixed validation batch (reference §8, items 6-9), per layer ``i``:
``disent/layer<i>/{centroid_cos, silhouette, scale_cos, infonce_top1}`` on the routed experts' representations and
``cka`` (mean pairwise linear CKA of all experts run on the same inputs). Figure: ``cka_matrix`` (the pairwise CKA
heatmap). The per-layer contrastive loss is already logged by the Forecaster as ``train/aux/contrastive/layer<i>``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from stm3_lightning.analysis.disentanglement import mean_offdiagonal, pairwise_cka, summarize_layer
from stm3_lightning.callbacks.analysis import (
    ANALYSIS_SEED,
    Diagnostics,
    FixedBatchAnalysisCallback,
    layer_keys,
)
from stm3_lightning.callbacks.figure_sink import NamedFigure
from stm3_lightning.plots import plot_similarity_heatmap

# Rows (sample, node) of the fixed batch used for CKA at most; tokens are rows x time steps.
CKA_MAX_ROWS = 2048


def cka_rows(num_rows: int, max_rows: int = CKA_MAX_ROWS, seed: int = ANALYSIS_SEED) -> Tensor:
    """Sorted indices of at most ``max_rows`` of ``num_rows`` rows, a seeded draw without replacement (all rows when
    they are few enough). Returns: [min(num_rows, max_rows)]."""
    if num_rows <= max_rows:
        return torch.arange(num_rows)
    return torch.randperm(num_rows, generator=torch.Generator().manual_seed(seed))[:max_rows].sort().values


class ExpertDisentanglementCallback(FixedBatchAnalysisCallback):
    """Expert separation, silhouette, functional diversity (CKA), scale distinguishability and InfoNCE accuracy."""

    family = "disent"
    all_experts = True

    def measure(
        self, model: nn.Module, x: Tensor, diags: Diagnostics, epoch: int, draw: bool
    ) -> tuple[dict[str, float], list[NamedFigure]]:
        """Disentanglement scalars per layer and, when ``draw``, the CKA heatmap of each layer.

        x: [B, L, N, C]; diags: per-layer ``routing_diagnostics(x, all_experts=True)``, whose
        ``expert_outputs: [E, B*N, L, M]`` feed the CKA.
        """
        scalars: dict[str, float] = {}
        figures: list[NamedFigure] = []
        for i, diag in enumerate(diags):
            routed = {key: value for key, value in diag.items() if key != "expert_outputs"}
            layer = {
                key: value for key, value in summarize_layer(routed).items() if key.startswith("disent/")
            }
            outputs = diag.get("expert_outputs")
            if outputs is not None:
                rows = cka_rows(outputs.shape[1]).to(outputs.device)
                matrix = pairwise_cka(outputs[:, rows])
                layer["disent/cka"] = float(mean_offdiagonal(matrix))
                if draw:
                    title = f"Layer {i}, epoch {epoch}: expert CKA"
                    figures.append(
                        NamedFigure(f"disent/layer{i}/cka_matrix", plot_similarity_heatmap(matrix, title))
                    )
            scalars.update(layer_keys(layer, i))
        return scalars, figures
