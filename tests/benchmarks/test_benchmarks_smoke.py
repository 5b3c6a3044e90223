"""Each benchmark script runs end to end in its tiny ``--quick`` mode and writes the promised JSON fields."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``benchmarks`` is a top-level package of the repository (``python -m benchmarks.x`` from its root)."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(REPO)
    threads = torch.get_num_threads()
    yield
    torch.set_num_threads(threads)


def test_train_step_quick(tmp_path: Path) -> None:
    from benchmarks import train_step

    out = tmp_path / "train_step.json"
    result = train_step.main(["--quick", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    assert saved["speedup_vs_ref"] == pytest.approx(result["speedup_vs_ref"])
    assert saved["speedup_vs_ref"] > 0
    assert saved["small_batch"]["parity"]["ok"]
    assert saved["epoch_seconds"] > 0
    big = saved["training_batch"]
    assert big["data"]["median_s"] >= 0 and big["step"]["median_s"] > 0
    assert saved["epoch_steps"] == saved["train_windows"] // 4  # quick mode: epoch batch 4
    assert saved["etth1_epoch_seconds"] == pytest.approx(saved["etth1"]["epoch_seconds"])
    assert saved["etth1_epoch_seconds"] > 0
    assert saved["etth1"]["training_batch"]["step"]["median_s"] > 0


def test_train_step_quick_bf16(tmp_path: Path) -> None:
    """--bf16 times the autocast step against fp32; --bf16-train trains both precisions and compares test MAE."""
    from benchmarks import train_step

    out = tmp_path / "train_step.json"
    train_step.main(
        [
            "--quick",
            "--threads",
            "1",
            "--skip-ref",
            "--skip-etth1",
            "--bf16",
            "--bf16-train",
            "--out",
            str(out),
        ]
    )
    bf16 = json.loads(out.read_text())["bf16"]
    assert bf16["step"]["speedup_vs_fp32"] > 0 and bf16["step"]["loss_rel_diff"] < 0.05
    runs = bf16["training"]["runs"]
    assert set(runs) == {"32-true", "bf16-mixed"} and all(
        r["mae"] > 0 and r["seconds"] > 0 for r in runs.values()
    )
    assert bf16["training"]["mae_diff"] == pytest.approx(runs["bf16-mixed"]["mae"] - runs["32-true"]["mae"])


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # torch.jit deprecations raised by importing dynamo
def test_train_step_quick_compile(tmp_path: Path) -> None:
    """--compile compiles the training step (minutes on a loaded machine) and records parity and break-even."""
    from benchmarks import train_step

    out = tmp_path / "train_step.json"
    train_step.main(
        ["--quick", "--threads", "1", "--skip-ref", "--skip-etth1", "--compile", "--out", str(out)]
    )
    comp = json.loads(out.read_text())["compile"]
    # The whole model traces (the contrastive loss's routing-shaped random draws run eagerly) and equals eager.
    assert comp["scope"] == "whole model" and not comp["failed_scopes"], comp.get("failed_scopes")
    assert comp["parity"]["ok"] and comp["compile_and_first_step_s"] > 0
    assert comp["kept"] == (comp["speedup_vs_eager"] > 1.0)


def test_scaling_quick(tmp_path: Path) -> None:
    from benchmarks import scaling

    out = tmp_path / "scaling.json"
    scaling.main(["--quick", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    measured = {(r["L"], r["N"]) for r in saved["results"] if "median_s" in r}
    assert measured == {(8, 4), (32, 4), (8, 8)}  # the L sweep at N=4 and the N sweep at L=8
    assert saved["linearity"][0]["bound"] == pytest.approx(1.2 * 32 / 8)
    assert saved["time_ratio_L"] > 0


def test_flops_quick(tmp_path: Path) -> None:
    from benchmarks import flops

    out = tmp_path / "flops.json"
    flops.main(["--quick", "--threads", "1", "--out", str(out)])
    saved = json.loads(out.read_text())
    per_sample = saved["flops_per_sample"]
    assert per_sample["scan"] > 0 and per_sample["total"] > per_sample["scan"]
    parts = {row["part"]: row for row in saved["parts"]}
    assert {"agccn", "moe", "head", "expert/selective scan", "step"} <= set(parts)
    # The top-level parts' FLOPs add up to the whole step's (same recorded inputs, same counting rules).
    top = ["embedding", "agccn", "moe", "head", "contrastive"]
    assert sum(parts[p]["gflop_per_sample"] for p in top) == pytest.approx(
        parts["step"]["gflop_per_sample"], rel=1e-3
    )
    assert saved["biggest"]["top_level"] in parts
    assert saved["matmul_gflops"]["fp32"] > 0


def test_module_entry_point(tmp_path: Path) -> None:
    """``python -m benchmarks.scaling`` works from the repository root in a fresh interpreter."""
    out = tmp_path / "scaling.json"
    env = {**os.environ, "PYTHONPATH": ""}
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.scaling", "--quick", "--threads", "1", "--out", str(out)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "time(L=32) / time(L=8)" in proc.stdout
    assert json.loads(out.read_text())["results"]


def test_train_step_quick_memory_limited(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """When the memory guard picks a smaller batch, loader batches are cut and the epoch is scaled per window."""
    from benchmarks import train_step

    monkeypatch.setattr(
        train_step, "fitting_batch", lambda target, _need: (2, "Not enough memory for this test.")
    )
    out = tmp_path / "train_step.json"
    saved = train_step.main(["--quick", "--threads", "1", "--skip-ref", "--out", str(out)])
    assert saved["training_batch"]["batch"] == 2
    assert saved["memory_note"] == "Not enough memory for this test."
    assert "memory-limited" in saved["epoch_basis"]
    assert saved["speedup_vs_ref"] is None and "ref" not in saved["small_batch"]


def test_epoch_times_quick(tmp_path: Path) -> None:
    from benchmarks import epoch_times

    out = tmp_path / "epoch_times.json"
    epoch_times.main(
        ["--quick", "--threads", "1", "--only", "pems08,knowair", "--repeats", "2", "--out", str(out)]
    )
    saved = {r["dataset"]: r for r in json.loads(out.read_text())["results"]}
    pems = saved["pems08"]
    # 10714 training rows of PEMS08 (ratio split; at 96 -> 96 they give the release's 10523 windows), L=8, H=4
    assert pems["train_windows"] == 10714 - 8 - 4 + 1
    assert pems["epoch_steps"] == pems["train_windows"] // 4 and pems["step"]["repeats"] == 2
    per_step = pems["step"]["median_s"] + pems["data"]["median_s"]
    assert pems["epoch_seconds"] == pytest.approx(pems["epoch_steps"] * per_step)
    assert "steps x measured batch-4 step" in pems["epoch_basis"] and pems["source"].startswith("random")
    assert saved["knowair"]["epoch_seconds"] is None and saved["knowair"]["step"]["median_s"] > 0


def test_epoch_times_missing_file_falls_back_to_random_batches(tmp_path: Path) -> None:
    """A dataset whose file is absent is timed on random batches of its shape, not a crash of the whole table."""
    from benchmarks import epoch_times

    cfg = epoch_times.paper_config("electricity", str(tmp_path), quick=False)
    batches = epoch_times.dataset_batches(cfg, quick=False, seed=0)
    assert batches.source.startswith("random (No Electricity data found")
    x, _ = next(batches.iterator(2, 0))
    assert x.shape[2] == 321 and batches.train_windows is not None
