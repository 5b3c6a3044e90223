"""The ablation grid: files are small overrides, each cell is the paper config plus exactly its switch, the runner
plans, skips, resumes and survives failures, and `make ablations` + `make report` work end to end."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from stm3_lightning.config.compose import ConfigError, compose
from stm3_lightning.models.registry import build_model
from stm3_lightning.reporting.ablations import (
    BASELINE,
    Cell,
    available_ablations,
    grid_names,
    load_ablation,
    make_cell,
    parse_request,
    plan_grid,
    render_value,
    run_grid,
)
from stm3_lightning.reporting.summary import data_info

REPO = Path(__file__).resolve().parents[2]
# Keys a cell sets besides its switch (identity of the run, not of the configuration).
RUN_KEYS = {"seed", "paths.output_dir", "logger.wandb.group", "logger.wandb.name"}


def leaves(cfg) -> dict[str, object]:
    flat: dict[str, object] = {}

    def walk(node: object, prefix: str) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(v, f"{prefix}{k}.")
        else:
            flat[prefix[:-1]] = node

    walk(OmegaConf.to_container(cfg), "")
    return {k: v for k, v in flat.items() if not k.startswith("choices.") and k not in RUN_KEYS}


def test_every_ablation_file_is_a_small_documented_override() -> None:
    assert len(available_ablations()) >= 10
    for name in available_ablations():
        spec = load_ablation(name)
        assert spec.description and spec.description != name, f"{name}.yaml needs a first-line comment"
        assert set(spec.choices) <= {"model"} and 1 <= len(spec.choices) + len(spec.overrides) <= 3
        assert all(o.startswith("model.") for o in spec.overrides)


@pytest.mark.parametrize("name", available_ablations())
def test_cell_is_paper_config_plus_exactly_its_switch(name: str, tmp_path: Path) -> None:
    base = leaves(compose(make_cell("pems08", BASELINE, 1, tmp_path).args))
    cfg = compose(make_cell("pems08", name, 1, tmp_path).args)
    spec = load_ablation(name)
    changed = {k for k, v in leaves(cfg).items() if base.get(k, "<absent>") != v}
    if "model" in spec.choices:  # another network: only model keys may differ, shared sizes are kept
        assert cfg.model.name == spec.choices["model"]
        assert all(k.startswith("model.") for k in changed)
        shared = {
            k: v for k, v in leaves(cfg).items() if k in base and k.startswith("model.") and k != "model.name"
        }
        assert shared and all(base[k] == v for k, v in shared.items())
    else:
        assert changed == {o.split("=", 1)[0] for o in spec.overrides}
    assert cfg.data.name == "pems08" and cfg.data.input_len == base["data.input_len"]
    assert cfg.logger.wandb.group == name and cfg.paths.output_dir == str(
        tmp_path / "ablations/pems08" / name / "seed1"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", grid_names())
def test_every_cell_builds_and_runs_a_forward_pass(name: str, tmp_path: Path) -> None:
    tiny = ["data.synthetic.num_nodes=4", "data.input_len=8", "data.horizon=3"]
    cfg = compose(make_cell("synthetic", name, 1, tmp_path, tiny).args)
    torch.manual_seed(0)
    pred, aux = build_model(cfg.model, data_info(cfg))(torch.randn(2, 8, 4, 3))
    assert pred.shape == (2, 3, 4, 1) and torch.isfinite(pred).all()
    assert all(torch.isfinite(v) for v in aux.values())


@pytest.mark.parametrize("value", ["none", "released", "True", "12", "a b", [1, 3], 0.0, False, None, 3e-4])
def test_render_value_round_trips(value: object) -> None:
    assert OmegaConf.from_dotlist([f"k={render_value(value)}"]).k == value


def test_parse_request_defaults_subsets_and_pass_through() -> None:
    req = parse_request(["data=pems08", "trainer.max_epochs=1"])
    assert req.names == grid_names() and req.seeds == [1, 2, 3] and req.extra == ["trainer.max_epochs=1"]
    req = parse_request(["ablation=stm2,no_agccn", "seed=7", "paths.root_dir=/x"])
    assert req.names == ["stm2", "no_agccn"] and req.seeds == [7] and req.root_dir == "/x"
    assert parse_request(["seeds=[4, 5]"]).seeds == [4, 5]
    assert len(plan_grid(parse_request(["seeds=1,2"]))) == 2 * len(grid_names())


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["ablation=no_agcn"], "Unknown ablation(s) no_agcn; choose from full, "),
        (["ablation=no_agcn,hidden"], "Did you mean no_agccn, hidden_router?"),
        (["experiment=reproduce/pems08"], "stm3 ablations sets experiment itself"),
        (["seeds=a,b"], "is not a list of integers"),
        (["oops"], "not of the form key=value"),
    ],
)
def test_parse_request_errors_are_one_clear_sentence(args: list[str], message: str) -> None:
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        parse_request(args)


def test_run_grid_skips_done_resumes_interrupted_and_survives_failures(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    cells = [
        make_cell("synthetic", name, 1, tmp_path) for name in ("full", "no_agccn", "stm2", "single_scale")
    ]
    cells[0].run_dir.mkdir(parents=True)
    (cells[0].run_dir / "config.yaml").write_text("seed: 1\n")
    (cells[0].run_dir / "test_metrics.json").write_text("{}")
    cells[1].run_dir.mkdir(parents=True)
    (cells[1].run_dir / "config.yaml").write_text("seed: 1\n")
    commands: list[list[str]] = []

    def fake_runner(command: list[str]) -> int:
        commands.append(command)
        return 3 if any("model=stm2" == a for a in command) else 0

    outcome = run_grid(cells, runner=fake_runner)
    assert [c.ablation for c in outcome.skipped] == ["full"]
    assert [c.ablation for c in outcome.ran] == ["no_agccn", "single_scale"]
    assert [c.ablation for c in outcome.failed] == ["stm2"]
    assert commands[0] == [sys.executable, "-m", "stm3_lightning.cli", "train", f"resume={cells[1].run_dir}"]
    assert commands[2][4:] == cells[3].args
    assert "FAILED with exit code 3" in capsys.readouterr().out


def test_dry_run_prints_commands_and_runs_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    cells: list[Cell] = plan_grid(
        parse_request(["ablation=no_agccn", "seed=2", f"paths.root_dir={tmp_path}"])
    )
    outcome = run_grid(cells, runner=lambda c: pytest.fail("dry run must not run"), dry_run=True)
    assert outcome.ran == outcome.failed == []
    assert "model.agccn=false seed=2" in capsys.readouterr().out


@pytest.mark.slow
def test_make_ablations_then_make_report(tmp_path: Path) -> None:
    """`make ablations DATA=synthetic ARGS=<tiny>` runs the cells; `make report` turns them into the table."""
    tiny = (
        "ablation=full,no_agccn seeds=1,2 data.synthetic.num_nodes=4 data.synthetic.num_steps=500 data.input_len=12 "
        "data.horizon=6 trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=1 "
        "trainer.limit_test_batches=2 logger.wandb.mode=disabled callbacks.progress_bar=none"
    )
    env = {k: v for k, v in os.environ.items() if k != "STM3_RUN_DIR"}
    make = ["make", "-s", "-f", str(REPO / "Makefile"), f"VENV={REPO / '.venv'}"]
    proc = subprocess.run(
        [*make, "ablations", "DATA=synthetic", f"ARGS={tiny}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    root = tmp_path / "outputs" / "ablations" / "synthetic"
    assert sorted(str(p.relative_to(root).parent) for p in root.rglob("test_metrics.json")) == [
        "full/seed1",
        "full/seed2",
        "no_agccn/seed1",
        "no_agccn/seed2",
    ]
    proc = subprocess.run(
        [*make, "report", f"RUNS={root}"], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = (tmp_path / "report" / "ablations.md").read_text()
    assert "## synthetic 12->6 (official)" in report
    assert "| full | 2 | 1,2 |" in report and "| no_agccn | 2 | 1,2 |" in report
    pngs = sorted(p.name for p in (tmp_path / "report").glob("*.png"))
    assert pngs == [  # the routing figure: the analysis callbacks are on by default for STM3
        "synthetic_12-6_official-bars.png",
        "synthetic_12-6_official-horizon_mae.png",
        "synthetic_12-6_official-routing.png",
    ]
    again = subprocess.run(
        [*make, "ablations", "DATA=synthetic", f"ARGS={tiny}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert again.returncode == 0 and "0 ran, 4 already done" in again.stdout
