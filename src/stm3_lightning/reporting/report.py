"""``stm3 report``: finished runs -> ``report/ablations.md`` (mean ± std over seeds) and PNG plots.

Runs come from local run folders (:mod:`stm3_lightning.reporting.report_runs`) or a W&B project
(:mod:`stm3_lightning.reporting.report_wandb`). Within each section (dataset, input -> horizon, protocol) the runs of one group
(variant) are averaged: mean and *sample* standard deviation (ddof = 1) over runs, so ``n = 1`` shows no ±.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np

from stm3_lightning.config.compose import ConfigError
from stm3_lightning.reporting.ablations import BASELINE
from stm3_lightning.reporting.report_runs import RunRecord, collect_local, is_analysis_metric

# Table columns: metric key, header, scale (MAPE fraction -> %).
TABLE_METRICS: tuple[tuple[str, str, float], ...] = (
    ("mae", "MAE", 1.0),
    ("rmse", "RMSE", 1.0),
    ("mape", "MAPE (%)", 100.0),
)
ERROR_DECIMALS = 3
ANALYSIS_DECIMALS = 4


@dataclass(frozen=True)
class Stat:
    """Mean and sample standard deviation (NaN when ``n < 2``) of one metric over ``n`` runs."""

    mean: float
    std: float
    n: int


def stat(values: Sequence[float]) -> Stat:
    arr = np.asarray(values, dtype=float)
    std = float(arr.std(ddof=1)) if arr.size > 1 else math.nan
    return Stat(float(arr.mean()), std, int(arr.size))


def format_stat(s: Stat, decimals: int, scale: float = 1.0) -> str:
    """``mean ± std`` (``mean`` alone for a single run)."""
    text = f"{s.mean * scale:.{decimals}f}"
    return text if math.isnan(s.std) else f"{text} ± {s.std * scale:.{decimals}f}"


def by_section(records: Sequence[RunRecord]) -> dict[str, dict[str, list[RunRecord]]]:
    """section -> group -> runs; groups ordered with the baseline first, then by name."""
    out: dict[str, dict[str, list[RunRecord]]] = {}
    for rec in records:
        out.setdefault(rec.section, {}).setdefault(rec.group, []).append(rec)
    return {
        section: dict(sorted(groups.items(), key=lambda kv: (kv[0] != BASELINE, kv[0])))
        for section, groups in sorted(out.items())
    }


def group_stats(runs: Sequence[RunRecord]) -> dict[str, Stat]:
    """metric -> Stat over the runs that have that metric."""
    names = sorted({name for rec in runs for name in rec.metrics})
    return {name: stat([rec.metrics[name] for rec in runs if name in rec.metrics]) for name in names}


def mean_curve(series: Sequence[Mapping[int, float]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x -> mean and sample std over the series that have x. Returns ``(x: [T], mean: [T], std: [T])``."""
    xs = sorted({x for s in series for x in s})
    values = [[s[x] for s in series if x in s] for x in xs]
    mean = np.array([np.mean(v) for v in values])
    std = np.array([np.std(v, ddof=1) if len(v) > 1 else 0.0 for v in values])
    return np.array(xs), mean, std


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9-]+", "_", text.replace("->", "-")).strip("_").lower()


def _row(cells: Sequence[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def error_table(groups: Mapping[str, Sequence[RunRecord]]) -> list[str]:
    """Markdown rows: one per group with n, seeds, MAE/RMSE/MAPE mean ± std and the MAE change vs the baseline."""
    stats = {g: group_stats(runs) for g, runs in groups.items()}
    base = stats.get(BASELINE, {}).get("mae")
    header = ["variant", "n", "seeds", *(h for _, h, _ in TABLE_METRICS)] + (
        [f"ΔMAE vs {BASELINE}"] if base else []
    )
    lines = [_row(header), _row(["---"] * len(header))]
    for group, runs in groups.items():
        seeds = ",".join(str(s) for s in sorted(r.seed for r in runs))
        cells = [group, str(len(runs)), seeds]
        for key, _, scale in TABLE_METRICS:
            cells.append(
                format_stat(stats[group][key], ERROR_DECIMALS, scale) if key in stats[group] else "—"
            )
        if base:
            mae = stats[group].get("mae")
            cells.append(f"{(mae.mean / base.mean - 1) * 100:+.2f}%" if mae else "—")
        lines.append(_row(cells))
    return lines


def analysis_table(groups: Mapping[str, Sequence[RunRecord]]) -> list[str]:
    """Markdown rows: one per routing/disentanglement metric (last evaluation), one column per group."""
    stats = {g: group_stats(runs) for g, runs in groups.items()}
    names = sorted({n for s in stats.values() for n in s if is_analysis_metric(n)})
    if not names:
        return []
    lines = [_row(["metric", *groups]), _row(["---"] * (len(groups) + 1))]
    for name in names:
        cells = [format_stat(s[name], ANALYSIS_DECIMALS) if name in s else "—" for s in stats.values()]
        lines.append(_row([name, *cells]))
    return lines


def section_plots(section: str, groups: Mapping[str, Sequence[RunRecord]], out_dir: Path) -> dict[str, Path]:
    """The section's PNGs (bars, per-horizon MAE, analysis metrics over epochs when logged) keyed by kind."""
    from stm3_lightning.plots import plot_error_bars, plot_histories, plot_horizon_mae, save_figure

    name = slug(section)
    stats = {g: group_stats(runs) for g, runs in groups.items()}
    paths = {
        "bars": save_figure(plot_error_bars(stats, TABLE_METRICS, section), out_dir / f"{name}-bars.png")
    }
    curves = {g: mean_curve([r.per_step_mae for r in runs]) for g, runs in groups.items()}
    curves = {g: c for g, c in curves.items() if c[0].size}
    if curves:
        paths["horizon"] = save_figure(plot_horizon_mae(curves, section), out_dir / f"{name}-horizon_mae.png")
    metrics = sorted({m for runs in groups.values() for r in runs for m in r.history})
    if metrics:
        histories = {
            m: {g: mean_curve([r.history[m] for r in runs if m in r.history]) for g, runs in groups.items()}
            for m in metrics
        }
        histories = {m: {g: c for g, c in h.items() if c[0].size} for m, h in histories.items()}
        paths["routing"] = save_figure(plot_histories(histories, section), out_dir / f"{name}-routing.png")
    return paths


def render_markdown(
    records: Sequence[RunRecord], source: str, plots: Mapping[str, Mapping[str, Path]]
) -> str:
    """The whole report; ``plots`` maps section -> kind -> PNG path (linked by file name)."""
    lines = [
        "# Ablation report",
        "",
        f"{len(records)} finished runs from `{source}`, collected {datetime.now():%Y-%m-%d %H:%M}. "
        "Cells are mean ± sample standard deviation over the runs of a variant (n, usually one per seed); "
        "MAE and RMSE in the metric units of the run, MAPE in %, all averaged over every forecast step. "
        "Routing/disentanglement metrics are each run's last logged evaluation.",
    ]
    captions = {
        "bars": "test errors",
        "horizon": "test MAE per forecast step",
        "routing": "analysis metrics over epochs",
    }
    for section, groups in by_section(records).items():
        lines += ["", f"## {section}", "", *error_table(groups)]
        analysis = analysis_table(groups)
        if analysis:
            lines += ["", "### Routing and disentanglement (last evaluation)", "", *analysis]
        for kind, path in plots.get(section, {}).items():
            lines += ["", f"![{section}: {captions[kind]}]({path.name})"]
    return "\n".join(lines) + "\n"


def collect(source: str) -> list[RunRecord]:
    """Records from ``source``: a folder of runs, or ``wandb:<entity>/<project>``."""
    if source.startswith("wandb:"):
        from stm3_lightning.reporting.report_wandb import collect_wandb

        return collect_wandb(source.removeprefix("wandb:"))
    return collect_local(Path(source))


def write_report(records: Sequence[RunRecord], source: str, out_dir: Path) -> Path:
    """Write ``<out_dir>/ablations.md`` and its PNGs; return the markdown path."""
    if not records:
        raise ConfigError(
            f"No finished runs in {source} (a run needs config.yaml and test_metrics.json); run "
            "`make ablations` first or point RUNS= at a folder of finished runs."
        )
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {
        section: section_plots(section, groups, out_dir) for section, groups in by_section(records).items()
    }
    path = out_dir / "ablations.md"
    path.write_text(render_markdown(records, source, plots))
    return path
