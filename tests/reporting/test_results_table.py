"""``results/README.md`` from results files, published numbers with sources, and the project's baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stm3_lightning.reporting.protocol_checks import SCALER_NOTE
from stm3_lightning.reporting.results_table import load_reference, render, write_table


def seed(k: int, mae: float, rmse: float) -> dict:
    machine = {"cpu": "CPU X", "torch_threads": 2, "torch": "2.13.0", "git_commit": "abcdef1234567"}
    return {
        "seed": k,
        "test": {"mae": mae, "rmse": rmse, "mape": 0.1},
        "best_epoch": 9,
        "epochs_run": 15,
        "max_epochs": 15,
        "stopped_by": "max_epochs",
        "wall_time_s": 3600.0,
        "machine": machine,
    }


def checks() -> dict:
    return {
        "checkpoint_selection": {
            "per_seed": [
                {
                    "seed": 1,
                    "val_selected": {"epoch": 9, "test_mae": 16.0},
                    "test_selected": {"epoch": 12, "test_mae": 15.5},
                    "delta_mae": -0.5,
                },
                {"seed": 2, "status": "not recorded: the test curve covers 0 of 15 epochs"},
            ]
        },
        "rmse_averaging": {
            "per_seed": [
                {
                    "seed": 1,
                    "global": {"mae": 16.0, "rmse": 25.0, "rmse_mean_over_steps": 24.5, "mape": 0.1},
                    "release_per_batch": {"mae": 16.0, "rmse": 23.0, "mape": 0.1},
                    "delta_rmse": -2.0,
                }
            ]
        },
        "router_noise_at_eval": {"per_seed": [{"seed": 1, "delta_mae": 0.001}]},
        "eval_seed_spread": {"per_seed": [{"seed": 1, "mae": [16.0] * 5, "range": 0.002, "std": 0.0007}]},
        "split": {
            "per_seed": [
                {
                    "seed": 1,
                    "ratio": {"mae": 16.0, "windows": 3548},
                    "window": {"mae": 15.9, "windows": 3570},
                    "ratio_lookback": {"mae": 16.1, "windows": 3560},
                }
            ]
        },
        "scaler": {"status": SCALER_NOTE},
    }


def doc(name: str, dataset: str, length: int, seeds: list[dict], units: str = "original") -> dict:
    return {
        "name": name,
        "dataset": dataset,
        "input_len": length,
        "horizon": length,
        "variant": "",
        "protocol": {"units": units},
        "budget": {"max_epochs": 15, "patience": 15, "budget_limited": True},
        "seeds": seeds,
        "command": {"make": f"make reproduce DATA={dataset}"},
        "protocol_checks": checks(),
    }


@pytest.fixture
def results(tmp_path: Path) -> Path:
    (tmp_path / "reference").mkdir()
    (tmp_path / "pems08-12-12.json").write_text(
        json.dumps(doc("pems08-12-12", "pems08", 12, [seed(1, 16.0, 25.0), seed(2, 17.0, 26.0)]))
    )
    (tmp_path / "etth1-96-96.json").write_text(
        json.dumps(doc("etth1-96-96", "etth1", 96, [seed(1, 0.41, 0.64)], units="z-scored"))
    )
    published = {
        "entries": [
            {
                "model": "STM3 (paper)",
                "paper": True,
                "dataset": "pems08",
                "input_len": "not stated",
                "horizon": "not stated",
                "metrics": {"mae": 10.9759, "rmse": 17.2195},
                "digits": 4,
                "source": "digest",
            },
            {
                "model": "Peer",
                "dataset": "pems08",
                "input_len": 12,
                "horizon": 12,
                "metrics": {"mae": 15.95, "rmse": 25.22, "mape": 10.09},
                "source": "Peer paper, Table 2",
            },
            {
                "model": "LTSF peer",
                "dataset": "etth1",
                "input_len": 96,
                "horizon": 96,
                "metrics": {"mae": 0.405, "mse": 0.386},
                "digits": 3,
                "source": "LTSF paper, Table 10",
            },
        ]
    }
    (tmp_path / "reference" / "published.json").write_text(json.dumps(published))
    baselines = [
        {
            "model": "linear",
            "setting": "12->12",
            "protocol": "official",
            "mae": 21.93,
            "rmse": 34.53,
            "mape": 0.1385,
        },
        {
            "model": "linear",
            "setting": "12->12",
            "protocol": "masked",
            "mae": 21.98,
            "rmse": 34.5,
            "mape": 0.1404,
        },
        {
            "model": "linear",
            "setting": "96->96",
            "protocol": "official",
            "mae": 50.57,
            "rmse": 73.66,
            "mape": 0.4,
        },
    ]
    (tmp_path / "reference" / "baselines-pems08.json").write_text(json.dumps(baselines))
    return tmp_path


def test_each_setting_lists_ours_the_paper_peers_and_baselines(results: Path) -> None:
    text = render(results)
    pems = text.split("### pems08 12→12")[1].split("###")[0]
    assert "| STM3 (this repo) | 16.50 ± 0.71 | 25.50 ± 0.71 | 10.00 ± 0.00 | seeds 1,2;" in pems
    assert "**budget-limited**" in pems and "ran 15/15" in pems
    assert "| STM3 (paper) | 10.9759 | 17.2195 |" in pems and "| Peer | 15.95 | 25.22 | 10.09 |" in pems
    assert "linear (project baseline, 12->12) | 21.93 | 34.53 | 13.85 | official" in pems
    assert "21.98" not in pems and "50.57" not in pems  # masked protocol and other horizons stay out
    etth1 = text.split("### etth1 96→96")[1].split("##")[0]
    assert "z-scored" in etth1 and "| MSE |" in etth1
    assert "| STM3 (this repo) | 0.410 | 0.410 | – |" in etth1  # MSE = RMSE^2 = 0.64^2
    assert "| LTSF peer | 0.405 | 0.386 |" in etth1


def test_gap_and_protocol_sections_are_generated_with_numbers(results: Path) -> None:
    text = render(results)
    gap = text.split("## Gap to the paper's PEMSD8 number")[1].split("##")[0]
    assert "MAE 16.50 vs the paper's 10.9759 (+5.52, +50 %)" in gap and "RMSE 25.50 vs 17.2195 (+8.28)" in gap
    why = text.split("## Why the reported PEMSD8 number may differ")[1].split("## Seeds")[0]
    assert "MAE -0.500 on average (seed 1: epoch 9 → 12, 16.00 → 15.50)" in why
    assert "RMSE 23.00 vs global 25.00 (mean of per-step RMSEs 24.50)" in why
    assert "router noise at evaluation off instead of on: MAE +0.0010" in why
    assert "range up to 0.0020" in why and "window 15.90 (3570 windows)" in why
    assert SCALER_NOTE in why
    assert (
        "| pems08-12-12 | 1 | 16.000 | 25.000 | 9 | 15 / 15 | max_epochs | 1.00 h | CPU X, 2 threads" in text
    )


def test_write_table_and_reference_validation(results: Path) -> None:
    path = write_table(results)
    assert path == results / "README.md" and path.read_text().startswith("# Reproduction results")
    (results / "reference" / "published.json").write_text(json.dumps({"entries": [{"model": "X"}]}))
    with pytest.raises(ValueError, match="published entry X lacks dataset"):
        load_reference(results)


def test_a_partial_test_curve_is_named_in_the_selection_sentence() -> None:
    from stm3_lightning.reporting.results_table import protocol_lines

    doc = {"name": "pems08-12-12", "protocol_checks": checks()}
    doc["protocol_checks"]["checkpoint_selection"]["per_seed"][0]["coverage"] = "test curve at 8 of 15 epochs"
    line = protocol_lines(doc)[0]
    assert "16.00 → 15.50 (best of the test curve at 8 of 15 epochs))" in line


def curve(val: list[float], test: list[float | None]) -> dict:
    return {"epoch": list(range(1, len(val) + 1)), "val_mae": val, "test_mae": test}


def test_a_variant_is_compared_with_the_faithful_runs_cut_to_its_epochs(results: Path) -> None:
    from stm3_lightning.reporting.results_table import budget_matched

    base = json.loads((results / "pems08-12-12.json").read_text())
    base["per_epoch"] = {
        # seed 1: test curve only from epoch 3; seed 2: everywhere
        "seed1": curve([22.0, 21.0, 21.5, 19.0], [None, None, 20.5, 18.0]),
        "seed2": curve([23.0, 22.5, 22.0, 18.5], [23.5, 23.0, 22.4, 18.2]),
    }
    (results / "pems08-12-12.json").write_text(json.dumps(base))
    variant = doc("pems08-12-12-repaired", "pems08", 12, [{**seed(1, 19.9, 30.0), "epochs_run": 3}])
    variant["variant"] = "repaired"
    variant["per_epoch"] = {"seed1": curve([21.8, 20.2, 20.6], [22.1, 20.9, 21.0])}
    (results / "pems08-12-12-repaired.json").write_text(json.dumps(variant))
    assert budget_matched(base["per_epoch"]["seed1"], 3) == {"epoch": 2, "val_mae": 21.0, "test_mae": None}
    assert budget_matched(variant["per_epoch"]["seed1"], 4) is None
    text = render(results)
    section = text.split("## Paper-intent variants at the same budget")[1].split("## Seeds")[0]
    assert (
        "`pems08-12-12-repaired` vs `pems08-12-12` cut to the first 3 epochs (validation-selected epoch within them; "
        "test MAE from the test curve at that epoch): validation MAE 20.20 (seed 1: 20.20) vs 21.50 ± 0.71 "
        "(seed 1: 21.00, seed 2: 22.00); test MAE 20.90 (seed 1: 20.90) vs 22.40 (seed 2: 22.40)."
    ) in section
    table = text.split("### pems08 12→12")[1].split("###")[0]
    assert "| STM3 (this repo, repaired) | 19.90 |" in table
    assert table.index("| STM3 (this repo) |") < table.index("| STM3 (this repo, repaired) |")
    why = text.split("## Why the reported PEMSD8 number may differ")[1].split("## ")[0].strip().splitlines()
    assert not any("repaired" in line for line in why) and why[-1] == f"- scaler: {SCALER_NOTE}."


@pytest.mark.parametrize(
    "length", [48, 96]
)  # 48: no faithful run; 96: a faithful run without per-epoch curves
def test_no_variant_section_without_faithful_curves_to_compare_with(results: Path, length: int) -> None:
    variant = doc(f"etth1-{length}-{length}-time", "etth1", length, [seed(1, 0.4, 0.6)], units="z-scored")
    variant["variant"], variant["per_epoch"] = "time", {"seed1": curve([0.5] * 15, [0.5] * 15)}
    (results / f"etth1-{length}-{length}-time.json").write_text(json.dumps(variant))
    assert "## Paper-intent variants" not in render(results)


def test_curves_per_epoch_show_every_seed_with_gaps_marked(results: Path) -> None:
    base = json.loads((results / "pems08-12-12.json").read_text())
    base["per_epoch"] = {
        "seed1": curve([22.0, 21.0, 21.5], [None, None, 20.5]),
        "seed2": curve([23.0, 22.5], [23.5, 23.0]),
    }
    (results / "pems08-12-12.json").write_text(json.dumps(base))
    text = render(results).split("## Curves per epoch")[1].split("## Commands")[0]
    table = text.split("#### `pems08-12-12`")[1]
    assert "| epoch | seed 1 val MAE | seed 1 test MAE | seed 2 val MAE | seed 2 test MAE |" in table
    assert "| 1 | 22.00 | – | 23.00 | 23.50 |" in table and "| 3 | 21.50 | 20.50 | – | – |" in table
    assert "#### `etth1-96-96`" not in text  # no per-epoch curves in that file


def test_the_committed_report_is_what_the_committed_results_files_give() -> None:
    committed = Path(__file__).resolve().parents[2] / "results"
    assert (committed / "README.md").read_text() == render(committed), (
        "results/README.md is stale or edited by hand; regenerate it with `make results`."
    )


def test_the_horizon_line_names_each_windows_epochs_and_budget(results: Path) -> None:
    long = doc("pems08-96-96", "pems08", 96, [{**seed(1, 31.5, 48.0), "epochs_run": 1}])
    (results / "pems08-96-96.json").write_text(json.dumps(long))
    why = render(results).split("## Why the reported PEMSD8 number may differ")[1].split("## ")[0]
    assert (
        "- horizon (not stated for the paper's number): this repo's STM3 test MAE 12→12: 16.50 (epochs run 15/15, "
        "budget-limited), 96→96: 31.50 (epochs run 1, budget-limited); compare horizons only at equal budgets."
    ) in why


def test_the_machine_cell_names_the_thread_count_in_words() -> None:
    from stm3_lightning.reporting.results_table import machine_cell

    m = {"cpu": "AMD EPYC", "torch_threads": 1, "torch": "2.13.0+cpu", "git_commit": "bc78f50116abcdef"}
    assert machine_cell(m) == "AMD EPYC, 1 thread, torch 2.13.0+cpu, bc78f50116"
    assert machine_cell({**m, "torch_threads": 2}).startswith("AMD EPYC, 2 threads, ")
