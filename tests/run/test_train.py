"""End-to-end runs through the real entry points (config -> data -> model -> fit -> test -> files)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

from stm3_lightning.cli import main
from stm3_lightning.config.compose import compose
from stm3_lightning.run.train import train

REPO = Path(__file__).resolve().parents[2]
TINY = [
    "data.synthetic.num_nodes=6",
    "data.synthetic.num_steps=700",
    "trainer.max_epochs=2",
    "callbacks.progress_bar=none",
    "logger.wandb.mode=disabled",
]


def test_fast_dev_run_synthetic(tmp_path: Path) -> None:
    cfg = compose(["model=linear", *TINY, "trainer.fast_dev_run=true", f"paths.output_dir={tmp_path}"])
    results = train(cfg)
    assert set(results["overall"]) == {"mae", "rmse", "mape", "wape"}
    assert (tmp_path / "test_metrics.json").is_file()


def test_logged_test_mae_equals_recomputed_from_predictions(tmp_path: Path) -> None:
    cfg = compose(["model=linear", *TINY, "metrics.save_predictions=true", f"paths.output_dir={tmp_path}"])
    train(cfg)
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    saved = np.load(tmp_path / "predictions.npz")
    assert saved["pred"].shape[0] == metrics["windows"]["test"]
    assert metrics["overall"]["mae"] == pytest.approx(np.abs(saved["pred"] - saved["true"]).mean(), rel=1e-5)
    rmse = np.sqrt(((saved["pred"] - saved["true"]) ** 2).mean())
    assert metrics["overall"]["rmse"] == pytest.approx(rmse, rel=1e-5)
    assert metrics["protocol"] == "official" and "best-" in metrics["checkpoint"]
    assert (tmp_path / "horizon_mae.png").stat().st_size > 1000
    assert (tmp_path / "csv" / "metrics.csv").is_file()


def test_test_metrics_say_how_many_windows_were_scored(tmp_path: Path) -> None:
    """``trainer.limit_test_batches`` cuts the test set: the file names the windows really scored."""
    cfg = compose(
        ["model=persistence", *TINY, "data.eval_batch_size=16", "trainer.limit_test_batches=2"]
        + [f"paths.output_dir={tmp_path / 'cut'}"]
    )
    train(cfg)
    cut = json.loads((tmp_path / "cut" / "test_metrics.json").read_text())
    assert cut["scored_windows"] == 32 and cut["windows"]["test"] == 105
    train(compose(["model=persistence", *TINY, f"paths.output_dir={tmp_path / 'full'}"]))
    full = json.loads((tmp_path / "full" / "test_metrics.json").read_text())
    assert full["scored_windows"] == full["windows"]["test"] == 105


def test_parameter_free_baseline_skips_fit(tmp_path: Path) -> None:
    results = train(compose(["model=persistence", *TINY, f"paths.output_dir={tmp_path}"]))
    assert results["overall"]["mae"] > 0


def test_run_dir_never_reused(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    train(compose(["model=persistence", *TINY, f"paths.output_dir={tmp_path}"]))
    os.environ.pop("STM3_RUN_DIR", None)
    before = (tmp_path / "test_metrics.json").read_bytes()
    code = main(["train", "model=persistence", *TINY, f"paths.output_dir={tmp_path}"])
    assert code == 2
    assert "already holds a run" in capsys.readouterr().err
    assert (tmp_path / "test_metrics.json").read_bytes() == before


def test_default_run_dir_layout(tmp_path: Path) -> None:
    train(compose(["model=persistence", *TINY, f"paths.root_dir={tmp_path}"]))
    runs = list((tmp_path / "synthetic" / "persistence").iterdir())
    assert len(runs) == 1 and (runs[0] / "config.yaml").is_file()


def test_summary_prints_params(capsys: pytest.CaptureFixture) -> None:
    assert (
        main(["summary", "model=linear", "data.synthetic.num_nodes=5", "data.input_len=6", "data.horizon=3"])
        == 0
    )
    out = capsys.readouterr().out
    assert "params: 105" in out  # 5 nodes x (6x3 weights + 3 biases)


@pytest.mark.slow
def test_fast_dev_run_pems08(real_data_dir: Path, tmp_path: Path) -> None:
    cfg = compose(
        [
            "data=pems08",
            "model=linear",
            "trainer.fast_dev_run=true",
            "callbacks.progress_bar=none",
            f"paths.data_dir={real_data_dir}",
            f"paths.output_dir={tmp_path}",
        ]
    )
    assert train(cfg)["overall"]["mae"] > 0


@pytest.mark.slow
def test_make_train_pems08_smoke(real_data_dir: Path, tmp_path: Path) -> None:
    args = (
        "trainer.max_epochs=1 trainer.limit_train_batches=2 trainer.limit_val_batches=2 "
        f"trainer.limit_test_batches=2 paths.output_dir={tmp_path} callbacks.progress_bar=none"
    )
    env = {**os.environ, "STM3_DATA_DIR": str(real_data_dir), "WANDB_MODE": "offline"}
    env.pop("STM3_RUN_DIR", None)
    proc = subprocess.run(
        ["make", "-s", "train", "DATA=pems08", f"ARGS={args}"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.loads((tmp_path / "test_metrics.json").read_text())
    assert metrics["dataset"] == "pems08" and metrics["overall"]["mae"] > 0
    assert list((tmp_path / "wandb").glob("offline-run-*")), "W&B offline run files missing"


def test_save_predictions_refused_under_ddp(capsys: pytest.CaptureFixture) -> None:
    code = main(["train", "model=linear", "trainer=ddp_cpu", "metrics.save_predictions=true", *TINY])
    assert code == 2 and "single process" in capsys.readouterr().err
