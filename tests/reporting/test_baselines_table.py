from __future__ import annotations

import json
from pathlib import Path

import pytest

from stm3_lightning.reporting.baselines_table import markdown_table


def test_markdown_table_formats_mape_as_percent() -> None:
    rows = [
        {
            "model": "linear",
            "setting": "12->12",
            "protocol": "official",
            "mae": 1.234,
            "rmse": 2.0,
            "mape": 0.1,
        }
    ]
    table = markdown_table(rows)
    assert table.splitlines()[2] == "| linear | 12->12 | official | 1.23 | 2.00 | 10.00 |"


@pytest.mark.slow
def test_baselines_table_runs_every_cell(tmp_path: Path) -> None:
    from stm3_lightning.reporting.baselines_table import MODELS, PROTOCOLS, SETTINGS, baselines_table

    args = [
        "data=synthetic",
        "data.synthetic.num_nodes=4",
        "data.synthetic.num_steps=1200",
        "data.synthetic.steps_per_day=24",
        "data.steps_per_day=24",
        "data.null_val=0.0",
        "trainer.max_epochs=1",
        "trainer.limit_train_batches=2",
        "callbacks.progress_bar=none",
        "callbacks.plots=false",
        "logger.wandb.mode=disabled",
        f"paths.root_dir={tmp_path}",
    ]
    table = baselines_table(args)
    rows = json.loads((tmp_path / "baselines" / "synthetic" / "baselines.json").read_text())
    assert len(rows) == len(MODELS) * len(SETTINGS) * len(PROTOCOLS) == len(table.splitlines()) - 2
    # seasonal naive runs with a full day of input; each row equals its run's test_metrics.json
    assert {r["setting"] for r in rows if r["model"] == "seasonal_naive"} == {"24->12", "96->96"}
    run = json.loads(
        (tmp_path / "baselines" / "synthetic" / "linear_12_12_masked" / "test_metrics.json").read_text()
    )
    row = next(
        r for r in rows if r["model"] == "linear" and r["setting"] == "12->12" and r["protocol"] == "masked"
    )
    assert row["mae"] == run["overall"]["mae"] and run["protocol"] == "masked"
