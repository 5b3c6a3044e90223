from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from torch import nn

from stm3_lightning.callbacks.analysis import eval_mode
from stm3_lightning.callbacks.figure_sink import NamedFigure
from stm3_lightning.callbacks.routing import RoutingSmoothnessCallback, value_perturbations
from stm3_lightning.config.schema import AnalysisCallbackConfig

ALWAYS = (
    "margin",
    "logit_margin",
    "near_tie_frac",
    "noise_flip_frac",
    "load_entropy",
    "load_cv",
    "sensitivity",
)
CHANGE = ("flip_rate", "flip_rate_noisy", "tv")
FIGURES = ("assignment_map", "load_bars")


def _evaluate(
    cb: RoutingSmoothnessCallback, model: nn.Module, x: torch.Tensor, epoch: int = 0, draw: bool = False
) -> tuple[dict[str, float], list[NamedFigure]]:
    with eval_mode(model):
        return cb.measure(model, x, cb.diagnostics(model, x), epoch, draw)


def test_value_perturbations_touch_only_the_value_channel() -> None:
    x = torch.zeros(3, 5, 4, 3)
    delta, norms = value_perturbations(x, sigma=0.5, samples=200)
    assert delta.shape == (200, 3, 5, 4, 3) and norms.shape == (200, 3)
    assert torch.count_nonzero(delta[..., 1:]) == 0
    torch.testing.assert_close(norms, delta.flatten(2).norm(dim=2))
    assert delta[..., 0].std().item() == pytest.approx(0.5, rel=0.05)
    torch.testing.assert_close(value_perturbations(x, 0.5, 200)[0], delta, rtol=0, atol=0)


@pytest.mark.parametrize("router", ["node", "hidden"])
def test_sensitivity_is_exactly_zero_for_the_node_router_and_positive_for_the_hidden_router(
    router: str,
    make_stm3: Callable[..., nn.Module],
    tiny_batch: torch.Tensor,
    analysis_cfg: AnalysisCallbackConfig,
    tmp_path: Path,
) -> None:
    scalars, _ = _evaluate(
        RoutingSmoothnessCallback(analysis_cfg, tmp_path), make_stm3(router=router), tiny_batch
    )
    values = [scalars[f"routing/layer{i}/sensitivity"] for i in range(2)]
    if router == "node":
        assert values == [0.0, 0.0]
    else:
        assert min(values) > 0


def test_first_evaluation_has_no_change_metrics_and_unchanged_weights_have_none(
    make_stm3: Callable[..., nn.Module],
    tiny_batch: torch.Tensor,
    analysis_cfg: AnalysisCallbackConfig,
    tmp_path: Path,
) -> None:
    cb, model = RoutingSmoothnessCallback(analysis_cfg, tmp_path), make_stm3()
    first, _ = _evaluate(cb, model, tiny_batch)
    assert set(first) == {f"routing/layer{i}/{m}" for i in range(2) for m in ALWAYS}
    second, _ = _evaluate(cb, model, tiny_batch, epoch=1)
    assert {f"routing/layer{i}/{m}" for i in range(2) for m in CHANGE} <= set(second)
    assert all(second[f"routing/layer{i}/{m}"] == 0.0 for i in range(2) for m in CHANGE)
    assert second["routing/layer0/load_entropy"] == first["routing/layer0/load_entropy"]


def test_moving_node_embeddings_flips_routes(
    make_stm3: Callable[..., nn.Module],
    tiny_batch: torch.Tensor,
    analysis_cfg: AnalysisCallbackConfig,
    tmp_path: Path,
) -> None:
    cb, model = RoutingSmoothnessCallback(analysis_cfg, tmp_path), make_stm3()
    _evaluate(cb, model, tiny_batch)
    with torch.no_grad():
        model.layers[0].moe.router.gate.weight.mul_(-5.0)  # reverses and sharpens layer 0's preferences
    scalars, _ = _evaluate(cb, model, tiny_batch, epoch=1)
    assert scalars["routing/layer0/flip_rate"] > 0 and scalars["routing/layer0/tv"] > 0


def test_change_history_survives_a_checkpoint_round_trip(
    make_stm3: Callable[..., nn.Module],
    tiny_batch: torch.Tensor,
    analysis_cfg: AnalysisCallbackConfig,
    tmp_path: Path,
) -> None:
    model = make_stm3()
    cb = RoutingSmoothnessCallback(analysis_cfg, tmp_path)
    for epoch in range(2):
        _evaluate(cb, model, tiny_batch, epoch)
    resumed = RoutingSmoothnessCallback(analysis_cfg, tmp_path)
    resumed.load_state_dict(cb.state_dict())
    scalars, figures = _evaluate(resumed, model, tiny_batch, epoch=2, draw=True)
    assert "routing/layer1/flip_rate" in scalars
    assert resumed.state_dict()["history_epochs"] == [1, 2]
    assert {f.key for f in figures if not f.per_epoch} == {"routing/layer0/change", "routing/layer1/change"}


def test_figures_are_drawn_only_when_asked(
    make_stm3: Callable[..., nn.Module],
    tiny_batch: torch.Tensor,
    analysis_cfg: AnalysisCallbackConfig,
    tmp_path: Path,
) -> None:
    cb, model = RoutingSmoothnessCallback(analysis_cfg, tmp_path), make_stm3()
    assert _evaluate(cb, model, tiny_batch)[1] == []
    _, figures = _evaluate(cb, model, tiny_batch, epoch=1, draw=True)
    keys = {f.key for f in figures}
    assert keys == {f"routing/layer{i}/{name}" for i in range(2) for name in (*FIGURES, "change")}


@pytest.mark.parametrize(("samples", "sigma"), [(-1, 0.01), (2, 0.0)])
def test_invalid_sensitivity_settings_are_rejected(samples: int, sigma: float, tmp_path: Path) -> None:
    cfg = AnalysisCallbackConfig(enabled=True, sensitivity_samples=samples, sensitivity_sigma=sigma)
    with pytest.raises(ValueError, match="sensitivity_sigma"):
        RoutingSmoothnessCallback(cfg, tmp_path)


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_offline_wandb_run_holds_routing_scalars_and_images(
    wandb_run: Path,
    wandb_history: list[dict[str, object]],
    read_metrics: Callable[[Path], list[dict[str, float]]],
) -> None:
    logged = [row for row in wandb_history if "routing/layer0/load_entropy" in row]
    assert len(logged) == 2  # epochs 0 and 1; never in the sanity check
    for i in range(2):
        for metric in ALWAYS:
            assert all(isinstance(row[f"routing/layer{i}/{metric}"], int | float) for row in logged)
        for metric in CHANGE:
            assert sum(f"routing/layer{i}/{metric}" in row for row in wandb_history) == 1
        for name in (*FIGURES, "change"):
            paths = [
                row[f"routing/layer{i}/{name}.path"]
                for row in wandb_history
                if f"routing/layer{i}/{name}.path" in row
            ]
            assert len(paths) == (1 if name == "change" else 2)
            files = wandb_run.glob(f"wandb/offline-run-*/files/{paths[-1]}")
            assert next(files).stat().st_size > 1000
    # With W&B attached the figures go to W&B *and* to the run folder, the scalars to W&B *and* metrics.csv.
    for i in range(2):
        assert {p.name for p in (wandb_run / "plots" / "routing" / f"layer{i}").glob("*.png")} >= {
            f"{name}_epoch00{e}.png" for name in FIGURES for e in range(2)
        }
    csv_rows = read_metrics(wandb_run)
    assert [row["epoch"] for row in csv_rows if "routing/layer0/load_entropy" in row] == [0.0, 1.0]


@pytest.mark.slow
def test_csv_run_holds_routing_scalars_and_pngs(csv_run: Path, csv_metrics: list[dict[str, float]]) -> None:
    logged = [row for row in csv_metrics if "routing/layer0/load_entropy" in row]
    assert [row["epoch"] for row in logged] == [0.0, 1.0]
    assert all(row[f"routing/layer{i}/sensitivity"] == 0.0 for row in logged for i in range(2))  # node router
    assert all(0 <= row[f"routing/layer{i}/flip_rate"] <= 1 for row in logged[1:] for i in range(2))
    plots = csv_run / "plots" / "routing"
    for i in range(2):
        for name in FIGURES:
            assert {p.name for p in (plots / f"layer{i}").glob(f"{name}_epoch*.png")} == {
                f"{name}_epoch000.png",
                f"{name}_epoch001.png",
            }
        assert (plots / f"layer{i}" / "change.png").stat().st_size > 1000


@pytest.mark.slow
def test_hidden_router_run_logs_positive_sensitivity(
    tmp_path: Path,
    tiny_run_args: list[str],
    train_tiny: Callable[..., Path],
    read_metrics: Callable[[Path], list[dict[str, float]]],
) -> None:
    args = [
        *tiny_run_args,
        "model.router=hidden",
        "trainer.max_epochs=1",
        "callbacks.disentanglement.enabled=false",
    ]
    run_dir = train_tiny(tmp_path, args)
    logged = [row for row in read_metrics(run_dir) if "routing/layer0/sensitivity" in row]
    assert logged and all(row[f"routing/layer{i}/sensitivity"] > 0 for row in logged for i in range(2))
