"""``stm3 reproduce``: the release's configuration of one dataset, trained for several seeds, then collected.

``stm3 reproduce data=<name> [seeds=1,2,3] [variant=<label>] [overrides]`` runs ``experiment=reproduce/<name>``
(plain ``data=<name>`` for a dataset without a paper config, e.g. ``synthetic``) plus the overrides once per seed,
each in ``<root_dir>/reproduce/<name>-<L>-<H>[-<variant>]/seed<k>/`` (L, H: the resolved ``data.input_len`` and
``data.horizon``) and in its own process. It is resumable: a seed whose folder holds ``test_metrics.json`` is
skipped, one that holds a run but no results (killed, preempted) is continued with ``stm3 train resume=<folder>``
and the same overrides (so e.g. a larger ``trainer.max_epochs`` applies to it); a finished seed that its budget
stopped (not early stopping) is continued the same way when a larger ``trainer.max_epochs`` is asked for, its
earlier ``test_metrics.json`` kept as ``test_metrics.max_epochs-<old>.json`` (:func:`plan_reopening`);
``callbacks.checkpoint.every_n_train_steps`` defaults to :data:`STEP_CHECKPOINT_INTERVAL` so a kill loses little,
and ``callbacks.test_every_epoch`` defaults to true (the test curve the protocol checks need). A folder holding a
run of another configuration is refused (name the new one with ``variant=``). Afterwards the finished seeds are
collected into ``results/<group>.json`` (:mod:`stm3_lightning.reporting.reproduction`) and ``results/README.md``
is regenerated.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from stm3_lightning.config.compose import ConfigError, compose, compose_saved, project_root
from stm3_lightning.reporting.ablations import (
    Cell,
    GridOutcome,
    Runner,
    base_args,
    flatten,
    parse_seeds,
    run_grid,
    split_runner_args,
)

DEFAULT_SEEDS: tuple[int, ...] = (1, 2, 3)
STEP_CHECKPOINT_INTERVAL = 20
# Defaults of every seed's run, each overridable on the command line.
RUN_DEFAULTS: dict[str, str] = {
    "callbacks.checkpoint.every_n_train_steps": str(STEP_CHECKPOINT_INTERVAL),
    "callbacks.test_every_epoch": "true",
}
# Eval seeds whose test MAE spread each results file reports (``eval_seeds=``).
DEFAULT_EVAL_SEEDS = 5
# Keys of ``stm3 reproduce`` itself; every other ``key=value`` is an override of each seed's run.
RUNNER_KEYS: tuple[str, ...] = (
    "data",
    "seeds",
    "seed",
    "variant",
    "eval_seeds",
    "checks",
    "results_dir",
    "dry_run",
)
# Config keys that name a run (its seed, folder, machine paths, W&B labels), not the configuration reproduced.
IDENTITY_PREFIXES: tuple[str, ...] = (
    "seed=",
    "paths.",
    "logger.wandb.",
    "resume=",
    "ckpt_path=",
    "choices.",
)
# Keys a continued or repeated seed may change (budget and bookkeeping); any other difference is another run.
MUTABLE_PREFIXES: tuple[str, ...] = (
    "trainer.max_epochs=",
    "callbacks.",
    "logger.",
    "data.num_workers=",
    "data.eval_batch_size=",
    "trainer.enable_progress_bar=",
    "trainer.log_every_n_steps=",
    "eval_seed=",
)


@dataclass(frozen=True)
class ReproduceRequest:
    """What ``stm3 reproduce`` / ``stm3 results`` was asked for."""

    data: str
    seeds: list[int]
    variant: str = ""
    extra: list[str] = field(default_factory=list)
    eval_seeds: int = DEFAULT_EVAL_SEEDS
    checks: tuple[str, ...] = ()
    results_dir: Path = Path("results")
    dry_run: bool = False


def _truthy(value: str) -> bool:
    return value.lower() in ("1", "true", "yes")


def parse_request(args: Sequence[str], checks_available: Sequence[str] = ()) -> ReproduceRequest:
    """Split arguments into the runner's keys (:data:`RUNNER_KEYS`) and per-seed overrides."""
    own, extra = split_runner_args(
        args,
        RUNNER_KEYS,
        example="data=pems08 seeds=1,2",
        refuse=lambda key: (
            f"stm3 reproduce sets {key} itself (the paper config and one folder per seed); drop {key}= or "
            "train a single configuration with `stm3 train`."
        ),
    )
    if not own.get("data"):
        raise ConfigError("stm3 reproduce needs data=<dataset>, e.g. make reproduce DATA=pems08.")
    seeds = parse_seeds(own.get("seeds") or own.get("seed") or ",".join(map(str, DEFAULT_SEEDS)))
    checks = tuple(c for c in own.get("checks", ",".join(checks_available)).split(",") if c)
    unknown = sorted(set(checks) - set(checks_available))
    if unknown:
        raise ConfigError(
            f"Unknown protocol check(s) {', '.join(unknown)}; choose from {', '.join(checks_available)} "
            "(checks= with nothing after it runs none)."
        )
    try:
        eval_seeds = int(own.get("eval_seeds", str(DEFAULT_EVAL_SEEDS)))
    except ValueError as exc:
        raise ConfigError(
            f"eval_seeds={own['eval_seeds']} is not an integer; write e.g. eval_seeds=5."
        ) from exc
    variant = own.get("variant", "")
    if variant and not variant.replace("_", "").replace("-", "").isalnum():
        raise ConfigError(f"variant={variant} must be letters, digits, '-' or '_' (it names a folder).")
    results_dir = Path(own.get("results_dir") or project_root() / "results")
    return ReproduceRequest(
        own["data"],
        seeds,
        variant,
        extra,
        eval_seeds,
        checks,
        results_dir,
        _truthy(own.get("dry_run", "false")),
    )


def run_args(request: ReproduceRequest) -> list[str]:
    """The ``stm3 train`` arguments shared by every seed: paper config, :data:`RUN_DEFAULTS`, the overrides."""
    given = {a.split("=", 1)[0] for a in request.extra}
    defaults = [f"{k}={v}" for k, v in RUN_DEFAULTS.items() if k not in given]
    return [*base_args(request.data, None), *defaults, *request.extra]


def group_name(request: ReproduceRequest, cfg: DictConfig) -> str:
    """``<data>-<input_len>-<horizon>[-<variant>]``: the name of the seeds' folder and of the results file."""
    name = f"{request.data}-{cfg.data.input_len}-{cfg.data.horizon}"
    return f"{name}-{request.variant}" if request.variant else name


def group_dir(request: ReproduceRequest) -> Path:
    """``<root_dir>/reproduce/<group>``, with ``root_dir`` and the window resolved from the overrides."""
    cfg = compose(run_args(request))
    return Path(cfg.paths.root_dir) / "reproduce" / group_name(request, cfg)


def plan_seeds(request: ReproduceRequest) -> list[Cell]:
    """One ``stm3 train`` cell per seed, in ``<group dir>/seed<k>``."""
    root = group_dir(request)
    label = root.name
    return [
        Cell(
            label,
            seed,
            root / f"seed{seed}",
            [
                *run_args(request),
                f"seed={seed}",
                f"paths.output_dir={root / f'seed{seed}'}",
                f"logger.wandb.group=reproduce-{label}",
                f"logger.wandb.name={label}-seed{seed}",
            ],
        )
        for seed in request.seeds
    ]


def settings(cfg: DictConfig) -> dict[str, str]:
    """``key -> key=value`` of every leaf of ``cfg`` that defines the configuration (identity keys dropped, and
    ``data.synthetic.*`` unless the data is synthetic: the generator's defaults say nothing about a real dataset)."""
    pairs = flatten(OmegaConf.create(OmegaConf.to_container(cfg)))
    unused = ("data.synthetic.",) if cfg.data.name != "synthetic" else ()
    return {p.split("=", 1)[0]: p for p in pairs if not p.startswith((*IDENTITY_PREFIXES, *unused))}


def check_same_configuration(cell: Cell) -> None:
    """Refuse a seed folder that holds a run of another configuration than the one requested."""
    saved_path = cell.run_dir / "config.yaml"
    if not saved_path.is_file():
        return
    saved = settings(compose_saved(saved_path))
    wanted = settings(compose(cell.args))
    differ = sorted(
        wanted[k] for k in wanted if saved.get(k) != wanted[k] and not wanted[k].startswith(MUTABLE_PREFIXES)
    )
    if differ:
        raise ConfigError(
            f"{cell.run_dir} holds a run of another configuration (it differs in {', '.join(differ[:3])}); "
            "name this one with variant=<label> (make reproduce VARIANT=<label>) or use another paths.root_dir."
        )


@dataclass(frozen=True)
class Reopening:
    """A finished seed that a larger ``trainer.max_epochs`` continues: its results move to ``kept`` first."""

    cell: Cell
    old: int
    wanted: int
    kept: Path

    def apply(self) -> None:
        """Move ``test_metrics.json`` aside, so the seed is an interrupted run that the grid resumes."""
        (self.cell.run_dir / "test_metrics.json").rename(self.kept)


def _kept_name(run_dir: Path, old: int) -> Path:
    """``test_metrics.max_epochs-<old>.json``, or ``...-<old>.<k>.json`` when that exists (never overwritten)."""
    path, k = run_dir / f"test_metrics.max_epochs-{old}.json", 1
    while path.exists():
        k += 1
        path = run_dir / f"test_metrics.max_epochs-{old}.{k}.json"
    return path


STOP_WORDS: dict[str, str] = {
    "early stopping": "early stopping ended it",
    "other": "it stopped before its budget without early stopping (e.g. trainer.max_steps)",
}


def plan_reopening(cell: Cell) -> Reopening | str | None:
    """What a larger ``trainer.max_epochs`` does to a finished seed, without touching it.

    A seed that ran its whole (smaller) budget without early stopping is reopened (:class:`Reopening`): its
    ``test_metrics.json`` becomes ``test_metrics.max_epochs-<old>.json`` and the grid resumes it from
    ``checkpoints/last.ckpt``. One that early stopping (with the patience it was trained with) or another limit
    ended stays finished, and the returned sentence says why. ``None``: not finished, or no larger budget asked.
    """
    from stm3_lightning.reporting.reproduction import best_epoch, effective_config, read_curves, stopped_by

    results = cell.run_dir / "test_metrics.json"
    if not results.is_file():
        return None
    saved = effective_config(cell.run_dir)
    old, wanted = int(saved.trainer.max_epochs), int(compose(cell.args).trainer.max_epochs)
    if wanted <= old:
        return None
    epochs = len(read_curves(cell.run_dir / "csv" / "metrics.csv")["epoch"])
    es = saved.callbacks.early_stopping
    best = best_epoch(str(json.loads(results.read_text()).get("checkpoint", "")))
    reason = stopped_by(epochs, old, best, es.patience, es.enabled)
    if reason != "max_epochs":
        return (
            f"{cell.label}: finished after {epochs} epochs, where {STOP_WORDS[reason]}, so trainer.max_epochs="
            f"{wanted} does not continue it"
        )
    if not (cell.run_dir / "checkpoints" / "last.ckpt").is_file():
        raise ConfigError(
            f"{cell.run_dir} finished its {old} epochs but has no checkpoints/last.ckpt to continue to {wanted} from; "
            f"keep trainer.max_epochs={old}, or delete that folder to retrain the seed from scratch."
        )
    return Reopening(cell, old, wanted, _kept_name(cell.run_dir, old))


def check_results_file(request: ReproduceRequest, cells: Sequence[Cell]) -> None:
    """Refuse, before anything trains, seeds that the group's committed results file could not be collected with
    (it holds seeds of another configuration, or cannot be read); see
    :func:`stm3_lightning.reporting.reproduction.kept_records`."""
    from stm3_lightning.reporting.reproduction import command_args, kept_records, seed_dirs

    if cells:
        path = request.results_dir / f"{group_dir(request).name}.json"
        present = {seed for seed, _ in seed_dirs(group_dir(request))} | {c.seed for c in cells}
        kept_records(path, present, command_args(compose(cells[0].args), request.data))


def train_seeds(request: ReproduceRequest, runner: Runner | None = None) -> GridOutcome:
    """Train (or continue, or skip) every seed of ``request``, each in its own process (``subprocess.call``).

    Every seed is checked (configuration, budget) before any folder is changed, so a refused seed leaves all as
    they were.
    """
    cells = plan_seeds(request)
    check_results_file(request, cells)
    plans = []
    for cell in cells:
        check_same_configuration(cell)
        plans.append(plan_reopening(cell))
    reopened = [p for p in plans if isinstance(p, Reopening)]
    for plan in plans:
        if isinstance(plan, str):
            print(plan, flush=True)
    verb = "would continue (dry run)" if request.dry_run else "continuing"
    for plan in reopened:
        if not request.dry_run:
            plan.apply()
        print(
            f"{plan.cell.label}: ran its budget of {plan.old} epochs; {verb} to {plan.wanted} from last.ckpt "
            f"(earlier results: {plan.kept.name})",
            flush=True,
        )
    return run_grid(
        cells,
        runner=runner or subprocess.call,
        dry_run=request.dry_run,
        resume_overrides=True,
        reopened=frozenset(p.cell.run_dir for p in reopened),
    )
