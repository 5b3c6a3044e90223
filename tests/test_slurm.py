"""experiments/slurm/*.sbatch: syntax, directives, and the `stm3 train` command each srun task really runs.

The batch script runs under bash with SLURM's environment faked and a fake ``srun`` that starts the step once per
task (``SLURM_PROCID`` = 0..N-1) with a fake ``stm3`` that records its arguments; the recorded command must compose
(new run) or continue the run through the real resume logic (requeued job).
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from stm3_lightning.config.compose import compose
from stm3_lightning.run.resume import train_config

REPO = Path(__file__).resolve().parents[1]
TRAIN = REPO / "experiments" / "slurm" / "train.sbatch"
AGENTS = REPO / "experiments" / "slurm" / "sweep_agents.sbatch"
NTASKS = 2

FAKE_SRUN = """#!/bin/bash
while [[ $1 == --* ]]; do shift; done
for ((r = 0; r < FAKE_NTASKS; r++)); do SLURM_PROCID=$r "$@" || exit $?; done
"""
FAKE_STM3 = """#!/bin/bash
{ echo "rank=$SLURM_PROCID"; echo "run_dir_env=${STM3_RUN_DIR:-}"; printf '%s\\n' "$@"; } > "$FAKE_LOG.$SLURM_PROCID"
"""


def directives(path: Path) -> dict[str, str]:
    out = {}
    for line in path.read_text().splitlines():
        if line.startswith("#SBATCH "):
            key, _, value = line.removeprefix("#SBATCH ").partition("=")
            out[key] = value
    return out


@pytest.mark.parametrize("script", [TRAIN, AGENTS], ids=lambda p: p.name)
def test_bash_syntax(script: Path) -> None:
    proc = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr


def test_train_directives_one_node_requeue_and_signal() -> None:
    d = directives(TRAIN)
    assert d["--nodes"] == "1"
    assert d["--ntasks-per-node"] == d["--gpus-per-node"]
    assert "--requeue" in d
    assert re.fullmatch(r"(SIG)?USR1@\d+", d["--signal"])
    assert d["--open-mode"] == "append"  # a requeued job appends to the same log


def test_agents_directives_array_of_single_gpu_tasks() -> None:
    d = directives(AGENTS)
    assert d["--ntasks"] == "1" and d["--gpus-per-node"] == "1" and "--array" in d
    assert "wandb agent" in AGENTS.read_text()


@pytest.fixture
def fake_cluster(tmp_path: Path) -> dict[str, str]:
    """Environment of a 2-task job 4242 whose srun and stm3 are fakes; submit dir without a .venv."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("stm3", FAKE_STM3)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "STM3_"))}
    env.update(
        PATH=f"{bin_dir}:{env['PATH']}",
        SLURM_JOB_ID="4242",
        SLURM_JOB_NAME="stm3",
        SLURM_NTASKS_PER_NODE=f"{NTASKS}(x1)",
        SLURM_SUBMIT_DIR=str(tmp_path),
        STM3_SLURM_DIR=str(tmp_path / "jobs"),
        FAKE_NTASKS=str(NTASKS),
        FAKE_LOG=str(tmp_path / "stm3-call"),
    )
    return env


def submit(env: dict[str, str], *args: str) -> list[tuple[dict[str, str], list[str]]]:
    """Run the batch script; return per task: ``({"rank", "run_dir_env"}, stm3 arguments)``."""
    log = Path(env["FAKE_LOG"])
    for old in log.parent.glob(log.name + ".*"):
        old.unlink()
    proc = subprocess.run(["bash", str(TRAIN), *args], env=env, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    calls = []
    for rank in range(NTASKS):
        path = log.with_name(f"{log.name}.{rank}")
        if path.is_file():
            lines = path.read_text().splitlines()
            meta = dict(line.split("=", 1) for line in lines[:2])
            calls.append((meta, lines[2:]))
    return calls


def test_new_job_runs_ddp_command_that_composes(fake_cluster: dict[str, str], tmp_path: Path) -> None:
    calls = submit(fake_cluster, "experiment=reproduce/pems08", "seed=3")
    assert len(calls) == NTASKS
    (meta0, args0), (meta1, args1) = calls
    run_dir = tmp_path / "jobs" / "stm3-4242"
    assert args0[0] == "train" and args1 == args0
    assert meta0["run_dir_env"] == "" and meta1["run_dir_env"] == str(run_dir)  # only rank 0 owns the folder
    cfg = compose(args0[1:])
    assert cfg.trainer.strategy == "ddp" and cfg.trainer.accelerator == "gpu"
    assert cfg.trainer.devices == NTASKS and cfg.trainer.num_nodes == 1
    assert cfg.paths.output_dir == str(run_dir) and cfg.seed == 3
    assert cfg.choices.experiment == "reproduce/pems08" and cfg.data.batch_size == 64  # global batch size


def test_requeued_job_continues_from_newest_checkpoint(fake_cluster: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "jobs" / "stm3-4242"
    (run_dir / "checkpoints").mkdir(parents=True)
    OmegaConf.save(
        compose(["model=linear", "trainer=ddp", f"paths.output_dir={run_dir}"]), run_dir / "config.yaml"
    )
    last, hpc = run_dir / "checkpoints" / "last.ckpt", run_dir / "hpc_ckpt_1.ckpt"
    for path, mtime in ((last, 1_000_000), (hpc, 2_000_000)):
        path.write_bytes(b"ckpt")
        os.utime(path, (mtime, mtime))
    (_, args), _ = submit(fake_cluster, "experiment=reproduce/pems08")
    assert args == ["train", f"resume={run_dir}", f"ckpt_path={hpc}"]
    cfg = train_config(args[1:])
    assert (
        cfg.paths.output_dir == str(run_dir) and cfg.ckpt_path == str(hpc) and cfg.trainer.strategy == "ddp"
    )
    os.utime(last, (3_000_000, 3_000_000))  # a SIGTERM save after the SIGUSR1 one
    (_, args), _ = submit(fake_cluster)
    assert args[-1] == f"ckpt_path={last}"


def test_finished_job_does_nothing(fake_cluster: dict[str, str], tmp_path: Path) -> None:
    run_dir = tmp_path / "jobs" / "stm3-4242"
    run_dir.mkdir(parents=True)
    (run_dir / "config.yaml").write_text("seed: 1\n")
    (run_dir / "test_metrics.json").write_text("{}")
    assert submit(fake_cluster) == []
