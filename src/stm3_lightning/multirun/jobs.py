"""Jobs of a grid (a multirun, the ablation grid): one ``stm3 train`` run each, in a folder fixed in advance.

A job's folder tells its state: ``done`` (``test_metrics.json`` written), ``interrupted`` (``config.yaml`` but no
results) or ``new``. Running a grid again therefore skips finished jobs and continues interrupted ones
(``resume=<folder>``). :func:`run_sequential` runs the jobs one after the other, each in its own process, so DDP,
W&B and the run folder start clean for every job; a failed job is reported and the others still run.
"""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Protocol


class GridJob(Protocol):
    """What a grid runner needs of a job: a label for messages, its run folder and its ``stm3 train`` arguments."""

    @property
    def label(self) -> str: ...

    @property
    def run_dir(self) -> Path: ...

    @property
    def args(self) -> list[str]: ...


@dataclass(frozen=True)
class Job:
    """Job ``index`` of a multirun: ``values`` are its swept keys' values, ``args`` its ``stm3 train`` arguments."""

    index: int
    values: dict[str, str]
    run_dir: Path
    args: list[str]

    @property
    def label(self) -> str:
        return " ".join([f"#{self.index}", *(f"{k}={v}" for k, v in self.values.items())])


class Status(str, Enum):
    DONE = "done"
    FAILED = "failed"
    SKIPPED = "done already"
    NOT_RUN = "not run"
    PLANNED = "planned"
    SUBMITTED = "submitted"


@dataclass
class JobResult:
    """What became of a job: its status, the exit code of its process and a detail (job id, log file, error)."""

    job: GridJob
    status: Status
    exit_code: int | None = None
    detail: str = field(default="")


def job_state(job: GridJob) -> str:
    """``done`` (test_metrics.json written), ``interrupted`` (config.yaml but no results) or ``new``."""
    if (job.run_dir / "test_metrics.json").is_file():
        return "done"
    if (job.run_dir / "config.yaml").is_file():
        return "interrupted"
    return "new"


def train_args(
    job: GridJob, resume_overrides: bool = False, reopened: frozenset[Path] = frozenset()
) -> list[str] | None:
    """The ``stm3 train`` arguments that bring ``job`` to its end: a new run, a resume, or ``None`` when done.

    A resume continues the saved configuration; with ``resume_overrides`` the job's arguments are passed along
    (key=value changes such as a larger ``trainer.max_epochs`` apply, group choices must match). A job whose folder
    is in ``reopened`` (a finished run to be continued) counts as interrupted.
    """
    state = "interrupted" if job.run_dir in reopened else job_state(job)
    if state == "done":
        return None
    if state == "interrupted":
        return [f"resume={job.run_dir}", *(job.args if resume_overrides else [])]
    return list(job.args)


def train_command(
    job: GridJob, resume_overrides: bool = False, reopened: frozenset[Path] = frozenset()
) -> list[str] | None:
    """The process to run for ``job`` (this Python, ``-m stm3_lightning.cli train ...``), ``None`` when done."""
    args = train_args(job, resume_overrides, reopened)
    return None if args is None else [sys.executable, "-m", "stm3_lightning.cli", "train", *args]


Runner = Callable[[list[str]], int]


def run_sequential(
    jobs: Sequence[GridJob],
    runner: Runner = subprocess.call,
    dry_run: bool = False,
    fail_fast: bool = False,
    resume_overrides: bool = False,
    reopened: frozenset[Path] = frozenset(),
) -> list[JobResult]:
    """Run the jobs one after the other; finished jobs are skipped, a failure stops the rest only with ``fail_fast``."""
    results: list[JobResult] = []
    stopped = False
    for i, job in enumerate(jobs, 1):
        label = f"[{i}/{len(jobs)}] {job.label}"
        command = train_command(job, resume_overrides, reopened)
        if command is None:
            print(f"{label}: done already ({job.run_dir}), skipped", flush=True)
            results.append(JobResult(job, Status.SKIPPED))
            continue
        if stopped:
            results.append(JobResult(job, Status.NOT_RUN, detail="an earlier job failed (fail_fast)"))
            continue
        print(f"{label}: stm3 train {shlex.join(command[4:])}", flush=True)
        if dry_run:
            results.append(JobResult(job, Status.PLANNED))
            continue
        code = runner(command)
        results.append(JobResult(job, Status.DONE if code == 0 else Status.FAILED, code))
        if code != 0:
            stopped = fail_fast
            then = "stopping (fail_fast)" if stopped else "continuing with the next job"
            print(f"{label}: FAILED with exit code {code}; {then}", flush=True)
    return results
