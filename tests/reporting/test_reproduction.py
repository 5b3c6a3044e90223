"""Pieces of ``results/<group>.json`` that need no training: curves, stop reasons, commands, budgets."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stm3_lightning.config.compose import ConfigError, compose
from stm3_lightning.reporting.protocol_checks import selection_check, spread
from stm3_lightning.reporting.reproduction import (
    best_epoch,
    budget,
    checkpoint_of,
    command_args,
    commands,
    effective_config,
    read_curves,
    seed_dirs,
    stopped_by,
)
from stm3_lightning.run.reproduce import parse_request, run_args, settings


def test_read_curves_takes_the_last_value_per_epoch_and_marks_missing_ones(tmp_path: Path) -> None:
    path = tmp_path / "metrics.csv"
    rows = [
        {"epoch": "0", "step": "9", "train/loss": "3"},
        {
            "epoch": "0",
            "step": "10",
            "val/loss": "2.0",
            "val/mae": "2.0",
            "val/rmse": "3.0",
            "val/mape": "0.2",
        },
        {"epoch": "0", "step": "10", "test_curve/mae": "2.5", "test_curve/rmse": "3.5"},
        {
            "epoch": "1",
            "step": "20",
            "val/loss": "1.5",
            "val/mae": "1.5",
            "val/rmse": "2.5",
            "val/mape": "0.1",
        },
        {"epoch": "2", "step": "21", "test/mae": "9"},  # the final test row: no validation, not an epoch
    ]
    columns = sorted({k for r in rows for k in r})
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    curves = read_curves(path)
    assert curves["epoch"] == [1, 2] and curves["val_mae"] == [2.0, 1.5] and curves["test_mae"] == [2.5, None]
    assert read_curves(tmp_path / "absent.csv")["epoch"] == []


def test_selection_check_compares_the_test_selected_epoch_with_the_validation_selected_one() -> None:
    curves = {
        "epoch": [1, 2, 3],
        "val_mae": [3.0, 2.0, 2.5],
        "test_mae": [3.1, 2.2, 2.0],
        "test_rmse": [4, 3, 2],
    }
    out = selection_check(curves)
    assert out["val_selected"] == {"epoch": 2, "test_mae": 2.2, "test_rmse": 3}
    assert out["test_selected"]["epoch"] == 3 and out["delta_mae"] == pytest.approx(-0.2)
    # a curve that starts late but covers the validation-selected epoch: the best covered epoch, coverage stated
    partial = selection_check({**curves, "test_mae": [None, 2.2, 2.0]})
    assert partial["test_selected"]["epoch"] == 3 and partial["delta_mae"] == pytest.approx(-0.2)
    assert partial["coverage"] == "test curve at 2 of 3 epochs (epochs 2-3)"
    missing = selection_check({**curves, "test_mae": [3.1, None, 2.0]})
    assert missing["status"].startswith(
        "not recorded: the test curve covers 2 of 3 epochs, not the validation"
    )


@pytest.mark.parametrize(
    ("epochs_run", "max_epochs", "best", "expected"),
    [
        (20, 100, 5, "early stopping"),
        (15, 15, 12, "max_epochs"),
        (15, 15, None, "max_epochs"),
        (7, 15, 6, "other"),
    ],
)
def test_stopped_by(epochs_run: int, max_epochs: int, best: int | None, expected: str) -> None:
    assert stopped_by(epochs_run, max_epochs, best, 15, True) == expected


def test_budget_flags_short_schedules_and_runs_cut_by_them() -> None:
    cfg_args = ["experiment=reproduce/pems08"]
    cfg = compose(cfg_args)
    full = budget([{"seed": 1, "max_epochs": 100, "stopped_by": "early stopping"}], cfg)
    assert not full["budget_limited"] and full["patience"] == 15
    short = budget([{"seed": 1, "max_epochs": 15, "stopped_by": "max_epochs"}], cfg)
    assert short["budget_limited"] and "max_epochs 15 < the release's 100" in short["reason"]
    assert "seed(s) 1 stopped before early stopping" in short["reason"]
    impatient = budget(
        [{"seed": 1, "max_epochs": 100, "stopped_by": "early stopping"}],
        compose([*cfg_args, "callbacks.early_stopping.patience=5"]),
    )
    assert (
        impatient["budget_limited"] and impatient["reason"] == "early-stopping patience 5 < the release's 15"
    )


def test_the_command_rebuilds_the_configuration() -> None:
    request = parse_request(["data=pems08", "data.input_len=12", "data.horizon=12", "trainer.max_epochs=15"])
    cfg = compose([*run_args(request), "seed=2", "paths.output_dir=/x/seed2"])
    args = command_args(cfg, "pems08")
    assert args == ["data.input_len=12", "data.horizon=12", "trainer.max_epochs=15"]
    rebuilt = compose([*run_args(parse_request(["data=pems08", *args])), "seed=2"])
    assert settings(rebuilt) == settings(cfg)
    cmd = commands("pems08", [1, 2], "", args)
    assert (
        cmd["make"]
        == "make reproduce DATA=pems08 SEEDS=1,2 ARGS='data.input_len=12 data.horizon=12 trainer.max_epochs=15'"
    )
    assert cmd["stm3"].startswith("stm3 reproduce data=pems08 seeds=1,2 data.input_len=12")
    # a run started by hand with other checkpoint settings and no test curve: those appear in the command
    manual = compose(
        ["experiment=reproduce/pems08", "data.input_len=12", "callbacks.checkpoint.every_n_train_steps=40"]
    )
    assert command_args(manual, "pems08") == [
        "data.input_len=12",
        "callbacks.checkpoint.every_n_train_steps=40",
        "callbacks.test_every_epoch=false",
    ]


def test_effective_config_is_the_last_resume_record(tmp_path: Path) -> None:
    cfg = compose(["data.synthetic.num_nodes=4"])
    (tmp_path / "config.yaml").write_text(OmegaConf.to_yaml(cfg))
    cfg.trainer.max_epochs = 7
    (tmp_path / "config.resume-2.yaml").write_text(OmegaConf.to_yaml(cfg))
    cfg.trainer.max_epochs = 5
    (tmp_path / "config.resume-10.yaml").write_text(OmegaConf.to_yaml(cfg))
    assert effective_config(tmp_path).trainer.max_epochs == 5


def test_seed_folders_and_checkpoint_lookup(tmp_path: Path) -> None:
    for name in ("seed10", "seed2", "seedx", "notes"):
        (tmp_path / name).mkdir()
    assert seed_dirs(tmp_path) == [(2, tmp_path / "seed2"), (10, tmp_path / "seed10")]
    run = tmp_path / "seed2"
    (run / "checkpoints").mkdir()
    (run / "checkpoints" / "best-004.ckpt").write_bytes(b"x")
    assert (
        checkpoint_of(run, {"checkpoint": "elsewhere/checkpoints/best-004.ckpt"})
        == run / "checkpoints/best-004.ckpt"
    )
    assert best_epoch("elsewhere/checkpoints/best-004.ckpt") == 5 and best_epoch("final weights") is None
    with pytest.raises(ConfigError, match="names the checkpoint .* which does not exist"):
        checkpoint_of(run, {"checkpoint": "best-001.ckpt"})


def test_spread() -> None:
    out = spread([1.0, 2.0, 3.0])
    assert out["min"] == 1.0 and out["max"] == 3.0 and out["range"] == 2.0
    assert out["std"] == pytest.approx((2 / 3) ** 0.5)


def test_wall_time_is_the_timer_when_it_is_trustworthy_else_the_file_times(tmp_path: Path) -> None:
    import os

    from stm3_lightning.reporting.reproduction import wall_time
    from stm3_lightning.reporting.results_table import wall_time_cell

    for name, stamp in (("config.yaml", 1_000_000.0), ("test_metrics.json", 1_010_000.0)):  # a 10000 s run
        (tmp_path / name).write_text("{}")
        os.utime(tmp_path / name, (stamp, stamp))

    def cell(results: dict) -> str:
        seconds, source, bound = wall_time(tmp_path, results)
        return wall_time_cell({"wall_time_s": seconds, "wall_time_source": source, "wall_time_bound": bound})

    assert cell({"train_wall_s": 7200.0, "train_wall_coverage": "full"}) == "2.00 h"
    assert cell({"train_wall_s": 180.0, "train_wall_coverage": "from step 1002"}) == "≥ 0.05 h"
    # before the coverage was recorded (may miss segments and double count), or longer than the run: file times
    assert cell({"train_wall_s": 180.0}) == "≤ 2.78 h" and cell({}) == "≤ 2.78 h"
    assert cell({"train_wall_s": 19800.0, "train_wall_coverage": "full"}) == "≤ 2.78 h"
