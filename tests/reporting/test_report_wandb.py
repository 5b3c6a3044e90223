"""`stm3 report runs=wandb:<entity>/<project>`: W&B API runs become the same records as local run folders.

The W&B API is replaced by objects with the attributes the public API exposes (``config``, ``summary``, ``path``,
``scan_history()``), built from the same fixture runs as tests/reporting/test_report.py.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stm3_lightning.config.compose import ConfigError
from stm3_lightning.reporting.report_runs import RunRecord
from stm3_lightning.reporting.report_wandb import collect_wandb

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "report_runs.json").read_text())


class FakeRun:
    """A finished run as ``wandb.Api().runs(...)`` yields it: test metrics in the summary, curves in history."""

    def __init__(self, index: int, run: dict) -> None:
        self.path = ["team", "stm3", f"run{index}"]
        self.config = run["config"]
        tm = run["test_metrics"]
        self.summary = {f"test/{k}": v for k, v in tm["overall"].items()}
        self.summary.update({f"test/{k}": v for k, v in tm["horizons"].items()})
        self._history = run.get("metrics_csv", [])

    def scan_history(self) -> list[dict]:
        return self._history


class FakeApi:
    def __init__(self, runs: list) -> None:
        self._runs, self.calls = runs, []

    def runs(self, path: str, filters: dict) -> list:
        self.calls.append((path, filters))
        return self._runs


def test_wandb_runs_become_records_like_local_runs() -> None:
    unfinished = FakeRun(99, FIXTURE["runs"][0])
    unfinished.summary = {"val/loss": 1.0}  # crashed before testing: skipped
    api = FakeApi([FakeRun(i, r) for i, r in enumerate(FIXTURE["runs"])] + [unfinished])
    records = collect_wandb("team/stm3", api=api)
    assert api.calls == [("team/stm3", {"state": "finished"})]
    assert len(records) == len(FIXTURE["runs"])
    first, run = records[0], FIXTURE["runs"][0]
    assert isinstance(first, RunRecord) and first.run == "team/stm3/run0"
    assert (first.group, first.section, first.seed) == ("full", "synthetic 24->4 (official)", 1)
    assert first.metrics["mae"] == run["test_metrics"]["overall"]["mae"]
    assert first.metrics["routing/flip_rate"] == run["metrics_csv"][-1]["routing/flip_rate"]
    assert first.per_step_mae == {3: run["test_metrics"]["horizons"]["mae@3"]}
    assert set(first.history) == {"routing/flip_rate", "routing/load_entropy", "disent/cka"}


@pytest.mark.parametrize(
    ("path", "api", "message"),
    [
        ("team-only", None, "must name a project as wandb:<entity>/<project>"),
        ("team/stm3", "raise", "Cannot read the runs of W&B project team/stm3 \\(no route to host\\)"),
    ],
)
def test_wandb_errors_are_one_sentence(path: str, api: object, message: str) -> None:
    class Broken:
        def runs(self, path: str, filters: dict) -> list:
            raise OSError("no route to host")

    with pytest.raises(ConfigError, match=message):
        collect_wandb(path, api=Broken() if api == "raise" else None)
