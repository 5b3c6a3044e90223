"""Finished runs of a W&B project as report records (``stm3 report runs=wandb:<entity>/<project>``).

Each run's config is the resolved run config (the logger passes it to ``wandb.init``); test metrics come from the
run summary (``test/mae`` ..., ``test/mae@<h>`` at the reported horizons) and routing/disentanglement curves from
its history. Needs network access and ``wandb login``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from stm3_lightning.config.compose import ConfigError
from stm3_lightning.reporting.report_runs import (
    OVERALL_METRICS,
    RunRecord,
    final_values,
    history_from_rows,
    run_group,
    run_section,
)

_STEP_KEY = re.compile(r"^test/mae@(\d+)$")


def record_from_wandb(run: Any) -> RunRecord | None:
    """A record from a W&B API run (``.config``, ``.summary``, ``.scan_history()``); None without test metrics."""
    summary: Mapping[str, Any] = dict(run.summary)
    if "test/mae" not in summary:
        return None
    cfg: Mapping[str, Any] = dict(run.config)
    history = history_from_rows(run.scan_history())
    metrics = {k: float(summary[f"test/{k}"]) for k in OVERALL_METRICS if f"test/{k}" in summary}
    metrics.update(final_values(history))
    steps = {int(m.group(1)): float(v) for k, v in summary.items() if (m := _STEP_KEY.match(k))}
    return RunRecord(
        run="/".join(run.path) if isinstance(run.path, (list, tuple)) else str(run.path),
        group=run_group(cfg),
        section=run_section(cfg),
        seed=int(cfg.get("seed", 0)),
        metrics=metrics,
        per_step_mae=dict(sorted(steps.items())),
        history=history,
    )


def records_from_runs(runs: Iterable[Any]) -> list[RunRecord]:
    return [rec for run in runs if (rec := record_from_wandb(run)) is not None]


def collect_wandb(path: str, api: Any = None) -> list[RunRecord]:
    """Records of the finished runs in ``<entity>/<project>`` (``api``: a ``wandb.Api``-like object, for tests)."""
    if path.count("/") != 1:
        raise ConfigError(f"runs=wandb:{path} must name a project as wandb:<entity>/<project>.")
    try:
        if api is None:
            import wandb

            api = wandb.Api(timeout=30)
        return records_from_runs(api.runs(path, filters={"state": "finished"}))
    except ConfigError:
        raise
    except Exception as exc:  # the W&B client raises many types (auth, network, not found)
        first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ConfigError(
            f"Cannot read the runs of W&B project {path} ({first}); check `wandb login` and the network, or "
            "report from local run folders with RUNS=<dir>."
        ) from exc
