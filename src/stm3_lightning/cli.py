"""``stm3`` command line: ``train``, ``eval``, ``summary``, ``datasets``, ``baselines``, ``ablations``, ``report``,
``reproduce`` (the paper config for several seeds, then ``results/<group>.json``) and ``results`` (rebuild those
files and ``results/README.md`` from finished runs, without training).

Arguments after the sub-command are config choices and overrides, e.g.
``stm3 train data=pems08 model=stm3 experiment=reproduce/pems08 trainer.max_epochs=5 seed=3``;
``stm3 train -m seed=1,2,3 model.contrastive=released,repaired`` runs the grid of the values (a multirun).
Every expected failure (bad config, missing/corrupt data, unusable checkpoint, non-finite training) ends with one
sentence on stderr and exit code 2, without a traceback and without touching existing files. A run stopped by
SIGTERM (cluster preemption) saves its state and exits with 143; ``stm3 train resume=<run dir>`` continues it.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys

from stm3_lightning.config.compose import ConfigError, compose
from stm3_lightning.config.safety import harden_resolvers
from stm3_lightning.console import configure_console

harden_resolvers()


def _expected_errors() -> tuple[type[BaseException], ...]:
    from stm3_lightning.callbacks.nan_guard import NonFiniteError
    from stm3_lightning.data.errors import DataError
    from stm3_lightning.run.checkpoints import CheckpointError

    return (ConfigError, DataError, NonFiniteError, CheckpointError)


def _preempted_message(exc: BaseException) -> str:
    run = getattr(exc, "run_dir", "<run dir>")
    return (
        f"error: Training was stopped by SIGTERM and its state at the last finished step was saved in "
        f"{run}/checkpoints/last.ckpt; continue it with `stm3 train resume={run}`."
    )


def cmd_train(args: list[str]) -> int:
    from stm3_lightning.multirun.launcher_config import is_launcher_arg
    from stm3_lightning.run.resume import train_config
    from stm3_lightning.run.train import train

    if any(is_launcher_arg(a) for a in args):
        raise ConfigError(
            "launcher= and launcher.* choose how a multirun runs its jobs; add -m (stm3 train -m ...)."
        )

    results = train(train_config(args))
    overall = results.get("overall", {})
    print("test: " + "  ".join(f"{k}={v:.4f}" for k, v in overall.items()))
    return 0


def cmd_multirun(args: list[str]) -> int:
    """``stm3 train -m seed=1,2,3 model.contrastive=released,repaired [launcher=...]``: the grid of the values."""
    from stm3_lightning.multirun.command import multirun

    return multirun(args)


def cmd_eval(args: list[str]) -> int:
    from stm3_lightning.run.train import evaluate

    ckpt = next((a.split("=", 1)[1] for a in args if a.startswith("ckpt=")), "")
    if not ckpt:
        raise ConfigError(
            "stm3 eval needs ckpt=<path to a .ckpt file>, e.g. make eval CKPT=outputs/.../last.ckpt."
        )
    rest = [a for a in args if not a.startswith("ckpt=")]
    from stm3_lightning.run.evaluation import config_for_checkpoint

    cfg, run_dir = config_for_checkpoint(ckpt, rest)
    results = evaluate(cfg, ckpt, run_dir)
    print("test: " + "  ".join(f"{k}={v:.4f}" for k, v in results.get("overall", {}).items()))
    return 0


def cmd_summary(args: list[str]) -> int:
    from stm3_lightning.reporting.summary import summarize

    print(summarize(compose(args)))
    return 0


def cmd_datasets(args: list[str]) -> int:
    from stm3_lightning.data.catalogue import datasets_table

    data_dir = os.environ.get("STM3_DATA_DIR", "./data")
    print(datasets_table(data_dir))
    return 0


def cmd_baselines(args: list[str]) -> int:
    from stm3_lightning.reporting.baselines_table import baselines_table

    print(baselines_table(args))
    return 0


def cmd_report(args: list[str]) -> int:
    """``stm3 report [runs=<dir>|wandb:<entity>/<project>] [out=report] [baseline=full]``: tables and plots."""
    from pathlib import Path

    from stm3_lightning.reporting.report import collect, write_report

    values = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = sorted(set(values) - {"runs", "out", "baseline"} | {a for a in args if "=" not in a})
    if unknown:
        raise ConfigError(
            "stm3 report takes runs=<dir|wandb:entity/project>, out=<dir> and baseline=<variant>, not "
            f"{', '.join(unknown)}."
        )
    source = values.get("runs") or "outputs"
    path = write_report(collect(source), source, Path(values.get("out") or "report"), values.get("baseline"))
    print(f"report: {path}")
    return 0


def cmd_ablations(args: list[str]) -> int:
    """``stm3 ablations [data=..] [ablation=a,b] [seed=k|seeds=1,2,3] [dry_run=true] [overrides]``: the grid."""
    from stm3_lightning.reporting.ablations import parse_request, plan_grid, run_grid

    request = parse_request(args)
    outcome = run_grid(plan_grid(request), dry_run=request.dry_run)
    root = f"{request.root_dir}/ablations/{request.data}"
    print(
        f"ablations: {len(outcome.ran)} ran, {len(outcome.skipped)} already done, {len(outcome.failed)} failed; "
        f"compare with `make report RUNS={root}`"
    )
    return 1 if outcome.failed else 0


def _collect_and_table(request) -> None:
    from stm3_lightning.reporting.reproduction import write_results
    from stm3_lightning.reporting.results_table import write_table

    print(f"results: {write_results(request)}")
    print(f"table: {write_table(request.results_dir)}")


def _reproduce_request(args: list[str]):
    from stm3_lightning.reporting.protocol_checks import CHECKS
    from stm3_lightning.run.reproduce import parse_request

    return parse_request(args, CHECKS)


def cmd_reproduce(args: list[str]) -> int:
    """``stm3 reproduce data=<name> [seeds=1,2,3] [variant=..] [eval_seeds=5] [checks=..] [overrides]``."""
    from stm3_lightning.reporting.reproduction import seed_dirs
    from stm3_lightning.run.reproduce import group_dir, train_seeds

    request = _reproduce_request(args)
    outcome = train_seeds(request)
    print(
        f"reproduce: {len(outcome.ran)} seed(s) trained, {len(outcome.skipped)} already done, "
        f"{len(outcome.failed)} failed"
    )
    if request.dry_run:
        return 0
    if any((p / "test_metrics.json").is_file() for _, p in seed_dirs(group_dir(request))):
        _collect_and_table(request)
    return 1 if outcome.failed else 0


def cmd_results(args: list[str]) -> int:
    """``stm3 results``: regenerate results/README.md; with data=<name> [overrides], first rebuild that group's
    results/<group>.json from its finished run folders (evaluations only, no training)."""
    if any(a.startswith("data=") for a in args):
        _collect_and_table(_reproduce_request(args))
        return 0
    from pathlib import Path

    from stm3_lightning.config.compose import project_root
    from stm3_lightning.reporting.results_table import write_table

    values = dict(a.split("=", 1) for a in args if "=" in a)
    unknown = sorted(set(values) - {"results_dir"} | {a for a in args if "=" not in a})
    if unknown:
        raise ConfigError(
            f"stm3 results takes data=<dataset> [overrides] or results_dir=<dir>, not {', '.join(unknown)}."
        )
    print(f"table: {write_table(Path(values.get('results_dir') or project_root() / 'results'))}")
    return 0


COMMANDS = {
    "train": cmd_train,
    "eval": cmd_eval,
    "summary": cmd_summary,
    "datasets": cmd_datasets,
    "baselines": cmd_baselines,
    "report": cmd_report,
    "ablations": cmd_ablations,
    "reproduce": cmd_reproduce,
    "results": cmd_results,
}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="stm3", description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("command", choices=sorted(COMMANDS))
    parser.add_argument(
        "-m",
        "--multirun",
        action="store_true",
        help="train: run the grid of key=a,b,c sweeps (see README, Multirun)",
    )
    parser.add_argument("overrides", nargs="*", help="group=name choices and key=value overrides")
    ns = parser.parse_intermixed_args(argv)
    if ns.multirun and ns.command != "train":
        parser.error(f"-m (multirun) applies to `stm3 train`, not `stm3 {ns.command}`")
    configure_console(logging.INFO)
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    try:
        return (cmd_multirun if ns.multirun else COMMANDS[ns.command])(ns.overrides)
    except _expected_errors() as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except SIGTERMException as exc:
        print(_preempted_message(exc), file=sys.stderr)
        return 143


if __name__ == "__main__":
    sys.exit(main())
