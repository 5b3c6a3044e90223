"""Finished runs as flat records for the report: local run folders (``config.yaml`` + ``test_metrics.json``).

A run belongs to a *section* (dataset, input -> horizon, metrics protocol: only comparable runs are averaged) and to
a *group* (the variant compared across seeds): ``logger.wandb.group`` when set (``stm3 ablations`` sets it to the
ablation name), else the experiment name, else the model name.
"""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from stm3_lightning.config.compose import ConfigError

OVERALL_METRICS: tuple[str, ...] = ("mae", "rmse", "mape", "wape")
# Logged columns of the routing / disentanglement callbacks (any name containing one of these).
ANALYSIS_MARKERS: tuple[str, ...] = ("routing/", "disent/")


@dataclass
class RunRecord:
    """One finished run.

    metrics: overall test metrics (``mae``, ``rmse``, ``mape``, ``wape``; MAPE/WAPE as fractions) and the last
    logged value of every routing/disentanglement metric. per_step_mae: forecast step (1-based) -> test MAE.
    history: analysis metric -> {epoch: value} (the last value logged in each epoch).
    """

    run: str
    group: str
    section: str
    seed: int
    metrics: dict[str, float]
    per_step_mae: dict[int, float] = field(default_factory=dict)
    history: dict[str, dict[int, float]] = field(default_factory=dict)


def _get(cfg: Mapping, dotted: str, default: object = None) -> object:
    node: object = cfg
    for part in dotted.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return default
        node = node[part]
    return node


def run_group(cfg: Mapping) -> str:
    """The variant a run belongs to: W&B group, else experiment name, else model name."""
    for key in ("logger.wandb.group", "choices.experiment", "model.name"):
        value = _get(cfg, key)
        if value:
            return str(value)
    return "run"


def run_section(cfg: Mapping) -> str:
    """``<dataset> <input_len>-><horizon> (<protocol>)``: runs are only averaged within one section."""
    return (
        f"{_get(cfg, 'data.name', '?')} {_get(cfg, 'data.input_len', '?')}->{_get(cfg, 'data.horizon', '?')} "
        f"({_get(cfg, 'metrics.protocol', '?')})"
    )


def is_analysis_metric(name: str) -> bool:
    return any(marker in name for marker in ANALYSIS_MARKERS)


def history_from_rows(rows: Iterable[Mapping[str, object]]) -> dict[str, dict[int, float]]:
    """Analysis metric -> {epoch: last finite value in that epoch} from logged rows (CSV or W&B history)."""
    out: dict[str, dict[int, float]] = {}
    for row in rows:
        epoch = row.get("epoch")
        if epoch in (None, ""):
            continue
        for name, raw in row.items():
            if not is_analysis_metric(str(name)) or raw in (None, ""):
                continue
            try:
                value = float(raw)  # type: ignore[arg-type]
            except (TypeError, ValueError):
                continue
            if math.isfinite(value):
                out.setdefault(str(name), {})[int(float(epoch))] = value  # type: ignore[arg-type]
    return out


def final_values(history: Mapping[str, Mapping[int, float]]) -> dict[str, float]:
    """The value at the last logged epoch of every metric."""
    return {name: series[max(series)] for name, series in history.items() if series}


def read_metrics_csv(path: Path) -> dict[str, dict[int, float]]:
    """Routing/disentanglement history from a CSVLogger ``metrics.csv`` (empty when the file is absent)."""
    if not path.is_file():
        return {}
    with path.open(newline="") as handle:
        return history_from_rows(csv.DictReader(handle))


def load_run_dir(path: Path) -> RunRecord:
    """A record from a finished run folder (``config.yaml``, ``test_metrics.json``, optional ``csv/metrics.csv``)."""
    try:
        results = json.loads((path / "test_metrics.json").read_text())
        cfg = OmegaConf.to_container(OmegaConf.load(path / "config.yaml"), resolve=False)
    except (OSError, ValueError) as exc:
        raise ConfigError(
            f"Cannot read the run in {path} ({exc}); delete the folder or finish the run."
        ) from exc
    assert isinstance(cfg, dict)
    history = read_metrics_csv(path / "csv" / "metrics.csv")
    metrics = {k: float(results["overall"][k]) for k in OVERALL_METRICS if k in results.get("overall", {})}
    metrics.update(final_values(history))
    per_step = results.get("per_step", {}).get("mae", [])
    return RunRecord(
        run=str(path),
        group=run_group(cfg),
        section=run_section(cfg),
        seed=int(results.get("seed", _get(cfg, "seed", 0))),
        metrics=metrics,
        per_step_mae={i + 1: float(v) for i, v in enumerate(per_step)},
        history=history,
    )


def collect_local(root: Path) -> list[RunRecord]:
    """Every finished run under ``root`` (a run folder itself, or any folder above run folders), by path."""
    if not root.exists():
        raise ConfigError(f"{root} does not exist; point RUNS= (runs=) at a folder holding finished runs.")
    found = sorted(p.parent for p in root.rglob("test_metrics.json") if (p.parent / "config.yaml").is_file())
    return [load_run_dir(path) for path in found]
