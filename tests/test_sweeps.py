"""experiments/sweeps/*.yaml: every swept key is a real config key and every value validates.

Each sweep file is read as ``wandb sweep`` reads it (PyYAML), the parameters of each run are turned into the
agent's command with W&B's own ``create_sweep_command_args`` (``${args_no_hyphens}`` -> ``key=value``), and the
resulting ``stm3`` command is composed exactly as the CLI would (for ``stm3 ablations``: every cell it runs).
"""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

import pytest
import yaml
from omegaconf import DictConfig, OmegaConf
from wandb.sdk.launch.sweeps.utils import create_sweep_command_args

from stm3_lightning.cli import COMMANDS
from stm3_lightning.config.compose import compose
from stm3_lightning.reporting.ablations import (
    DEFAULT_SEEDS,
    RUNNER_KEYS,
    grid_names,
    parse_request,
    plan_grid,
)

REPO = Path(__file__).resolve().parents[1]
SWEEPS = sorted((REPO / "experiments" / "sweeps").glob("*.yaml"))


def load(path: Path) -> dict[str, Any]:
    return yaml.safe_load(path.read_text())


def parameter_values(spec: dict[str, Any]) -> list[Any]:
    """The values to validate for one sweep parameter: all listed values, or a distribution's bounds."""
    if "values" in spec:
        return list(spec["values"])
    if "value" in spec:
        return [spec["value"]]
    assert isinstance(spec["min"], (int, float)) and isinstance(spec["max"], (int, float)), spec
    assert spec["min"] < spec["max"]
    return [spec["min"], spec["max"]]


def run_parameters(sweep: dict[str, Any]) -> list[dict[str, Any]]:
    """Every combination of the parameters' values (the grid itself for grid sweeps)."""
    names = list(sweep["parameters"])
    values = [parameter_values(sweep["parameters"][n]) for n in names]
    return [dict(zip(names, combo, strict=True)) for combo in itertools.product(*values)]


def agent_command(sweep: dict[str, Any], params: dict[str, Any]) -> list[str]:
    """The argv a W&B agent runs for one run with ``params`` (macros expanded as wandb_agent.py does)."""
    flags = create_sweep_command_args({"args": {k: {"value": v} for k, v in params.items()}})
    macros = {
        "${env}": ["/usr/bin/env"],
        "${program}": [sweep["program"]],
        "${args_no_hyphens}": flags["args_no_hyphens"],
    }
    return [part for item in sweep["command"] for part in macros.get(str(item), [str(item)])]


def composed_configs(argv: list[str]) -> list[DictConfig]:
    """The configs the ``stm3`` command ``argv`` would run (one per cell for ``stm3 ablations``)."""
    assert argv[:2] == ["/usr/bin/env", "stm3"] and argv[2] in COMMANDS
    if argv[2] == "train":
        return [compose(argv[3:])]
    assert argv[2] == "ablations"
    return [compose(cell.args) for cell in plan_grid(parse_request(argv[3:]))]


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_sweep_file_shape(path: Path) -> None:
    sweep = load(path)
    assert sweep["program"] == "stm3" and sweep["method"] in ("grid", "random", "bayes")
    assert "${args_no_hyphens}" in sweep["command"] and sweep["command"][:2] == ["${env}", "${program}"]
    assert sweep["metric"]["name"].startswith("val/"), "select on validation metrics, never on test"
    assert "logger=wandb" in sweep["command"], "sweep runs must log online for the sweep to see them"


@pytest.mark.parametrize("path", SWEEPS, ids=lambda p: p.name)
def test_every_swept_value_reaches_a_valid_config(path: Path) -> None:
    sweep = load(path)
    for params in run_parameters(sweep):
        configs = composed_configs(agent_command(sweep, params))
        assert len(configs) == 1, f"one sweep run must be one training run, got {len(configs)} for {params}"
        cfg = configs[0]
        for key, value in params.items():
            if key == "ablation":
                assert cfg.logger.wandb.group == value
            elif key not in RUNNER_KEYS or key == "seed":
                assert OmegaConf.select(cfg, key) == pytest.approx(value), f"{key}={value} did not arrive"


def test_ablation_sweep_covers_the_whole_local_grid() -> None:
    sweep = load(REPO / "experiments" / "sweeps" / "ablations_pems08.yaml")
    assert sweep["method"] == "grid"
    assert sweep["parameters"]["ablation"]["values"] == grid_names()
    assert tuple(sweep["parameters"]["seed"]["values"]) == DEFAULT_SEEDS
    assert "data=pems08" in sweep["command"]


def test_lr_sweep_searches_lr_weight_decay_and_hidden_size() -> None:
    sweep = load(REPO / "experiments" / "sweeps" / "lr_pems08.yaml")
    assert sweep["method"] == "bayes"
    assert set(sweep["parameters"]) == {"optim.lr", "optim.weight_decay", "model.hidden_dim"}
    assert sweep["parameters"]["optim.lr"]["distribution"] == "log_uniform_values"
