"""benchmarks.gpu_epoch in its CPU smoke mode, its parity/target summaries, and gpu_check.sh with no GPU visible."""

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
NO_GPU = "No CUDA GPU is visible (torch.cuda.is_available() is False); run this script on a GPU machine."


@pytest.fixture(autouse=True)
def _repo_on_path(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """``benchmarks`` is a top-level package of the repository (``python -m benchmarks.x`` from its root)."""
    monkeypatch.syspath_prepend(str(REPO))
    monkeypatch.chdir(REPO)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow  # four small training runs and a scan comparison on CPU (~20-60 s on 2 busy cores)
def test_quick_run_on_cpu_writes_every_measurement(tmp_path: Path) -> None:
    from benchmarks import gpu_epoch

    out = tmp_path / "gpu_epoch.json"
    gpu_epoch.main(["--device", "cpu", "--quick", "--out", str(out)])
    saved = json.loads(out.read_text())
    runs = {(r["backend"], r["precision"]): r for r in saved["runs"]}
    assert set(runs) == {(b, p) for b in ("chunked", "torch") for p in ("fp32", "bf16")}
    for run in runs.values():
        assert run["step"]["median_s"] > 0 and run["data"]["median_s"] >= 0
        assert run["epoch_seconds"] > 0 and run["epoch_steps"] == saved["train_windows"] // 4
    assert saved["parity"]["ok"] and saved["parity"]["rel_diff"] <= 1e-4
    assert saved["meta"]["device"] == "cpu" and saved["config"]["backend_key"] in (
        "kernel_backend",
        "scan_backend",
    )
    ratio = saved["cpu_scan_ratio"]
    assert ratio["rows"][0]["ratio"] > 0 and ratio["target"] == 2.0
    assert saved["targets"]["chunked_speedup_vs_loop_fp32"] > 0
    assert "epoch_met" not in saved["targets"]  # the 15 s target is a GPU target


def test_parity_and_targets_summaries() -> None:
    from benchmarks import gpu_epoch

    def run(backend: str, precision: str, loss: float, epoch: float) -> dict[str, object]:
        return {"backend": backend, "precision": precision, "first_step_loss": loss, "epoch_seconds": epoch}

    runs = [
        run("chunked", "fp32", 1.0, 10.0),
        run("torch", "fp32", 1.0 + 5e-5, 40.0),
        run("chunked", "bf16", 1.1, 6.0),
    ]
    assert gpu_epoch.parity(runs)["ok"]
    assert not gpu_epoch.parity([runs[0], run("torch", "fp32", 1.01, 40.0)])["ok"]
    assert gpu_epoch.parity(runs[:1]) is None  # nothing to compare with
    found = gpu_epoch.targets(runs, torch.device("cuda"))
    assert found["epoch_met"] and found["bf16_faster"] and found["chunked_speedup_vs_loop_fp32"] == 4.0
    assert not gpu_epoch.targets([run("chunked", "fp32", 1.0, 16.0)], torch.device("cuda"))["epoch_met"]


def test_cuda_requested_without_a_gpu_is_one_sentence(monkeypatch: pytest.MonkeyPatch) -> None:
    from benchmarks import gpu_epoch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(SystemExit, match=r"^No CUDA GPU is visible .*pass --device cpu\.$"):
        gpu_epoch.main(["--quick"])


def test_gpu_check_without_a_gpu_fails_with_one_sentence(tmp_path: Path) -> None:
    """The device-machine script, dry-run on a machine without a (visible) GPU."""
    result = tmp_path / "gpu.json"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": "", "PYTHON": sys.executable, "GPU_CHECK_JSON": str(result)}
    proc = subprocess.run(
        ["bash", str(REPO / "benchmarks" / "gpu_check.sh")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2
    assert proc.stderr.strip() == NO_GPU
    assert proc.stdout == "" and not result.exists()
