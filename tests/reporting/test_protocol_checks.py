"""Protocol checks: which passes they run (each once), what they report, and their cache in the run folder."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from stm3_lightning.config.compose import compose
from stm3_lightning.reporting import protocol_checks
from stm3_lightning.reporting.protocol_checks import CHECKS, run_checks
from stm3_lightning.run.seeded_eval import EvalPass


@pytest.fixture
def passes(monkeypatch: pytest.MonkeyPatch) -> list[tuple[int, str]]:
    """Replace data/model loading and the test pass by fakes whose MAE encodes (seed, split, noise)."""
    calls: list[tuple[int, str]] = []

    def load(ckpt: Path, overrides: list[str]) -> tuple:
        cfg = compose(["seed=1", *overrides])
        windows = {"ratio": 10, "window": 12, "ratio_lookback": 11}[cfg.data.split.mode]
        dm = SimpleNamespace(test_dataloader=lambda: cfg, window_counts={"test": windows})
        return cfg, SimpleNamespace(), dm

    def evaluate(module: object, cfg, seed: int, limit: float, keep: bool = False) -> EvalPass:
        calls.append((seed, cfg.data.split.mode))
        mae = 10.0 + seed / 100 + (0.5 if not cfg.model.router_noise_at_eval else 0.0)
        mae += {"ratio": 0.0, "window": 1.0, "ratio_lookback": 2.0}[cfg.data.split.mode]
        pred = np.full((4, 2, 3, 1), 1.0 + mae)
        return EvalPass({"mae": mae, "rmse": mae + 1, "mape": 0.1}, {"mae": [mae]}, pred, np.ones_like(pred))

    monkeypatch.setattr(protocol_checks, "load_for_eval", load)
    monkeypatch.setattr(protocol_checks, "evaluate_loader", evaluate)
    return calls


def test_each_pass_runs_once_and_the_checks_report_their_effect(tmp_path: Path, passes: list) -> None:
    ckpt = tmp_path / "checkpoints" / "best-003.ckpt"
    ckpt.parent.mkdir()
    ckpt.write_bytes(b"weights")
    out = run_checks(tmp_path, ckpt, CHECKS, 5)
    # test at eval seed 1 (reused by eval seed 1, noise on and the ratio split), seeds 0,2,3,4, noise off, 2 splits
    assert sorted(passes) == sorted(
        [(1, "ratio"), (0, "ratio"), (2, "ratio"), (3, "ratio"), (4, "ratio"), (1, "ratio"), (1, "window")]
        + [(1, "ratio_lookback")]
    )
    assert out["test"]["eval_seed"] == 1 and out["test"]["windows"] == 10
    assert out["test"]["release_per_batch"]["mae"] == pytest.approx(10.01)
    assert out["eval_seeds"]["mae"] == pytest.approx([10.0, 10.01, 10.02, 10.03, 10.04])
    assert out["eval_seeds"]["range"] == pytest.approx(0.04)
    assert out["router_noise"]["delta_mae"] == pytest.approx(0.5)
    assert out["split"]["window"] == {
        "windows": 12,
        "mae": pytest.approx(11.01),
        "rmse": pytest.approx(12.01),
        "mape": 0.1,
    }
    assert sorted(p.name for p in (tmp_path / "protocol").iterdir()) == [
        "eval_seeds.json",
        "router_noise.json",
        "split.json",
        "test.json",
    ]
    passes.clear()
    assert run_checks(tmp_path, ckpt, CHECKS, 5) == out and passes == []  # cached
    os.utime(ckpt, ns=(1, 1))  # another checkpoint content: recomputed
    run_checks(tmp_path, ckpt, ("eval_seeds",), 2)
    assert sorted(passes) == [(0, "ratio"), (1, "ratio")]


def test_checks_that_do_not_apply_say_why(
    tmp_path: Path, passes: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    ckpt = tmp_path / "best-000.ckpt"
    ckpt.write_bytes(b"w")
    monkeypatch.setattr(protocol_checks, "load_for_eval", _borders_linear(protocol_checks.load_for_eval))
    out = run_checks(tmp_path, ckpt, CHECKS, 0)
    assert "eval_seeds" not in out
    assert out["router_noise"]["status"].startswith("not applicable: model linear draws no router noise")
    assert out["split"]["status"] == "not applicable: the run uses data.split.mode=borders, not ratio"


def _borders_linear(load):
    def wrapped(ckpt: Path, overrides: list[str]) -> tuple:
        _, module, dm = load(ckpt, overrides)
        cfg = compose(
            ["model=linear", "data.split.mode=borders", "data.split.borders=[100,200,300]", *overrides]
        )
        return cfg, module, dm

    return wrapped
