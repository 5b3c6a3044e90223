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


def test_agents_directives_array_of_single_gpu_tasks_requeued() -> None:
    d = directives(AGENTS)
    assert d["--ntasks"] == "1" and d["--gpus-per-node"] == "1" and "--array" in d
    assert "--requeue" in d and d["--open-mode"] == "append"  # a preempted agent comes back, same log
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


def run_script(env: dict[str, str], *args: str) -> subprocess.CompletedProcess:
    log = Path(env["FAKE_LOG"])
    for old in log.parent.glob(log.name + ".*"):
        old.unlink()
    return subprocess.run(["bash", str(TRAIN), *args], env=env, capture_output=True, text=True, timeout=60)


def submit(env: dict[str, str], *args: str) -> list[tuple[dict[str, str], list[str]]]:
    """Run the batch script; return per task: ``({"rank", "run_dir_env"}, stm3 arguments)``."""
    proc = run_script(env, *args)
    assert proc.returncode == 0, proc.stderr
    log = Path(env["FAKE_LOG"])
    calls = []
    for rank in range(int(env["FAKE_NTASKS"])):
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


def multi_node(env: dict[str, str], nodes: int, per_node: int, **extra: str) -> dict[str, str]:
    """The variables SLURM sets for ``--nodes=<nodes> --ntasks-per-node=<per_node>`` (minus what ``extra`` drops)."""
    env = {
        **env,
        "SLURM_NNODES": str(nodes),
        "SLURM_JOB_NUM_NODES": str(nodes),
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURM_TASKS_PER_NODE": f"{per_node}(x{nodes})",
        "SLURM_GPUS_ON_NODE": str(per_node),
        "FAKE_NTASKS": str(nodes * per_node),
    }
    env.update(extra)
    return {k: v for k, v in env.items() if v != ""}


@pytest.mark.parametrize(
    "drop",
    [{}, {"SLURM_NTASKS_PER_NODE": ""}, {"SLURM_NTASKS_PER_NODE": "", "SLURM_TASKS_PER_NODE": ""}],
    ids=["ntasks-per-node", "tasks-per-node", "gpus-on-node"],
)
def test_multi_node_job_derives_nodes_and_devices_from_slurm(
    fake_cluster: dict[str, str], drop: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``sbatch --nodes=2 --ntasks-per-node=2``: every task runs ``trainer.num_nodes=2 trainer.devices=2``, which
    Lightning's SLURMEnvironment accepts (the hard-coded num_nodes=1 made it raise)."""
    from lightning.fabric.plugins.environments import SLURMEnvironment

    env = multi_node(fake_cluster, nodes=2, per_node=2, **drop)
    calls = submit(env, "experiment=reproduce/pems08")
    assert len(calls) == 4 and all(args == calls[0][1] for _, args in calls)
    assert [meta["run_dir_env"] == "" for meta, _ in calls] == [True, False, False, False]
    cfg = compose(calls[0][1][1:])
    assert cfg.trainer.num_nodes == 2 and cfg.trainer.devices == 2 and cfg.trainer.strategy == "ddp"
    for key, value in multi_node({}, nodes=2, per_node=2).items():
        monkeypatch.setenv(key, value)
    monkeypatch.setenv("SLURM_JOB_NAME", "stm3")  # not interactive
    SLURMEnvironment().validate_settings(num_devices=cfg.trainer.devices, num_nodes=cfg.trainer.num_nodes)
    with pytest.raises(ValueError, match="num_nodes=1"):
        SLURMEnvironment().validate_settings(num_devices=2, num_nodes=1)


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"SLURM_NTASKS_PER_NODE": "", "SLURM_TASKS_PER_NODE": "2,1"}, "different numbers of tasks"),
        ({"SLURM_NTASKS": "3"}, "the job has 3 tasks but 2 node\\(s\\) x 2 task\\(s\\) per node"),
    ],
)
def test_inconsistent_allocation_is_refused_in_one_sentence(
    fake_cluster: dict[str, str], extra: dict[str, str], message: str
) -> None:
    proc = run_script(multi_node(fake_cluster, nodes=2, per_node=2, **extra), "model=linear")
    assert proc.returncode == 2
    assert re.search(f"^error: .*{message}.*--ntasks-per-node", proc.stderr)
    assert not list(Path(fake_cluster["FAKE_LOG"]).parent.glob("stm3-call.*"))
