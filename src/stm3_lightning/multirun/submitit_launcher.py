"""Run a multirun's jobs through submitit: ``launcher=submitit_local`` (local processes) or ``launcher=submitit_slurm``.

submitit is an optional extra (``pip install -e ".[slurm]"``), imported only here. Each job is a :class:`TrainJob`:
the submitit job runs the job's ``stm3 train`` command as a child process, the same command the sequential launcher
runs. On SLURM the jobs form one job array; each job gets ``launcher.nodes`` nodes with one srun task per GPU, and
``trainer.num_nodes`` / ``trainer.devices`` to match (:func:`trainer_args`). Before the time limit (and on
preemption) submitit calls :meth:`TrainJob.checkpoint`: the run is stopped with SIGTERM, which makes it save its
state at the last finished step, and the job is requeued as ``ckpt_path=last`` in the same folder, so it continues
where it stopped. Logs are under ``<sweep dir>/submitit/<job id>/``.
"""

from __future__ import annotations

import math
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from stm3_lightning.config.compose import ConfigError
from stm3_lightning.multirun.jobs import Job, JobResult, Status, train_args

SLURM = "submitit_slurm"
# Seconds a stopped run gets to save its state, out of the launcher's signal_delay_s.
SAVE_MARGIN_S = 15
POLL_S = 0.2
KILL_WAIT_S = 10.0


def import_submitit(launcher: str) -> Any:
    try:
        import submitit
    except ImportError as exc:
        raise ConfigError(
            f'launcher={launcher} needs submitit, an optional extra: install it with pip install -e ".[slurm]".'
        ) from exc
    return submitit


def resume_args(args: Sequence[str]) -> list[str]:
    """A requeued job's arguments: the same run folder (``paths.output_dir``) continued from ``ckpt_path=last``."""
    return [*(a for a in args if not a.startswith("ckpt_path=")), "ckpt_path=last"]


class TrainJob:
    """What a submitit job runs: ``stm3 train <args>`` as a child process; returns its exit code."""

    def __init__(self, stop_timeout_s: float = 60.0) -> None:
        self.stop_timeout_s = stop_timeout_s
        self._child: subprocess.Popen | None = None

    def __getstate__(self) -> dict[str, Any]:
        return {"stop_timeout_s": self.stop_timeout_s}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["stop_timeout_s"])  # type: ignore[misc]

    def __call__(self, args: list[str]) -> int:
        self._child = subprocess.Popen([sys.executable, "-m", "stm3_lightning.cli", "train", *args])
        try:
            self._exited_within(math.inf)
            return int(self._child.returncode)
        except BaseException:  # cancelled (SIGINT) or exiting after a requeue: never leave the run orphaned
            self.stop()
            raise

    def _exited_within(self, seconds: float) -> bool:
        """Poll the run until it exits or ``seconds`` pass. Polling, not ``Popen.wait``: :meth:`checkpoint` runs in
        a signal handler that may interrupt this very loop, and a nested ``wait`` would deadlock on Popen's lock."""
        assert self._child is not None
        deadline = time.monotonic() + seconds
        while self._child.poll() is None:
            if time.monotonic() > deadline:
                return False
            time.sleep(POLL_S)
        return True

    def stop(self) -> None:
        """Send SIGTERM to the run (it saves its state and exits with 143) and wait for it to finish."""
        if self._child is None or self._child.poll() is not None:
            return
        self._child.send_signal(signal.SIGTERM)
        if not self._exited_within(self.stop_timeout_s):
            self._child.kill()
            self._exited_within(KILL_WAIT_S)

    def checkpoint(self, args: list[str]) -> Any:
        """Called by submitit before the time limit or on preemption: stop the run, requeue it to continue."""
        self.stop()
        submitit = import_submitit("submitit")
        return submitit.helpers.DelayedSubmission(TrainJob(self.stop_timeout_s), resume_args(args))


def tasks_per_node(cfg: DictConfig) -> int:
    """srun tasks per node: ``launcher.tasks_per_node``, else one per GPU (at least one); 1 for local jobs."""
    if cfg.name != SLURM:
        return 1
    return int(cfg.tasks_per_node) or max(int(cfg.gpus), 1)


def trainer_args(cfg: DictConfig, given: Sequence[str]) -> list[str]:
    """Trainer overrides that fit a SLURM job's allocation (nodes, tasks, GPUs); keys in ``given`` are kept."""
    if cfg.name != SLURM:
        return []
    tasks, nodes = tasks_per_node(cfg), int(cfg.nodes)
    derived = {"trainer.num_nodes": nodes, "trainer.devices": tasks}
    if cfg.gpus > 0:
        derived["trainer.accelerator"] = "gpu"
    if tasks * nodes > 1:
        derived["trainer.strategy"] = "ddp"
    return [f"{k}={v}" for k, v in derived.items() if k not in given]


def _executor(submitit: Any, cfg: DictConfig, folder: Path, name: str) -> Any:
    if cfg.name != SLURM:
        executor = submitit.LocalExecutor(folder=folder)
        executor.update_parameters(
            timeout_min=cfg.time, gpus_per_node=cfg.gpus, tasks_per_node=1, signal_delay_s=cfg.signal_delay_s
        )
        return executor
    if not (shutil.which("sbatch") and shutil.which("srun")):
        raise ConfigError(
            "launcher=submitit_slurm needs SLURM (sbatch and srun on PATH); run it on the cluster's login node, or "
            "try the sweep here with launcher=submitit_local."
        )
    executor = submitit.SlurmExecutor(folder=folder)
    optional = {
        "partition": cfg.partition,
        "account": cfg.account,
        "qos": cfg.qos,
        "constraint": cfg.constraint,
        "cpus_per_task": cfg.cpus_per_task,
        "mem": f"{cfg.mem_gb:g}GB" if cfg.mem_gb else "",
        "setup": list(cfg.setup),
        "additional_parameters": dict(cfg.additional_parameters),
    }
    executor.update_parameters(
        job_name=name,
        time=cfg.time,
        nodes=cfg.nodes,
        ntasks_per_node=tasks_per_node(cfg),
        gpus_per_node=cfg.gpus,
        array_parallelism=cfg.array_parallelism,
        signal_delay_s=cfg.signal_delay_s,
        **{k: v for k, v in optional.items() if v},
    )
    return executor


def _outcome(job: Job, handle: Any) -> JobResult:
    log = f"log {handle.paths.stdout}"
    try:
        code = handle.result()
    except Exception as exc:  # submitit re-raises the job's failure here (or a cancellation)
        first = next((line for line in reversed(str(exc).strip().splitlines()) if line.strip()), repr(exc))
        return JobResult(job, Status.FAILED, None, f"{first.strip()}; {log}")
    return JobResult(job, Status.DONE if code == 0 else Status.FAILED, int(code), log)


def _wait(pending: list[tuple[Job, Any]], poll_s: float, fail_fast: bool) -> list[JobResult]:
    """Collect the jobs' results as they finish; with ``fail_fast`` the first failure cancels the others."""
    results: list[JobResult] = []
    while pending:
        finished = [(job, handle) for job, handle in pending if handle.done()]
        pending = [p for p in pending if p not in finished]
        for job, handle in finished:
            result = _outcome(job, handle)
            results.append(result)
            print(f"{job.label}: {result.status.value} ({result.detail})", flush=True)
            if result.status is Status.FAILED and fail_fast and pending:
                for other, other_handle in pending:
                    other_handle.cancel(check=False)
                    results.append(
                        JobResult(other, Status.NOT_RUN, detail="cancelled: an earlier job failed")
                    )
                pending = []
        if pending and not finished:
            time.sleep(poll_s)
    return results


def launch(jobs: Sequence[Job], cfg: DictConfig, sweep_dir: Path) -> list[JobResult]:
    """Submit the unfinished jobs (one array on SLURM) and, with ``launcher.wait``, wait for their results."""
    submitit = import_submitit(cfg.name)
    executor = _executor(submitit, cfg, sweep_dir / "submitit" / "%j", f"stm3-{sweep_dir.name}")
    results = [JobResult(job, Status.SKIPPED) for job in jobs if train_args(job) is None]
    todo = [(job, args) for job in jobs if (args := train_args(job)) is not None]
    if not todo:
        return results
    stop_timeout = max(cfg.signal_delay_s - SAVE_MARGIN_S, 5)
    try:
        with executor.batch():
            handles = [executor.submit(TrainJob(stop_timeout), args) for _, args in todo]
    except (submitit.core.utils.FailedJobError, submitit.core.utils.FailedSubmissionError, OSError) as exc:
        reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else repr(exc)
        raise ConfigError(
            f"submitit could not submit the jobs ({reason}); check the launcher.* keys."
        ) from exc
    pending = [(job, handle) for (job, _), handle in zip(todo, handles, strict=True)]
    for job, handle in pending:
        print(f"{job.label}: submitted as job {handle.job_id} ({job.run_dir})", flush=True)
    if not cfg.wait:
        return results + [JobResult(job, Status.SUBMITTED, detail=f"job {h.job_id}") for job, h in pending]
    return results + _wait(pending, cfg.poll_s, cfg.fail_fast)
