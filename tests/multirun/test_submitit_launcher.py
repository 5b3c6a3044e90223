"""submitit launchers: a SLURM array whose sbatch file and job arguments match the launcher keys (fake sbatch/srun),
local submitit jobs that really train, and a job that stops its run cleanly and requeues it as a continuation."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from submitit.core.utils import DelayedSubmission

from stm3_lightning.config.compose import ConfigError, compose
from stm3_lightning.multirun.command import SUMMARY, multirun
from stm3_lightning.multirun.launcher_config import compose_launcher
from stm3_lightning.multirun.submitit_launcher import TrainJob, resume_args, trainer_args

TINY = [
    "data.synthetic.num_nodes=4",
    "data.synthetic.num_steps=600",
    "data.horizon=3",
    "callbacks.progress_bar=none",
]


@pytest.fixture
def fake_slurm(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """``sbatch`` that keeps the submitted file and answers with a job id; ``srun`` that only exists."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "srun").write_text("#!/bin/sh\nexit 0\n")
    (bin_dir / "sbatch").write_text(
        f'#!/bin/sh\ncp "$1" {tmp_path}/submitted.sbatch\necho "Submitted batch job 4242"\n'
    )
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}:{os.environ['PATH']}")
    return tmp_path / "submitted.sbatch"


def test_slurm_array_matches_the_launcher_keys(tmp_path: Path, fake_slurm: Path) -> None:
    args = [
        "seed=1,2",
        "launcher=submitit_slurm",
        "launcher.partition=gpu",
        "launcher.nodes=2",
        "launcher.gpus=4",
        "launcher.time=02:00:00",
        "launcher.account=proj",
        "launcher.array_parallelism=1",
        "launcher.setup=[module load cuda]",
        "launcher.wait=false",
        f"launcher.sweep_dir={tmp_path / 'sweep'}",
    ]
    assert multirun(args) == 0
    sbatch = fake_slurm.read_text()
    for line in (
        "--partition=gpu",
        "--nodes=2",
        "--gpus-per-node=4",
        "--ntasks-per-node=4",
        "--time=120",
        "--account=proj",
        "--array=0-1%1",
        "--signal=USR2@90",
    ):
        assert f"#SBATCH {line}\n" in sbatch
    assert "module load cuda" in sbatch and "srun" in sbatch
    jobs = json.loads((tmp_path / "sweep" / SUMMARY).read_text())["jobs"]
    assert [(j["status"], j["detail"]) for j in jobs] == [
        ("submitted", "job 4242_0"),
        ("submitted", "job 4242_1"),
    ]
    delayed = DelayedSubmission.load(tmp_path / "sweep" / "submitit" / "4242_1" / "4242_1_submitted.pkl")
    (job_args,) = delayed.args
    assert isinstance(delayed.function, TrainJob) and job_args == jobs[1]["args"]
    cfg = compose(job_args)
    assert (cfg.trainer.num_nodes, cfg.trainer.devices, cfg.trainer.accelerator) == (2, 4, "gpu")
    assert (
        cfg.trainer.strategy == "ddp"
        and cfg.seed == 2
        and cfg.paths.output_dir == str(tmp_path / "sweep" / "1")
    )


def test_trainer_args_fit_the_allocation_and_keep_given_keys() -> None:
    slurm = compose_launcher(["launcher=submitit_slurm", "launcher.gpus=1"])
    assert trainer_args(slurm, ()) == ["trainer.num_nodes=1", "trainer.devices=1", "trainer.accelerator=gpu"]
    cpu = compose_launcher(["launcher=submitit_slurm", "launcher.gpus=0", "launcher.tasks_per_node=2"])
    assert trainer_args(cpu, ("trainer.devices",)) == ["trainer.num_nodes=1", "trainer.strategy=ddp"]
    assert trainer_args(compose_launcher(["launcher=submitit_local", "launcher.gpus=2"]), ()) == []


def test_without_slurm_the_slurm_launcher_says_so(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError, match="needs SLURM \\(sbatch and srun on PATH\\)"):
        multirun(["seed=1", "launcher=submitit_slurm", f"launcher.sweep_dir={tmp_path / 'sweep'}"])


def test_checkpoint_stops_the_run_and_requeues_a_continuation() -> None:
    job = TrainJob(stop_timeout_s=30)
    trap = "import signal, sys, time; signal.signal(signal.SIGTERM, lambda *a: sys.exit(143)); print(1, flush=True); time.sleep(60)"
    job._child = subprocess.Popen([sys.executable, "-c", trap], stdout=subprocess.PIPE)
    assert job._child.stdout.readline().strip() == b"1"  # the handler is installed
    args = ["seed=1", "paths.output_dir=/runs/3", "ckpt_path=/pretrained.ckpt"]
    delayed = job.checkpoint(args)
    assert job._child.returncode == 143
    assert isinstance(delayed.function, TrainJob) and delayed.function._child is None
    assert delayed.args == (resume_args(args),) and resume_args(args) == [
        "seed=1",
        "paths.output_dir=/runs/3",
        "ckpt_path=last",
    ]


@pytest.mark.slow
def test_submitit_local_jobs_train_and_are_summarised(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    sweep = tmp_path / "sweep"
    args = ["model=persistence", "seed=1,2", *TINY, "launcher=submitit_local", f"launcher.sweep_dir={sweep}"]
    assert multirun(args) == 0
    jobs = json.loads((sweep / SUMMARY).read_text())["jobs"]
    assert [j["status"] for j in jobs] == ["done", "done"]
    for k, job in enumerate(jobs):
        metrics = json.loads((sweep / str(k) / "test_metrics.json").read_text())
        assert metrics["seed"] == k + 1 and "log " in job["detail"]
        assert Path(job["detail"].split("log ", 1)[1]).is_file()
    assert "2 done" in capsys.readouterr().out


def _submitit_tasks(sweep: Path) -> list[int]:
    """Process ids of the local submitit tasks of ``sweep`` (``python -m submitit.core._submit <sweep>/...``)."""
    pids = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        if b"submitit.core._submit" in cmdline and any(str(sweep).encode() in part for part in cmdline):
            pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_a_timed_out_local_job_saves_requeues_and_continues(tmp_path: Path) -> None:
    sweep = tmp_path / "sweep"
    args = [
        "model=linear",
        "seed=1",
        *TINY,
        "trainer.max_epochs=15",
        "callbacks.early_stopping.enabled=false",
    ]
    args += ["launcher=submitit_local", f"launcher.sweep_dir={sweep}", "launcher.poll_s=0.2"]
    outcome: list[int] = []
    runner = threading.Thread(target=lambda: outcome.append(multirun(args)))
    runner.start()
    last = sweep / "0" / "checkpoints" / "last.ckpt"
    deadline = time.monotonic() + 300
    while not last.is_file() and time.monotonic() < deadline:
        time.sleep(0.2)
    (task,) = _submitit_tasks(sweep)
    os.kill(task, signal.SIGUSR2)  # what submitit's controller sends signal_delay_s before the time limit
    runner.join(timeout=600)
    assert outcome == [0]
    run = sweep / "0"
    assert (run / "config.resume-1.yaml").is_file() and (run / "test_metrics.json").is_file()
    assert "ckpt_path: last" in (run / "config.resume-1.yaml").read_text()
    assert json.loads((sweep / SUMMARY).read_text())["jobs"][0]["status"] == "done"
