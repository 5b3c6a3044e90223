from pathlib import Path
from types import SimpleNamespace

import pytest
from lightning.pytorch.loggers import CSVLogger, WandbLogger
from matplotlib.figure import Figure

from stm3_lightning.callbacks.figure_sink import NamedFigure, active_wandb_loggers, log_figures


def _figure() -> Figure:
    fig = Figure(figsize=(4, 3))
    fig.add_subplot().plot([0, 1], [1, 0])
    return fig


@pytest.mark.parametrize(("per_epoch", "name"), [(True, "load_bars_epoch007.png"), (False, "load_bars.png")])
def test_png_path_has_the_epoch_only_for_snapshots(per_epoch: bool, name: str, tmp_path: Path) -> None:
    path = NamedFigure("routing/layer1/load_bars", _figure(), per_epoch).png_path(tmp_path, 7)
    assert path == tmp_path / "routing" / "layer1" / name


@pytest.mark.parametrize("global_zero", [True, False])
def test_without_wandb_pngs_go_to_the_run_dir_on_global_zero_only(global_zero: bool, tmp_path: Path) -> None:
    trainer = SimpleNamespace(is_global_zero=global_zero, loggers=[CSVLogger(tmp_path)], global_step=3)
    log_figures(trainer, tmp_path, [NamedFigure("disent/layer0/cka_matrix", _figure())], epoch=2)
    png = tmp_path / "plots" / "disent" / "layer0" / "cka_matrix_epoch002.png"
    assert png.is_file() is global_zero


def test_disabled_wandb_logger_counts_as_absent(tmp_path: Path) -> None:
    trainer = SimpleNamespace(
        loggers=[CSVLogger(tmp_path), WandbLogger(save_dir=str(tmp_path), mode="disabled")]
    )
    assert active_wandb_loggers(trainer) == []
