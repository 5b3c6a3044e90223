"""``results/<group>.json``: the finished seeds of one ``stm3 reproduce`` group, evaluated and summarised.

Built from the run folders alone (``config.yaml`` and its resume records, ``test_metrics.json``, ``csv/metrics.csv``,
the best-validation checkpoint), so ``stm3 results`` can rebuild it at any time without training. Per seed: the
best-validation checkpoint's test metrics re-scored at the run's ``eval_seed`` (overall and at
``metrics.horizons``), best epoch, epochs run, why training stopped, wall time, machine, and the validation (and,
when recorded, test) curve per epoch; over seeds: mean ± sample std; the budget against the release's schedule; the
exact command; and the protocol checks of :mod:`stm3_lightning.reporting.protocol_checks`. Epochs are 1-based.

Results files are committed and run folders are not, so a seed already in the results file whose folder is not here
(trained in an earlier checkout) is kept as recorded, marked ``record_source``, when new seeds are collected.
"""

from __future__ import annotations

import csv
import json
import re
import shlex
import statistics
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from stm3_lightning.config.compose import GROUPS, ConfigError, compose, compose_saved
from stm3_lightning.reporting.ablations import base_args
from stm3_lightning.reporting.protocol_checks import CHECKS, SCALER_NOTE, run_checks, selection_check
from stm3_lightning.run.machine import machine_info
from stm3_lightning.run.reproduce import (
    DEFAULT_EVAL_SEEDS,
    MUTABLE_PREFIXES,
    RUN_DEFAULTS,
    RUNNER_KEYS,
    ReproduceRequest,
    group_dir,
    settings,
)
from stm3_lightning.run.results import atomic_write_text

# The release's schedule (reference §4): 100 epochs, early stopping patience 15 on validation loss.
RELEASE_MAX_EPOCHS = 100
RELEASE_PATIENCE = 15
CURVE_COLUMNS: dict[str, str] = {
    "val/mae": "val_mae",
    "val/rmse": "val_rmse",
    "val/mape": "val_mape",
    "test_curve/mae": "test_mae",
    "test_curve/rmse": "test_rmse",
    "test_curve/mape": "test_mape",
}
REPORT_METRICS: tuple[str, ...] = ("mae", "rmse", "mape")
# A run's own check name -> its section in the results file's ``protocol_checks``.
CHECK_SECTIONS: dict[str, str] = {
    "router_noise": "router_noise_at_eval",
    "eval_seeds": "eval_seed_spread",
    "split": "split",
}
FROM_RUN = "run folder"
KEPT = "kept from the committed results file (its run folder is not on this machine)"
# Keys of a seed record that the results file keeps elsewhere (per_epoch, protocol_checks) or not at all.
INTERNAL_KEYS: tuple[str, ...] = ("curves", "checks", "args")


def seed_dirs(group: Path) -> list[tuple[int, Path]]:
    """``(seed, folder)`` of every ``seed<k>`` folder in ``group``, by seed."""
    found = [(int(m.group(1)), p) for p in group.glob("seed*") if (m := re.fullmatch(r"seed(\d+)", p.name))]
    return sorted(found)


def effective_config(run_dir: Path) -> DictConfig:
    """The configuration a run finished with: its last ``config.resume-<k>.yaml``, else ``config.yaml``."""
    resumes = sorted(run_dir.glob("config.resume-*.yaml"), key=lambda p: int(p.stem.rsplit("-", 1)[1]))
    return compose_saved(resumes[-1] if resumes else run_dir / "config.yaml")


def read_curves(metrics_csv: Path) -> dict[str, list]:
    """Per validated epoch (1-based ``epoch``): ``val_mae/rmse/mape`` and ``test_mae/rmse/mape`` (``None`` where not
    logged) from a CSVLogger ``metrics.csv``; the last value logged in an epoch wins."""
    rows: dict[int, dict[str, float]] = {}
    if metrics_csv.is_file():
        with metrics_csv.open(newline="") as handle:
            for row in csv.DictReader(handle):
                if not row.get("epoch"):
                    continue
                values = rows.setdefault(int(float(row["epoch"])), {})
                for column, name in (("val/loss", "val_loss"), *CURVE_COLUMNS.items()):
                    if row.get(column):
                        values[name] = float(row[column])
    epochs = sorted(e for e, v in rows.items() if "val_loss" in v)
    curves: dict[str, list] = {"epoch": [e + 1 for e in epochs]}
    for name in CURVE_COLUMNS.values():
        curves[name] = [rows[e].get(name) for e in epochs]
    return curves


def best_epoch(checkpoint: str) -> int | None:
    """The 1-based epoch of a ``best-<epoch>.ckpt`` file name (0-based in the name), else ``None``."""
    match = re.search(r"best-(\d+)\.ckpt$", checkpoint)
    return int(match.group(1)) + 1 if match else None


def wall_time(run_dir: Path, results: dict) -> tuple[float, str, str]:
    """Training wall time in seconds, where it comes from, and what it is: ``exact``, ``lower`` or ``upper`` bound.

    Lightning's Timer (``train_wall_s``) when the results record its coverage (``train_wall_coverage``, see
    :mod:`stm3_lightning.callbacks.run_timer`): exact when it timed every step, a lower bound otherwise. Results
    written before the coverage was recorded, or whose Timer value exceeds the run folder's whole life, fall back to
    the folder's file times (``config.yaml`` to ``test_metrics.json``, an upper bound): their Timer may both miss
    early segments and count the tested checkpoint's time twice (fixed in
    :func:`stm3_lightning.run.train.test_and_report`)."""
    start = (run_dir / "config.yaml").stat().st_mtime
    span = round((run_dir / "test_metrics.json").stat().st_mtime - start, 1)
    files = "file times config.yaml -> test_metrics.json (includes any interruption)"
    if "train_wall_s" not in results:
        return span, files, "upper"
    timer = float(results["train_wall_s"])
    coverage = results.get("train_wall_coverage")
    if coverage is None or timer > span + 1.0:
        return (
            span,
            f"{files}; the Timer's {timer:.0f} s is not used (recorded before its coverage and the fix)",
            "upper",
        )
    source = "Timer callback (fit, validation and test curve; resumes summed)"
    if coverage == "full":
        return timer, source, "exact"
    return timer, f"{source}; timed {coverage}, earlier segments are untimed", "lower"


def stopped_by(epochs_run: int, max_epochs: int, best: int | None, patience: int, early_stop: bool) -> str:
    """``early stopping`` (patience exhausted), ``max_epochs`` (the budget ended training first) or ``other``
    (fewer epochs without exhausting the patience, e.g. ``trainer.max_steps``)."""
    if early_stop and best is not None and epochs_run - best >= patience:
        return "early stopping"
    return "max_epochs" if epochs_run >= max_epochs else "other"


def checkpoint_of(run_dir: Path, results: dict) -> Path:
    """The checkpoint ``test_metrics.json`` names, looked up in the run's own ``checkpoints/`` folder first (the
    recorded path may be relative to where training ran)."""
    recorded = Path(results.get("checkpoint", ""))
    local = run_dir / "checkpoints" / recorded.name
    for candidate in (local, recorded):
        if candidate.name.endswith(".ckpt") and candidate.is_file():
            return candidate
    raise ConfigError(
        f"{run_dir}/test_metrics.json names the checkpoint {recorded}, which does not exist; restore it or retrain "
        "that seed (delete its folder and rerun make reproduce)."
    )


def seed_record(seed: int, run_dir: Path, request: ReproduceRequest) -> dict[str, Any]:
    """One finished seed: metrics, schedule, time, machine, curves and its protocol checks."""
    results = json.loads((run_dir / "test_metrics.json").read_text())
    cfg = effective_config(run_dir)
    ckpt = checkpoint_of(run_dir, results)
    curves = read_curves(run_dir / "csv" / "metrics.csv")
    checks = run_checks(run_dir, ckpt, request.checks, request.eval_seeds)
    es = cfg.callbacks.early_stopping
    best = best_epoch(str(ckpt))
    seconds, source, bound = wall_time(run_dir, results)
    machine = results.get("machine")
    test = checks["test"]["metrics"]
    return {
        "seed": seed,
        "run_dir": str(run_dir),
        "checkpoint": ckpt.name,
        "eval_seed": checks["test"]["eval_seed"],
        "test": {k: v for k, v in test.items() if k.split("@")[0] in REPORT_METRICS},
        "test_at_training": {k: results["overall"][k] for k in REPORT_METRICS},
        "best_epoch": best,
        "epochs_run": len(curves["epoch"]),
        "max_epochs": int(cfg.trainer.max_epochs),
        "stopped_by": stopped_by(len(curves["epoch"]), cfg.trainer.max_epochs, best, es.patience, es.enabled),
        "wall_time_s": seconds,
        "wall_time_source": source,
        "wall_time_bound": bound,
        "machine": machine or machine_info(),
        "machine_source": "recorded by the run"
        if machine
        else "this machine at collect time (not recorded by the run)",
        "record_source": FROM_RUN,
        "curves": curves,
        "checks": checks,
        "args": command_args(cfg, request.data),
    }


def doc_args(doc: dict[str, Any]) -> list[str]:
    """The run overrides of a results file's ``stm3`` command (without ``stm3 reproduce``'s own keys: ``data=``,
    ``seeds=``, ``variant=``, ``checks=``, ...)."""
    fixed = tuple(f"{k}=" for k in RUNNER_KEYS)
    return [a for a in shlex.split(doc["command"]["stm3"])[2:] if not a.startswith(fixed)]


def kept_record(doc: dict[str, Any], seed: dict[str, Any]) -> dict[str, Any]:
    """A seed record rebuilt from a results file: its metrics, curves, protocol checks and command overrides."""
    checks_doc = doc["protocol_checks"]
    number = seed["seed"]

    def row(section: str) -> dict[str, Any] | None:
        rows = [r for r in checks_doc[section]["per_seed"] if r["seed"] == number]
        return {k: v for k, v in rows[0].items() if k != "seed"} if rows else None

    averaging = row("rmse_averaging") or {}
    checks: dict[str, Any] = {
        "test": {
            "metrics": seed["test"],
            "eval_seed": seed["eval_seed"],
            "release_per_batch": averaging["release_per_batch"],
            "global": averaging["global"],
        }
    }
    checks.update(
        {name: found for name, section in CHECK_SECTIONS.items() if (found := row(section)) is not None}
    )
    differ = [d["args"] for d in doc.get("commands_differ", []) if d["seed"] == number]
    return {
        **seed,
        "record_source": KEPT,
        "curves": doc["per_epoch"][f"seed{number}"],
        "checks": checks,
        "args": differ[0] if differ else doc_args(doc),
    }


def kept_records(path: Path, present: set[int], args: list[str]) -> list[dict[str, Any]]:
    """The seed records of the results file at ``path`` whose seeds have no run folder here (``present``): results
    files are committed, run folders are not, so collecting a new seed must not drop the earlier ones. ``args``: the
    overrides of the seeds collected now; a kept seed of another configuration is refused (see
    :func:`configuration_differences`)."""
    if not path.is_file():
        return []
    try:
        doc = json.loads(path.read_text())
        kept = [kept_record(doc, s) for s in doc["seeds"] if s["seed"] not in present]
    except (KeyError, IndexError, TypeError, ValueError) as err:
        raise ConfigError(
            f"{path} cannot be kept beside the new seeds ({type(err).__name__}: {err}); restore its seeds' run "
            "folders, or move the file aside to collect only the seeds whose folders are here."
        ) from err
    for record in kept:
        if differ := configuration_differences(record["args"], args):
            raise ConfigError(
                f"{path} holds seed {record['seed']} of another configuration ({', '.join(differ)}) than the seeds "
                "collected now; name the new runs with VARIANT=<label>, or move that file aside."
            )
    return kept


def configuration_differences(kept: list[str], new: list[str]) -> list[str]:
    """The ``key=value`` overrides of ``new`` (or keys of ``kept``) that make them different configurations; the
    budget and bookkeeping keys a continued seed may change (:data:`MUTABLE_PREFIXES`) do not count."""

    def fixed(args: list[str]) -> dict[str, str]:
        return {a.split("=", 1)[0]: a for a in args if not a.startswith(MUTABLE_PREFIXES)}

    old, now = fixed(kept), fixed(new)
    return sorted(now.get(k, f"{k} unset") for k in old.keys() | now.keys() if old.get(k) != now.get(k))


def mean_std(values: list[float]) -> dict[str, float | int | None]:
    """Mean and sample standard deviation (``None`` for a single value)."""
    return {
        "mean": statistics.fmean(values),
        "std": statistics.stdev(values) if len(values) > 1 else None,
        "n": len(values),
    }


def command_args(cfg: DictConfig, data: str) -> list[str]:
    """The ``stm3 reproduce`` overrides that rebuild ``cfg``: group choices and values that differ from the paper
    config with the runner's defaults (:data:`RUN_DEFAULTS`); identity keys (seed, paths, W&B names) left out."""
    base_cfg = compose(base_args(data, None))
    groups = [f"{g}={cfg.choices[g]}" for g in GROUPS if cfg.choices.get(g) != base_cfg.choices.get(g)]
    base = settings(compose([*base_args(data, None), *groups]))
    base.update({k: f"{k}={v}" for k, v in RUN_DEFAULTS.items()})
    own = settings(cfg)
    return [*groups, *(own[k] for k in own if base.get(k) != own[k])]


def evaluation_args(request: ReproduceRequest) -> list[str]:
    """``checks=...`` and ``eval_seeds=...`` of ``request`` where they are not the defaults (every check, 5 eval
    seeds), so the recorded command says which protocol checks ran."""
    out = [] if set(request.checks) == set(CHECKS) else [f"checks={','.join(request.checks)}"]
    return out + ([f"eval_seeds={request.eval_seeds}"] if request.eval_seeds != DEFAULT_EVAL_SEEDS else [])


def commands(data: str, seeds: list[int], variant: str, args: list[str]) -> dict[str, str]:
    """The ``make`` and ``stm3`` command lines of a group."""
    seeds_text = ",".join(map(str, seeds))
    make = f"make reproduce DATA={data} SEEDS={seeds_text}"
    make += f" VARIANT={variant}" if variant else ""
    make += f" ARGS={shlex.quote(' '.join(args))}" if args else ""
    stm3 = shlex.join(
        [
            "stm3",
            "reproduce",
            f"data={data}",
            f"seeds={seeds_text}",
            *([f"variant={variant}"] if variant else []),
            *args,
        ]
    )
    return {"make": make, "stm3": stm3}


def budget(records: list[dict], cfg: DictConfig) -> dict[str, Any]:
    """The epoch budget against the release's (100 epochs, patience 15) and whether it limited the result."""
    es = cfg.callbacks.early_stopping
    max_epochs = max(r["max_epochs"] for r in records)
    by_budget = [r["seed"] for r in records if r["stopped_by"] != "early stopping"]
    reasons = []
    if max_epochs < RELEASE_MAX_EPOCHS:
        reasons.append(f"max_epochs {max_epochs} < the release's {RELEASE_MAX_EPOCHS}")
    if es.enabled and es.patience < RELEASE_PATIENCE:
        reasons.append(f"early-stopping patience {es.patience} < the release's {RELEASE_PATIENCE}")
    if by_budget:
        reasons.append(f"seed(s) {', '.join(map(str, by_budget))} stopped before early stopping")
    return {
        "max_epochs": max_epochs,
        "patience": int(es.patience) if es.enabled else None,
        "release_max_epochs": RELEASE_MAX_EPOCHS,
        "release_patience": RELEASE_PATIENCE,
        "budget_limited": bool(reasons),
        "reason": "; ".join(reasons) or "every seed stopped by early stopping within the release's budget",
    }


def protocol(cfg: DictConfig) -> dict[str, Any]:
    """The evaluation protocol of a group's runs, in words and values."""
    split = cfg.data.split
    cut = f"borders {list(split.borders)}" if split.mode == "borders" else f"ratios {list(split.ratios)}"
    return {
        "metrics": str(cfg.metrics.protocol),
        "metrics_meaning": "unmasked MAE/RMSE, MAPE over truth > 0 as a fraction"
        if cfg.metrics.protocol == "official"
        else f"entries equal to {cfg.data.null_val} excluded from every metric",
        "units": "original" if cfg.data.real_value else "z-scored",
        "split": f"{split.mode}, {cut}",
        "scaler": f"{cfg.data.scaler.kind}, {'per node' if cfg.data.scaler.per_node else 'global'}, fit on train",
        "checkpoint": "lowest validation MAE (val/loss); test never used for selection",
        "rmse": "global sqrt(MSE) over all test entries and steps",
        "router_noise_at_eval": bool(cfg.model.get("router_noise_at_eval", False)),
        "eval_seed": "the run's seed unless eval_seed is set",
        "report_horizons": list(cfg.metrics.horizons),
    }


def _per_seed(records: list[dict], check: str) -> list[dict]:
    return [{"seed": r["seed"], **r["checks"][check]} for r in records if check in r["checks"]]


def protocol_checks(records: list[dict]) -> dict[str, Any]:
    """Every protocol check, per seed, with the seeds' mean effect where one exists."""
    selection = [{"seed": r["seed"], **selection_check(r["curves"])} for r in records]
    averaging = []
    for r in records:
        test = r["checks"]["test"]
        release, glob = test["release_per_batch"], test["global"]
        averaging.append(
            {
                "seed": r["seed"],
                "global": {k: glob[k] for k in ("mae", "rmse", "rmse_mean_over_steps", "mape")},
                "release_per_batch": {k: release[k] for k in REPORT_METRICS},
                "delta_rmse": release["rmse"] - glob["rmse"],
            }
        )
    out: dict[str, Any] = {
        "checkpoint_selection": _with_mean(selection, "delta_mae"),
        "rmse_averaging": _with_mean(averaging, "delta_rmse"),
        CHECK_SECTIONS["router_noise"]: _with_mean(_per_seed(records, "router_noise"), "delta_mae"),
        CHECK_SECTIONS["eval_seeds"]: _with_mean(_per_seed(records, "eval_seeds"), "range"),
        CHECK_SECTIONS["split"]: {"per_seed": _per_seed(records, "split")},
        "scaler": {"status": SCALER_NOTE},
    }
    return out


def _with_mean(rows: list[dict], key: str) -> dict[str, Any]:
    values = [r[key] for r in rows if r.get(key) is not None]
    return {"per_seed": rows, f"mean_{key}": statistics.fmean(values) if values else None}


def build_results(request: ReproduceRequest) -> dict[str, Any]:
    """The results document of ``request``'s group from its finished seed folders."""
    group = group_dir(request)
    folders = seed_dirs(group)
    finished = [(s, p) for s, p in folders if (p / "test_metrics.json").is_file()]
    if not finished:
        raise ConfigError(
            f"{group} holds no finished seed (no seed<k>/test_metrics.json); run `make reproduce DATA={request.data}` "
            "with the same ARGS first."
        )
    records = [seed_record(seed, path, request) for seed, path in finished]
    cfg = effective_config(finished[0][1])
    args = command_args(cfg, request.data)
    records += kept_records(request.results_dir / f"{group.name}.json", {s for s, _ in folders}, args)
    records.sort(key=lambda r: r["seed"])
    seeds = [r["seed"] for r in records]
    keys = [k for k in records[0]["test"]]
    return {
        "name": group.name,
        "dataset": request.data,
        "input_len": int(cfg.data.input_len),
        "horizon": int(cfg.data.horizon),
        "variant": request.variant,
        "model": str(cfg.model.name),
        "experiment": cfg.choices.get("experiment", ""),
        "protocol": protocol(cfg),
        "budget": budget(records, cfg),
        "seeds": [{k: v for k, v in r.items() if k not in INTERNAL_KEYS} for r in records],
        "unfinished_seeds": [s for s, p in folders if (s, p) not in finished],
        "mean_std": {k: mean_std([r["test"][k] for r in records]) for k in keys},
        "command": commands(request.data, seeds, request.variant, [*evaluation_args(request), *args]),
        "commands_differ": [{"seed": r["seed"], "args": r["args"]} for r in records if r["args"] != args],
        "per_epoch": {f"seed{r['seed']}": r["curves"] for r in records},
        "protocol_checks": protocol_checks(records),
    }


def write_results(request: ReproduceRequest) -> Path:
    """Write ``<results_dir>/<group>.json`` and return its path."""
    doc = build_results(request)
    request.results_dir.mkdir(parents=True, exist_ok=True)
    path = request.results_dir / f"{doc['name']}.json"
    atomic_write_text(path, json.dumps(doc, indent=2, sort_keys=False) + "\n")
    return path
