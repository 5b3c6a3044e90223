"""``stm3 train -m <sweep>``: plan the grid, check every job's config, run it through the launcher, summarise.

Every job is one ``stm3 train`` run with its own folder ``<sweep dir>/<k>`` (``k`` = 0, 1, ... in grid order).
Before anything runs, each job's configuration is composed and validated, so a bad value in any of them fails in
one sentence and nothing is started. The swept keys other than ``seed`` name the job's variant, recorded as its W&B
group (unless ``logger.wandb.group`` is given), which is how ``stm3 report`` groups the runs of one variant across
seeds. ``<sweep dir>/multirun.json`` lists every job, its folder and its status; running the same command with
``launcher.sweep_dir=<that folder>`` again skips finished jobs and continues interrupted ones.
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

from omegaconf import DictConfig

from stm3_lightning.config.compose import ConfigError, compose
from stm3_lightning.multirun.jobs import Job, JobResult, Runner, Status, run_sequential
from stm3_lightning.multirun.launcher_config import compose_launcher, is_launcher_arg
from stm3_lightning.multirun.submitit_launcher import import_submitit, trainer_args
from stm3_lightning.multirun.sweep import Sweep, parse_sweep
from stm3_lightning.run.rundir import _claim_fresh, check_writable

SUMMARY = "multirun.json"
# Keys that name a run's folder or an existing run: a multirun sets the folders itself.
REFUSED = {
    "resume": "resume= continues one run; run `stm3 train resume=<run dir>` without -m",
    "paths.output_dir": "each job gets its own folder <sweep dir>/<k>; choose the sweep folder with launcher.sweep_dir=",
}
GROUP_KEY = "logger.wandb.group"
NOT_A_VARIANT = ("seed",)


def variant(job_values: dict[str, str], swept: Sequence[str]) -> str:
    """The job's variant: its values of the swept keys other than ``seed`` (``model.contrastive=repaired``)."""
    return ",".join(f"{k}={job_values[k]}" for k in swept if k not in NOT_A_VARIANT)


def plan_jobs(sweep: Sweep, sweep_dir: Path, extra: Sequence[str] = ()) -> list[Job]:
    """One job per combination: its arguments in command-line order, then its folder, variant and ``extra``."""
    jobs = []
    for index, values in enumerate(sweep.combinations()):
        run_dir = sweep_dir / str(index)
        args = [f"{k}={v}" for k, v in values.items()] + [f"paths.output_dir={run_dir}"]
        name = variant(values, sweep.swept)
        if name and GROUP_KEY not in sweep.keys:
            args.append(f"{GROUP_KEY}={name}")
        jobs.append(Job(index, {k: values[k] for k in sweep.swept}, run_dir, [*args, *extra]))
    return jobs


def _refuse(sweep: Sweep) -> None:
    for key, why in REFUSED.items():
        if key in sweep.keys:
            raise ConfigError(f"stm3 train -m does not take {key}: {why}.")


def validate(jobs: Sequence[Job]) -> list[DictConfig]:
    """Compose every job's config; the first bad one fails naming the job."""
    configs = []
    for job in jobs:
        try:
            configs.append(compose(job.args))
        except ConfigError as exc:
            raise ConfigError(f"Job {job.label.strip()}: {str(exc).rstrip('.')}.") from exc
    return configs


def _record(jobs: Sequence[Job], results: Sequence[JobResult]) -> list[dict[str, object]]:
    by_index = {r.job.index: r for r in results}  # type: ignore[attr-defined]
    records = []
    for job in jobs:
        result = by_index.get(job.index, JobResult(job, Status.PLANNED))
        records.append(
            {
                "index": job.index,
                "values": job.values,
                "run_dir": str(job.run_dir),
                "args": job.args,
                "status": result.status.value,
                "exit_code": result.exit_code,
                "detail": result.detail,
            }
        )
    return records


def write_summary(
    sweep_dir: Path, launcher: DictConfig, jobs: Sequence[Job], results: Sequence[JobResult]
) -> Path:
    """``<sweep dir>/multirun.json``: the launcher and every job's values, arguments, folder and status."""
    path = sweep_dir / SUMMARY
    record = {"launcher": launcher.name, "jobs": _record(jobs, results)}
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=1) + "\n")
    os.replace(tmp, path)
    return path


def _check_continuable(path: Path, jobs: Sequence[Job]) -> None:
    """A given sweep folder must be new, empty, or hold the same sweep (same jobs, same arguments) to continue it."""
    summary = path / SUMMARY
    if summary.is_file():
        recorded = [j.get("args") for j in json.loads(summary.read_text()).get("jobs", [])]
        if recorded != [j.args for j in jobs]:
            raise ConfigError(
                f"launcher.sweep_dir={path} holds another sweep; choose a new folder, or repeat exactly the command "
                "that started it to finish it."
            )
    elif path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise ConfigError(
            f"launcher.sweep_dir={path} exists and is not an empty folder; choose a new folder."
        )


def open_sweep_dir(
    launcher: DictConfig, root_dir: str, sweep: Sweep, extra: Sequence[str]
) -> tuple[Path, list[Job]]:
    """Create the sweep folder and plan its jobs: ``launcher.sweep_dir``, else a new ``<root>/multirun/<time>``."""
    if not launcher.sweep_dir:
        planned = Path(root_dir) / "multirun" / datetime.now().strftime("%Y-%m-%d_%H-%M-%S")
        check_writable(planned)
        path = _claim_fresh(planned)
        return path, plan_jobs(sweep, path, extra)
    path = Path(launcher.sweep_dir)
    jobs = plan_jobs(sweep, path, extra)
    _check_continuable(path, jobs)
    check_writable(path)
    path.mkdir(parents=True, exist_ok=True)
    return path, jobs


def format_summary(sweep_dir: Path, results: Sequence[JobResult]) -> str:
    """A count of each status, then a line per job: number, status, folder, swept values, detail."""
    counts: dict[str, int] = {}
    for r in results:
        counts[r.status.value] = counts.get(r.status.value, 0) + 1
    lines = [
        f"multirun: {len(results)} jobs in {sweep_dir}: " + ", ".join(f"{n} {s}" for s, n in counts.items())
    ]
    rows = []
    for r in sorted(results, key=lambda r: r.job.index):  # type: ignore[attr-defined]
        status = r.status.value + (
            f" (exit {r.exit_code})" if r.status is Status.FAILED and r.exit_code else ""
        )
        values = " ".join(f"{k}={v}" for k, v in r.job.values.items())  # type: ignore[attr-defined]
        detail = f"  [{r.detail}]" if r.detail and r.status is not Status.DONE else ""
        rows.append((f"#{r.job.index}", status, str(r.job.run_dir), values + detail))  # type: ignore[attr-defined]
    widths = [max(len(row[i]) for row in rows) for i in range(3)]
    lines += [
        "  " + "  ".join(c.ljust(w) for c, w in zip(row, [*widths, 0], strict=True)).rstrip() for row in rows
    ]
    lines.append(f"compare the jobs with `stm3 report runs={sweep_dir}`")
    return "\n".join(lines)


def multirun(args: Sequence[str], runner: Runner = subprocess.call) -> int:
    """Run ``stm3 train -m args``; exit code 0 when every job finished (or was submitted), 1 when any failed.

    ``runner`` runs one job's command for the basic launcher (a process by default).
    """
    launcher = compose_launcher([a for a in args if is_launcher_arg(a)])
    if launcher.name != "basic":
        import_submitit(launcher.name)  # missing optional extra: fail before anything is planned
    sweep = parse_sweep([a for a in args if not is_launcher_arg(a)])
    _refuse(sweep)
    extra = trainer_args(launcher, sweep.keys)
    configs = validate(
        plan_jobs(sweep, Path("<sweep dir>"), extra)
    )  # nothing is created before all are valid
    sweep_dir, jobs = open_sweep_dir(launcher, configs[0].paths.root_dir, sweep, extra)
    write_summary(sweep_dir, launcher, jobs, [])
    print(f"multirun: {len(jobs)} jobs with launcher={launcher.name} in {sweep_dir}", flush=True)
    if launcher.name == "basic":
        results = run_sequential(jobs, runner, fail_fast=launcher.fail_fast)
    else:
        from stm3_lightning.multirun.submitit_launcher import launch

        results = launch(jobs, launcher, sweep_dir)
    write_summary(sweep_dir, launcher, jobs, results)
    print(format_summary(sweep_dir, results), flush=True)
    return 1 if any(r.status in (Status.FAILED, Status.NOT_RUN) for r in results) else 0
