from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from stm3_lightning.callbacks.analysis import eval_mode
from stm3_lightning.callbacks.disentanglement import ExpertDisentanglementCallback, cka_rows
from stm3_lightning.callbacks.figure_sink import NamedFigure
from stm3_lightning.config.schema import AnalysisCallbackConfig

METRICS = ("centroid_cos", "silhouette", "scale_cos", "infonce_top1", "cka")


def _evaluate(
    cb: ExpertDisentanglementCallback, model: nn.Module, x: torch.Tensor, draw: bool = False
) -> tuple[dict[str, float], list[NamedFigure]]:
    with eval_mode(model):
        return cb.measure(model, x, cb.diagnostics(model, x), 0, draw)


def test_cka_rows_keeps_every_row_when_few() -> None:
    assert cka_rows(5, max_rows=8).tolist() == [0, 1, 2, 3, 4]


def test_cka_rows_subsample_is_sorted_unique_and_seeded() -> None:
    rows = cka_rows(100, max_rows=10)
    assert rows.numel() == 10 and rows.unique().numel() == 10
    assert torch.equal(rows, rows.sort().values) and torch.equal(rows, cka_rows(100, max_rows=10))


def test_scalars_per_layer_and_heatmaps_only_when_drawing(
    make_stm3: Callable[..., nn.Module],
    tiny_batch: torch.Tensor,
    analysis_cfg: AnalysisCallbackConfig,
    tmp_path: Path,
) -> None:
    cb, model = ExpertDisentanglementCallback(analysis_cfg, tmp_path), make_stm3()
    scalars, figures = _evaluate(cb, model, tiny_batch)
    assert set(scalars) == {f"disent/layer{i}/{m}" for i in range(2) for m in METRICS} and figures == []
    assert all(-1.0 <= scalars[f"disent/layer{i}/cka"] <= 1.0 for i in range(2))
    _, figures = _evaluate(cb, model, tiny_batch, draw=True)
    assert [f.key for f in figures] == ["disent/layer0/cka_matrix", "disent/layer1/cka_matrix"]


def test_identical_experts_have_cka_one(
    make_stm3: Callable[..., nn.Module],
    tiny_batch: torch.Tensor,
    analysis_cfg: AnalysisCallbackConfig,
    tmp_path: Path,
) -> None:
    model = make_stm3()
    for layer in model.layers:
        for expert in layer.moe.experts[1:]:
            expert.load_state_dict(layer.moe.experts[0].state_dict())
    scalars, _ = _evaluate(ExpertDisentanglementCallback(analysis_cfg, tmp_path), model, tiny_batch)
    assert scalars["disent/layer0/cka"] == pytest.approx(1.0, abs=1e-5)
    assert scalars["disent/layer1/cka"] == pytest.approx(1.0, abs=1e-5)


def test_distinct_experts_have_cka_below_one(
    make_stm3: Callable[..., nn.Module],
    tiny_batch: torch.Tensor,
    analysis_cfg: AnalysisCallbackConfig,
    tmp_path: Path,
) -> None:
    scalars, _ = _evaluate(ExpertDisentanglementCallback(analysis_cfg, tmp_path), make_stm3(), tiny_batch)
    assert scalars["disent/layer0/cka"] < 0.99


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_offline_wandb_run_holds_disent_scalars_and_heatmaps(
    wandb_run: Path, wandb_history: list[dict[str, object]]
) -> None:
    for i in range(2):
        for metric in METRICS:
            values = [
                row[f"disent/layer{i}/{metric}"]
                for row in wandb_history
                if f"disent/layer{i}/{metric}" in row
            ]
            assert len(values) == 2
        key = f"disent/layer{i}/cka_matrix"
        paths = [row[f"{key}.path"] for row in wandb_history if f"{key}.path" in row]
        assert len(paths) == 2 and all(p.startswith(f"media/images/{key}") for p in paths)
        for path in paths:
            assert next(wandb_run.glob(f"wandb/offline-run-*/files/{path}")).stat().st_size > 1000


@pytest.mark.slow
def test_csv_run_holds_disent_scalars_and_heatmap_pngs(
    csv_run: Path, csv_metrics: list[dict[str, float]]
) -> None:
    logged = [row for row in csv_metrics if "disent/layer0/cka" in row]
    assert [row["epoch"] for row in logged] == [0.0, 1.0]
    assert all(f"disent/layer{i}/{m}" in row for row in logged for i in range(2) for m in METRICS)
    for i in range(2):
        for epoch in range(2):
            png = csv_run / "plots" / "disent" / f"layer{i}" / f"cka_matrix_epoch{epoch:03d}.png"
            assert png.stat().st_size > 1000
