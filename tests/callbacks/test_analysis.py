import json
import logging
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset, TensorDataset

from stm3_lightning.callbacks.analysis import eval_mode, first_windows, has_routing, layer_keys, seeded_rng
from stm3_lightning.callbacks.routing import RoutingSmoothnessCallback
from stm3_lightning.config.schema import AnalysisCallbackConfig

_X = torch.arange(10 * 2 * 3 * 1, dtype=torch.float32).reshape(10, 2, 3, 1)
_Y = torch.zeros(10, 1, 3, 1)


class _Stream(IterableDataset):
    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return iter(zip(_X, _Y, strict=True))


@pytest.mark.parametrize(
    "loaders",
    [
        DataLoader(TensorDataset(_X, _Y), batch_size=3, shuffle=True),
        [DataLoader(TensorDataset(_X, _Y), batch_size=3)],
        {"val": DataLoader(_Stream(), batch_size=3)},
    ],
    ids=["map-style", "list", "iterable"],
)
def test_first_windows_are_the_first_windows_in_dataset_order(loaders: object) -> None:
    torch.testing.assert_close(first_windows(loaders, 4), _X[:4])


def test_first_windows_takes_every_window_of_a_small_set() -> None:
    assert first_windows(DataLoader(TensorDataset(_X, _Y)), 64).shape == (10, 2, 3, 1)


def test_first_windows_without_a_loader_says_so() -> None:
    with pytest.raises(ValueError, match="no validation dataloader"):
        first_windows([], 4)


def test_seeded_rng_repeats_draws_and_restores_the_global_state() -> None:
    torch.manual_seed(123)
    before = torch.get_rng_state()
    with seeded_rng(torch.device("cpu"), seed=7):
        a = torch.rand(5)
    with seeded_rng(torch.device("cpu"), seed=7):
        b = torch.rand(5)
    assert torch.equal(a, b) and torch.equal(torch.get_rng_state(), before)


def test_eval_mode_restores_each_module_mode_and_disables_grad() -> None:
    model = nn.Sequential(nn.Linear(2, 2), nn.Dropout())
    model[1].eval()
    with eval_mode(model):
        assert not any(m.training for m in model.modules()) and not torch.is_grad_enabled()
    assert [m.training for m in model.modules()] == [True, True, False]


def test_layer_keys_insert_the_layer() -> None:
    assert layer_keys({"routing/tv": 0.5, "disent/cka": 1.0}, 3) == {
        "routing/layer3/tv": 0.5,
        "disent/layer3/cka": 1.0,
    }


@pytest.mark.parametrize(
    ("sanity", "epoch", "every", "expected"),
    [(True, 0, 1, False), (False, 0, 1, True), (False, 3, 2, False), (False, 4, 2, True)],
)
def test_evaluations_skip_the_sanity_check_and_follow_every_n_epochs(
    sanity: bool, epoch: int, every: int, expected: bool, tmp_path: Path
) -> None:
    cb = RoutingSmoothnessCallback(AnalysisCallbackConfig(enabled=True, every_n_epochs=every), tmp_path)
    trainer = SimpleNamespace(sanity_checking=sanity, current_epoch=epoch, global_step=0)
    assert cb._due(trainer) is expected


def test_every_validation_of_an_epoch_is_measured_once(tmp_path: Path) -> None:
    """``trainer.val_check_interval`` validates several times per epoch: each one is measured, none twice."""
    cb = RoutingSmoothnessCallback(AnalysisCallbackConfig(enabled=True), tmp_path)
    cb._last_evaluation = (2, 40)
    due = [cb._due(SimpleNamespace(sanity_checking=False, current_epoch=2, global_step=s)) for s in (40, 60)]
    assert due == [False, True]


def test_zero_every_n_epochs_is_rejected(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="every_n_epochs"):
        RoutingSmoothnessCallback(AnalysisCallbackConfig(enabled=True, every_n_epochs=0), tmp_path)


def test_only_models_that_route_get_the_analysis_callbacks(
    make_stm3: Callable[..., nn.Module], tmp_path: Path
) -> None:
    from stm3_lightning.config.compose import compose
    from stm3_lightning.models.baselines import Persistence
    from stm3_lightning.run.builders import build_analysis_callbacks

    cfg = compose([])  # the default callbacks: analysis on
    built = build_analysis_callbacks(cfg, tmp_path, make_stm3())
    assert [type(cb).__name__ for cb in built] == [
        "RoutingSmoothnessCallback",
        "ExpertDisentanglementCallback",
    ]
    assert build_analysis_callbacks(cfg, tmp_path, Persistence(horizon=3)) == []
    assert has_routing(make_stm3()) and not has_routing(nn.Linear(2, 2))


# ------------------------------------------------------------------------------------------- end to end
@pytest.mark.slow
def test_callbacks_leave_the_training_trajectory_unchanged(
    csv_run: Path, tiny_run_args: list[str], tmp_path: Path, train_tiny: Callable[..., Path]
) -> None:
    off = ["callbacks.routing.enabled=false", "callbacks.disentanglement.enabled=false"]
    plain = train_tiny(tmp_path, [*tiny_run_args, *off])
    with_cb = json.loads((csv_run / "test_metrics.json").read_text())["overall"]
    assert json.loads((plain / "test_metrics.json").read_text())["overall"] == with_cb


@pytest.mark.slow
@pytest.mark.parametrize(
    "model_args",
    [["model=linear"], ["model=stm2", "model.hidden_dim=2", "model.scales=[1,3]", "model.node_emb_dim=4"]],
    ids=["linear", "stm2"],
)
def test_models_without_routing_are_skipped_with_one_info_message(
    model_args: list[str],
    tiny_data_args: list[str],
    tmp_path: Path,
    train_tiny: Callable[..., Path],
    read_metrics: Callable[[Path], list[dict[str, float]]],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The analysis is on by default; a model without a router skips it with one line, no error."""
    with caplog.at_level(logging.INFO, logger="stm3_lightning"):
        run_dir = train_tiny(tmp_path, [*model_args, *tiny_data_args, "trainer.limit_train_batches=2"])
    messages = [r.getMessage() for r in caplog.records if "analysis" in r.getMessage().lower()]
    assert messages == [f"Routing and disentanglement analysis skipped: {model_args[0][6:]} has no router."]
    columns = set().union(*read_metrics(run_dir))
    assert "val/loss" in columns and not any(c.startswith(("routing/", "disent/")) for c in columns)
    assert not (run_dir / "plots").exists()
