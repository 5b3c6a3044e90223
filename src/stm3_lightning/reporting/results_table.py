"""``results/README.md``: every ``results/<group>.json`` next to the paper's number, published peers and baselines.

Inputs (all committed): the reproduction results written by ``stm3 reproduce`` / ``stm3 results``, the published
numbers with their sources in ``results/reference/published.json`` (each entry cites paper and table), and the
project's baselines in ``results/reference/baselines-<dataset>.json`` (rows of ``stm3 baselines``). The text is
generated from those files only; the section on why the reported PEMSD8 number may differ is filled from the
``protocol_checks`` of the PEMS08 results.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Iterable
from pathlib import Path
from typing import Any

REFERENCE_DIR = "reference"
PUBLISHED_FILE = "published.json"
PAPER_DATASET = "pems08"
UNIT_NOTES: dict[str, str] = {"pems08": " (vehicles per 5 min)", "pems04": " (vehicles per 5 min)"}


def load_results(results_dir: Path) -> list[dict]:
    """Every ``<results_dir>/*.json`` reproduction results document, by setting, the faithful runs before their
    variants."""
    docs = [json.loads(p.read_text()) for p in results_dir.glob("*.json")]
    docs = [d for d in docs if "seeds" in d and "protocol_checks" in d]
    return sorted(
        docs, key=lambda d: (d["dataset"], d["input_len"], d["horizon"], d.get("variant") or "", d["name"])
    )


def load_omitted(results_dir: Path) -> list[dict]:
    """Published numbers deliberately left out (``omitted`` in published.json), with the reason."""
    path = results_dir / REFERENCE_DIR / PUBLISHED_FILE
    return json.loads(path.read_text()).get("omitted", []) if path.is_file() else []


def load_reference(results_dir: Path) -> tuple[list[dict], list[dict]]:
    """Published numbers and the project's baseline rows (each row tagged with its dataset)."""
    ref = results_dir / REFERENCE_DIR
    path = ref / PUBLISHED_FILE
    published = published_entries(json.loads(path.read_text())["entries"]) if path.is_file() else []
    baselines = []
    for path in sorted(ref.glob("baselines-*.json")):
        dataset = path.stem.split("-", 1)[1]
        baselines += [{**row, "dataset": dataset} for row in json.loads(path.read_text())]
    return published, baselines


def fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def mean_pm(values: list[float], digits: int = 2, scale: float = 1.0) -> str:
    """``mean ± sample std`` (just the value for one seed)."""
    values = [v * scale for v in values]
    if len(values) == 1:
        return fmt(values[0], digits)
    return f"{fmt(statistics.fmean(values), digits)} ± {fmt(statistics.stdev(values), digits)}"


def setting_key(dataset: str, input_len: int | str, horizon: int | str) -> str:
    return f"{dataset} {input_len}→{horizon}"


def z_scored(doc: dict) -> bool:
    return doc["protocol"]["units"] == "z-scored"


def budget_text(doc: dict) -> str:
    b = doc["budget"]
    epochs = "/".join(str(s["epochs_run"]) for s in doc["seeds"])
    flag = " **budget-limited**" if b["budget_limited"] else ""
    return f"≤{b['max_epochs']} ep, patience {b['patience']}; ran {epochs}{flag}"


def result_row(doc: dict) -> list[str]:
    """One reproduction results document as a table row (MAE, RMSE or MSE, MAPE %)."""
    seeds = doc["seeds"]
    mae = [s["test"]["mae"] for s in seeds]
    rmse = [s["test"]["rmse"] for s in seeds]
    label = f"STM3 (this repo{', ' + doc['variant'] if doc['variant'] else ''})"
    second = mean_pm([r * r for r in rmse], 3) if z_scored(doc) else mean_pm(rmse)
    mape = "–" if z_scored(doc) else mean_pm([s["test"]["mape"] for s in seeds], 2, 100.0)
    digits = 3 if z_scored(doc) else 2
    seeds_text = ",".join(str(s["seed"]) for s in seeds)
    return [
        label,
        mean_pm(mae, digits),
        second,
        mape,
        f"seeds {seeds_text}; {budget_text(doc)}",
        f"`results/{doc['name']}.json`",
    ]


def published_row(entry: dict) -> list[str]:
    """A published number: MAE, RMSE (or MSE on z-scored data), MAPE %, at the precision the source gives."""
    m, digits = entry["metrics"], int(entry.get("digits", 2))
    second = fmt(m["mse"], digits) if "mse" in m else fmt(m.get("rmse"), digits)
    return [
        entry["model"],
        fmt(m["mae"], digits),
        second,
        fmt(m.get("mape")),
        entry.get("protocol", ""),
        entry["source"],
    ]


def baseline_row(row: dict) -> list[str]:
    return [
        f"{row['model']} (project baseline, {row['setting']})",
        fmt(row["mae"]),
        fmt(row["rmse"]),
        fmt(100 * row["mape"]),
        f"{row['protocol']} protocol, seed 12",
        "`results/reference/baselines-" + row["dataset"] + ".json` (`make baselines`)",
    ]


def markdown(header: list[str], rows: Iterable[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def settings_of(docs: list[dict], published: list[dict]) -> list[tuple[str, int, int]]:
    """Every (dataset, input_len, horizon) with a reproduction result or a published number."""
    keys = {(d["dataset"], d["input_len"], d["horizon"]) for d in docs}
    keys |= {(p["dataset"], p["input_len"], p["horizon"]) for p in published if isinstance(p["horizon"], int)}
    return sorted(keys)


def section(
    setting: tuple[str, int, int], docs: list[dict], published: list[dict], baselines: list[dict]
) -> str:
    """The table of one (dataset, input -> horizon) setting."""
    dataset, input_len, horizon = setting
    mine = [d for d in docs if (d["dataset"], d["input_len"], d["horizon"]) == setting]
    peers = [
        p
        for p in published
        if p["dataset"] == dataset
        and (p["horizon"], p["input_len"]) in ((horizon, input_len), ("not stated", "not stated"))
    ]
    base = [
        b
        for b in baselines
        if b["dataset"] == dataset and b["protocol"] == "official" and b["setting"].endswith(f"->{horizon}")
    ]
    z = any(z_scored(d) for d in mine) or any("mse" in p["metrics"] for p in peers)
    header = ["model", "MAE", "MSE" if z else "RMSE", "MAPE (%)", "seeds, budget, protocol", "source"]
    rows = [result_row(d) for d in mine] + [published_row(p) for p in peers] + [baseline_row(b) for b in base]
    units = (
        "z-scored units (per-variable train mean/std)"
        if z
        else f"original units{UNIT_NOTES.get(dataset, '')}"
    )
    return f"### {setting_key(dataset, input_len, horizon)}\n\n{units}.\n\n" + markdown(header, rows)


def gap_lines(docs: list[dict], published: list[dict]) -> list[str]:
    """One plain sentence per PEMS08 result: its MAE/RMSE against the paper's PEMSD8 number."""
    paper = next((p for p in published if p.get("paper") and p["dataset"] == PAPER_DATASET), None)
    if paper is None:
        return []
    out = []
    for d in (d for d in docs if d["dataset"] == PAPER_DATASET):
        mae = statistics.fmean(s["test"]["mae"] for s in d["seeds"])
        rmse = statistics.fmean(s["test"]["rmse"] for s in d["seeds"])
        pm, pr = paper["metrics"]["mae"], paper["metrics"]["rmse"]
        out.append(
            f"- `{d['name']}`: MAE {mae:.2f} vs the paper's {pm} ({mae - pm:+.2f}, {100 * (mae - pm) / pm:+.0f} %), "
            f"RMSE {rmse:.2f} vs {pr} ({rmse - pr:+.2f}); {len(d['seeds'])} seed(s), "
            f"{'budget-limited' if d['budget']['budget_limited'] else 'full budget'}."
        )
    return out


def _mean(values: list[float]) -> float | None:
    return statistics.fmean(values) if values else None


def protocol_lines(doc: dict) -> list[str]:
    """The measured effect of each protocol detail on one results document, as sentences with numbers."""
    checks = doc["protocol_checks"]
    name = f"`{doc['name']}`"
    out = []
    sel = [r for r in checks["checkpoint_selection"]["per_seed"] if "delta_mae" in r]
    if sel:
        d = _mean([r["delta_mae"] for r in sel])
        parts = ", ".join(
            f"seed {r['seed']}: epoch {r['val_selected']['epoch']} → {r['test_selected']['epoch']}, "
            f"{r['val_selected']['test_mae']:.2f} → {r['test_selected']['test_mae']:.2f}"
            + (f" (best of the {r['coverage']})" if "coverage" in r else "")
            for r in sel
        )
        out.append(
            f"- {name}, checkpoint chosen on test instead of validation: MAE {d:+.3f} on average ({parts})."
        )
    else:
        out.append(f"- {name}, checkpoint chosen on test: not measured (no per-epoch test curve recorded).")
    avg = checks["rmse_averaging"]["per_seed"]
    if avg:
        out.append(
            f"- {name}, the release's per-batch averaging on the same predictions: RMSE "
            f"{_mean([r['release_per_batch']['rmse'] for r in avg]):.2f} vs global "
            f"{_mean([r['global']['rmse'] for r in avg]):.2f} (mean of per-step RMSEs "
            f"{_mean([r['global']['rmse_mean_over_steps'] for r in avg]):.2f}); MAE "
            f"{_mean([r['release_per_batch']['mae'] for r in avg]):.3f} vs {_mean([r['global']['mae'] for r in avg]):.3f}."
        )
    noise = [r for r in checks["router_noise_at_eval"]["per_seed"] if "delta_mae" in r]
    if noise:
        out.append(
            f"- {name}, router noise at evaluation off instead of on: MAE {_mean([r['delta_mae'] for r in noise]):+.4f}."
        )
    spread = checks["eval_seed_spread"]["per_seed"]
    if spread:
        out.append(
            f"- {name}, MAE over eval seeds 0..{len(spread[0]['mae']) - 1} per checkpoint: range up to "
            f"{max(r['range'] for r in spread):.4f} (std up to {max(r['std'] for r in spread):.4f})."
        )
    splits = [r for r in checks["split"]["per_seed"] if "window" in r]
    if splits:
        text = "; ".join(
            f"{mode} {_mean([r[mode]['mae'] for r in splits]):.2f} ({splits[0][mode]['windows']} windows)"
            for mode in ("ratio", "window", "ratio_lookback")
        )
        out.append(f"- {name}, test MAE of the same checkpoint by split convention: {text}.")
    return out


def horizon_line(docs: list[dict]) -> list[str]:
    """The horizon effect: our PEMS08 MAE at each horizon measured."""
    pems = sorted(
        (d for d in docs if d["dataset"] == PAPER_DATASET and not d["variant"]), key=lambda d: d["horizon"]
    )
    if len(pems) < 2:
        return []
    parts = ", ".join(
        f"{d['input_len']}→{d['horizon']}: {statistics.fmean(s['test']['mae'] for s in d['seeds']):.2f} "
        f"(epochs run {'/'.join(str(s['epochs_run']) for s in d['seeds'])}"
        f"{', budget-limited' if d['budget']['budget_limited'] else ''})"
        for d in pems
    )
    return [
        f"- horizon (not stated for the paper's number): this repo's STM3 test MAE {parts}; compare horizons only "
        "at equal budgets."
    ]


def budget_matched(curves: dict[str, list], epochs: int) -> dict[str, Any] | None:
    """The validation-selected epoch among a run's first ``epochs`` epochs, its validation MAE and its test MAE from
    the test curve (``None`` where that epoch has no test point); ``None`` when the run has fewer epochs.

    curves: a results file's ``per_epoch`` entry (``epoch``, ``val_mae``, ``test_mae`` lists, 1-based epochs).
    """
    first = [i for i, e in enumerate(curves.get("epoch", [])) if e <= epochs]
    if len(first) < epochs:
        return None
    best = min(first, key=lambda i: curves["val_mae"][i])
    return {
        "epoch": curves["epoch"][best],
        "val_mae": curves["val_mae"][best],
        "test_mae": curves["test_mae"][best],
    }


def _values_text(rows: list[tuple[int, float]]) -> str:
    """``a ± b (seed 1: x, seed 2: y)`` of (seed, value) pairs, or ``not recorded``."""
    if not rows:
        return "not recorded"
    values = [v for _, v in rows]
    per_seed = ", ".join(f"seed {k}: {v:.2f}" for k, v in rows)
    return f"{mean_pm(values)} ({per_seed})"


def _faithful_of(variant: dict, docs: list[dict]) -> dict | None:
    """The results document without a variant of ``variant``'s dataset and window, if any."""
    setting = (variant["dataset"], variant["input_len"], variant["horizon"])
    same = [d for d in docs if not d["variant"] and (d["dataset"], d["input_len"], d["horizon"]) == setting]
    return same[0] if same else None


def _matched(doc: dict, epochs: int) -> list[tuple[int, dict]]:
    """(seed, :func:`budget_matched` pick) of every seed of ``doc`` that ran at least ``epochs`` epochs."""
    curves = doc.get("per_epoch") or {}
    picks = [(s["seed"], budget_matched(curves.get(f"seed{s['seed']}", {}), epochs)) for s in doc["seeds"]]
    return [(k, m) for k, m in picks if m is not None]


def variant_lines(docs: list[dict]) -> list[str]:
    """Each variant against the faithful runs of its setting cut to the variant's epochs, from the per-epoch curves:
    validation-selected epoch within that budget, its validation MAE and (where recorded) its test-curve MAE."""
    out = []
    for var in (d for d in docs if d["variant"]):
        base = _faithful_of(var, docs)
        epochs = min(s["epochs_run"] for s in var["seeds"])
        if epochs < 1:
            continue
        mine, theirs = _matched(var, epochs), _matched(base, epochs) if base else []
        if not mine or not theirs:
            continue
        parts = [
            f"{label} {_values_text([(k, m[key]) for k, m in mine if m[key] is not None])} vs "
            f"{_values_text([(k, m[key]) for k, m in theirs if m[key] is not None])}"
            for label, key in (("validation MAE", "val_mae"), ("test MAE", "test_mae"))
        ]
        out.append(
            f"- `{var['name']}` vs `{base['name']}` cut to the first {epochs} epochs (validation-selected epoch "
            f"within them; test MAE from the test curve at that epoch): {'; '.join(parts)}."
        )
    return out


def seed_table(docs: list[dict]) -> str:
    header = [
        "results",
        "seed",
        "MAE",
        "RMSE",
        "best epoch",
        "epochs run",
        "stopped by",
        "wall time",
        "machine",
    ]
    rows = []
    for d in docs:
        for s in d["seeds"]:
            m = s["machine"]
            rows.append(
                [
                    d["name"],
                    str(s["seed"]),
                    fmt(s["test"]["mae"], 3),
                    fmt(s["test"]["rmse"], 3),
                    str(s["best_epoch"]),
                    f"{s['epochs_run']} / {s['max_epochs']}",
                    s["stopped_by"],
                    wall_time_cell(s),
                    machine_cell(m),
                ]
            )
    return markdown(header, rows)


def machine_cell(m: dict) -> str:
    """``AMD EPYC, 1 thread, torch 2.13.0+cpu, bc78f50116``: what a seed ran on (``machine`` of its record)."""
    threads = m["torch_threads"]
    return f"{m['cpu']}, {threads} thread{'' if threads == 1 else 's'}, torch {m['torch']}, {str(m['git_commit'])[:10]}"


def curve_table(doc: dict) -> str:
    """Validation and test-curve MAE per epoch and seed of one results document (``–`` where not logged)."""
    digits = 3 if z_scored(doc) else 2
    seeds = [s["seed"] for s in doc["seeds"]]
    curves = [doc["per_epoch"][f"seed{k}"] for k in seeds]
    header = ["epoch", *(f"seed {k} {split} MAE" for k in seeds for split in ("val", "test"))]
    rows = []
    for epoch in range(1, max(max(c["epoch"], default=0) for c in curves) + 1):
        cells = [str(epoch)]
        for c in curves:
            i = c["epoch"].index(epoch) if epoch in c["epoch"] else None
            cells += [fmt(None if i is None else c[key][i], digits) for key in ("val_mae", "test_mae")]
        rows.append(cells)
    return f"#### `{doc['name']}`\n\n" + markdown(header, rows)


WALL_TIME_BOUNDS: dict[str, str] = {"exact": "", "lower": "≥ ", "upper": "≤ "}


def wall_time_cell(seed: dict) -> str:
    """``1.23 h``; ``≥ 1.23 h`` for a lower bound (a partly timed run), ``≤ 1.23 h`` for an upper bound (the run
    folder's file times, which include interruptions and the final test)."""
    return f"{WALL_TIME_BOUNDS[seed.get('wall_time_bound', 'exact')]}{seed['wall_time_s'] / 3600:.2f} h"


def render(results_dir: Path) -> str:
    """The whole ``results/README.md`` text."""
    docs = load_results(results_dir)
    published, baselines = load_reference(results_dir)
    parts = [
        "# Reproduction results",
        "",
        "Generated by `stm3 results` (`make results`) from the files in this folder; do not edit by hand. "
        "Each `<dataset>-<L>-<H>[-<variant>].json` holds the seeds, budgets, protocol, exact command, per-epoch "
        "curves and protocol checks of one `make reproduce` group. Test metrics are those of each seed's "
        "best-validation checkpoint at its eval seed, as mean ± sample std over seeds; MAPE in %. Published "
        "numbers are copied from the cited tables (protocols differ between papers; see each row).",
        "",
        "## Results by setting",
        "",
    ]
    for setting in settings_of(docs, published):
        parts += [section(setting, docs, published, baselines), ""]
    omitted = [f"- {o['model']} ({o['setting']}): {o['why']}." for o in load_omitted(results_dir)]
    if omitted:
        parts += ["Published numbers left out because they could not be verified:", "", *omitted, ""]
    gaps = gap_lines(docs, published)
    if gaps:
        parts += ["## Gap to the paper's PEMSD8 number", "", *gaps, ""]
    faithful = [d for d in docs if d["dataset"] == PAPER_DATASET and not d["variant"]]
    why = [line for d in faithful for line in protocol_lines(d)]
    why += [f"- scaler: {d['protocol_checks']['scaler']['status']}." for d in faithful]
    why += horizon_line(docs)
    if why:
        parts += [
            "## Why the reported PEMSD8 number may differ",
            "",
            "Measured on the committed runs (each detail changed alone, same checkpoint or same predictions):",
            "",
            *dict.fromkeys(why),
            "",
        ]
    variants = variant_lines(docs)
    if variants:
        parts += [
            "## Paper-intent variants at the same budget",
            "",
            "Each variant next to the faithful runs of its setting over the same number of epochs (variant first):",
            "",
            *variants,
            "",
        ]
    if docs:
        parts += ["## Seeds", "", seed_table(docs), ""]
    curves = [curve_table(d) for d in docs if d.get("per_epoch")]
    if curves:
        parts += [
            "## Curves per epoch",
            "",
            "Validation MAE and test MAE (the test curve, `callbacks.test_every_epoch`; never used for selection) "
            "after every epoch of every seed.",
            "",
            *(part for table in curves for part in (table, "")),
        ]
    commands = [f"- `{d['name']}`: `{d['command']['make']}`" for d in docs]
    if commands:
        parts += ["## Commands", "", *commands, ""]
    return "\n".join(parts)


def write_table(results_dir: Path) -> Path:
    """Write ``<results_dir>/README.md`` and return its path."""
    path = results_dir / "README.md"
    results_dir.mkdir(parents=True, exist_ok=True)
    path.write_text(render(results_dir))
    return path


def published_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Validate published entries: each names model, dataset, setting, metrics and a source."""
    required = {"model", "dataset", "input_len", "horizon", "metrics", "source"}
    for e in entries:
        missing = required - set(e)
        if missing:
            raise ValueError(f"published entry {e.get('model', '?')} lacks {', '.join(sorted(missing))}.")
    return entries
