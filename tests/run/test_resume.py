"""Resuming: which config and checkpoint a resume uses, and exactness after a real SIGKILL/SIGTERM mid-epoch."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from stm3_lightning.cli import main
from stm3_lightning.config.compose import ConfigError, compose
from stm3_lightning.run.checkpoints import CheckpointError
from stm3_lightning.run.resume import resolve_ckpt_path, resume_config, train_config

REPO = Path(__file__).resolve().parents[2]
# 96 batches per epoch; "best" = the latest epoch (monitor=step), so the test metrics depend on every step.
RUN = [
    "model=linear",
    "data.synthetic.num_nodes=6",
    "data.synthetic.num_steps=700",
    "data.batch_size=4",
    "trainer.max_epochs=3",
    "callbacks.checkpoint.every_n_train_steps=10",
    "callbacks.checkpoint.monitor=step",
    "callbacks.checkpoint.mode=max",
    "callbacks.progress_bar=none",
    "callbacks.plots=false",
    "logger.wandb.mode=disabled",
]
STEPS_PER_EPOCH = 96
# Runs ``stm3`` in a subprocess that SIGKILLs itself at the end of optimizer step KILL_AT_STEP (before that
# step's checkpoint is written): a real kill at a known, mid-epoch point.
KILLER = """
import os, signal, sys
from lightning.pytorch.callbacks import Callback
import stm3_lightning.run.train as train

class KillAt(Callback):
    def on_train_batch_end(self, trainer, *args):
        if trainer.global_step == int(os.environ["KILL_AT_STEP"]):
            os.kill(os.getpid(), signal.SIGKILL)

build = train.build_callbacks
train.build_callbacks = lambda *a, **k: [*build(*a, **k), KillAt()]
from stm3_lightning.cli import main
sys.exit(main(sys.argv[1:]))
"""


def saved_run(tmp_path: Path, *extra: str) -> Path:
    run = tmp_path / "run"
    run.mkdir()
    OmegaConf.save(compose(["model=linear", *extra, f"paths.output_dir={run}"]), run / "config.yaml")
    return run


# ------------------------------------------------------------------------------------------------ config


def test_resume_reuses_the_saved_config_with_overrides(tmp_path: Path) -> None:
    run = saved_run(tmp_path, "seed=5", "trainer.max_epochs=3")
    cfg = train_config([f"resume={run}", "trainer.max_epochs=9"])
    assert (cfg.seed, cfg.trainer.max_epochs, cfg.model.name) == (5, 9, "linear")
    assert (cfg.paths.output_dir, cfg.resume, cfg.ckpt_path) == (str(run), str(run), "last")
    assert resume_config(run, ["ckpt_path=/x/best.ckpt"]).ckpt_path == "/x/best.ckpt"


def test_ckpt_path_last_with_a_run_folder_resumes_it(tmp_path: Path) -> None:
    run = saved_run(tmp_path, "seed=5")
    cfg = train_config(["model=linear", f"paths.output_dir={run}", "ckpt_path=last"])
    assert (cfg.resume, cfg.seed) == (str(run), 5)


def test_ckpt_path_last_on_a_new_folder_starts_fresh(tmp_path: Path) -> None:
    cfg = train_config(["model=linear", f"paths.output_dir={tmp_path / 'new'}", "ckpt_path=last"])
    assert (cfg.resume, cfg.ckpt_path) == ("", "")


@pytest.mark.parametrize(
    "args, message",
    [
        (["resume={tmp}/nothing"], "is not a run folder"),
        (["resume={run}", "model=persistence"], "model=persistence cannot change"),
        (["resume={run}", "experiment=reproduce/pems08"], "experiment=reproduce/pems08 cannot change"),
        (["resume={run}", "paths.output_dir={tmp}/elsewhere"], "writes into that folder"),
        (["resume={run}", "trainer.max_epoch=3"], "Unknown config key 'trainer.max_epoch'"),
        (["model=linear", "ckpt_path=last"], "ckpt_path=last needs the run to continue"),
    ],
)
def test_bad_resume_requests(tmp_path: Path, args: list[str], message: str) -> None:
    run = saved_run(tmp_path)
    with pytest.raises(ConfigError, match=message):
        train_config([a.format(tmp=tmp_path, run=run) for a in args])


def test_resolve_ckpt_path(tmp_path: Path) -> None:
    cfg = OmegaConf.create({"ckpt_path": ""})
    assert resolve_ckpt_path(cfg, tmp_path) is None
    cfg.ckpt_path = "last"
    assert resolve_ckpt_path(cfg, tmp_path) is None  # killed before its first checkpoint: start over
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "last.ckpt").write_bytes(b"x")
    assert resolve_ckpt_path(cfg, tmp_path) == str(tmp_path / "checkpoints" / "last.ckpt")
    cfg.ckpt_path = str(tmp_path / "gone.ckpt")
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve_ckpt_path(cfg, tmp_path)


# ------------------------------------------------------------------------------------------- end to end


def stm3_env() -> dict[str, str]:
    env = {**os.environ, "WANDB_MODE": "disabled", "PYTHONUNBUFFERED": "1"}
    env.pop("STM3_RUN_DIR", None)
    return env


def overall(run: Path) -> dict[str, float]:
    return json.loads((run / "test_metrics.json").read_text())["overall"]


def csv_steps(run: Path) -> list[tuple[str, str]]:
    with (run / "csv" / "metrics.csv").open() as handle:
        return [(r["epoch"], r["step"]) for r in csv.DictReader(handle)]


def assert_same_run(resumed: Path, reference: Path) -> None:
    """Bit-identical final weights and optimizer state, equal test metrics, the same CSV history."""
    assert overall(resumed) == overall(reference)
    a = torch.load(resumed / "checkpoints" / "last.ckpt", weights_only=True)
    b = torch.load(reference / "checkpoints" / "last.ckpt", weights_only=True)
    assert a["global_step"] == b["global_step"] == 3 * STEPS_PER_EPOCH
    for key, value in b["state_dict"].items():
        assert torch.equal(a["state_dict"][key], value), key
    for slot, state in b["optimizer_states"][0]["state"].items():
        for name, value in state.items():
            assert torch.equal(a["optimizer_states"][0]["state"][slot][name], value), (slot, name)
    assert csv_steps(resumed) == csv_steps(reference)


def last_state(run: Path) -> tuple[int, dict]:
    ckpt = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    return ckpt["global_step"], ckpt["loops"]["fit_loop"]["state_dict"]["combined_loader"][0]


@pytest.fixture(scope="module")
def uninterrupted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    os.environ.pop("STM3_RUN_DIR", None)
    assert main(["train", *RUN, f"paths.output_dir={run}"]) == 0
    return run


@pytest.mark.slow
def test_sigkill_mid_epoch_then_resume_is_exact(uninterrupted: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    proc = subprocess.run(
        [sys.executable, str(script), "train", *RUN, f"paths.output_dir={run}"],
        env={**stm3_env(), "KILL_AT_STEP": "150"}, cwd=REPO, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]
    step, loader = last_state(run)
    assert step == 140 and loader == {"epoch": 1, "batches": 140 - STEPS_PER_EPOCH}  # mid-epoch checkpoint
    assert not (run / "test_metrics.json").exists()
    assert main(["train", f"resume={run}"]) == 0
    assert_same_run(run, uninterrupted)
    assert (run / "config.resume-1.yaml").is_file()
    for folder in (run, uninterrupted):  # the Timer's clock, carried in the checkpoint, covers every step
        results = json.loads((folder / "test_metrics.json").read_text())
        assert results["train_wall_coverage"] == "full"
        # and is read before testing the best checkpoint, which restores that checkpoint's Timer (no double count)
        span = (folder / "test_metrics.json").stat().st_mtime - (folder / "config.yaml").stat().st_mtime
        assert 0 < results["train_wall_s"] <= span + 1.0, (results["train_wall_s"], span)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_external_kill_then_resume_is_exact(uninterrupted: Path, tmp_path: Path, sig: signal.Signals) -> None:
    """Killed from outside as soon as the first checkpoint exists (wherever training then is)."""
    run = tmp_path / "run"
    proc = subprocess.Popen(
        [sys.executable, "-m", "stm3_lightning.cli", "train", *RUN, f"paths.output_dir={run}"],
        env=stm3_env(), cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 240
    while (
        not (run / "checkpoints" / "last.ckpt").exists()
        and proc.poll() is None
        and time.monotonic() < deadline
    ):
        time.sleep(0.01)
    proc.send_signal(sig)
    _, stderr = proc.communicate(timeout=120)
    step, _ = last_state(run)
    assert 0 < step < 3 * STEPS_PER_EPOCH, "the run was not interrupted during training"
    if sig == signal.SIGTERM:
        assert proc.returncode == 143
        errors = [line for line in stderr.splitlines() if line.startswith("error:")]
        assert errors == [
            f"error: Training was stopped by SIGTERM and its state at the last finished step was saved in "
            f"{run}/checkpoints/last.ckpt; continue it with `stm3 train resume={run}`."
        ]
        assert main(["train", f"resume={run}"]) == 0
    else:
        assert proc.returncode == -signal.SIGKILL
        # the form a requeued cluster job passes every time: starts fresh, or continues the run
        assert main(["train", *RUN, f"paths.output_dir={run}", "ckpt_path=last"]) == 0
    assert_same_run(run, uninterrupted)
