"""``stm3 report``: finished runs -> ``report/ablations.md`` (mean ± std over seeds, paired tests against the
baseline), the same table as ``ablations.csv`` and ``ablations.tex``, and PNG plots.

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
from stm3_lightning.reporting.export import write_csv, write_latex
from stm3_lightning.reporting.report_runs import RunRecord, collect_local, is_analysis_metric
from stm3_lightning.reporting.significance import ALPHA, PairedTest, compare_to_baseline

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


def error_table(groups: Mapping[str, Sequence[RunRecord]], baseline: str = BASELINE) -> list[str]:
    """Markdown rows: one per group with n, seeds, MAE/RMSE/MAPE mean ± std and the MAE change vs the baseline."""
    stats = {g: group_stats(runs) for g, runs in groups.items()}
    base = stats.get(baseline, {}).get("mae")
    header = ["variant", "n", "seeds", *(h for _, h, _ in TABLE_METRICS)] + (
        [f"ΔMAE vs {baseline}"] if base else []
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


def format_p(p: float) -> str:
    return "—" if not math.isfinite(p) else ("<0.001" if p < 0.001 else f"{p:.3f}")


def significance_table(tests: Sequence[PairedTest], baseline: str) -> list[str]:
    """Markdown rows: per variant the seeds paired with the baseline, the MAE difference and the p-values."""
    header = [
        "variant",
        "n pairs",
        "seeds",
        f"MAE − {baseline} (mean ± std)",
        "t",
        "p t-test",
        "p t-test (Bonferroni)",
        "p sign-flip (exact)",
        "p sign-flip (Bonferroni)",
    ]
    lines = [_row(header), _row(["---"] * len(header))]
    for t in tests:
        diff = format_stat(Stat(t.mean_diff, t.std_diff, t.n), ERROR_DECIMALS) if t.n else "—"
        p_bonf = format_p(t.p_t_bonferroni) + (" *" if t.significant else "")
        cells = [t.variant, str(t.n), ",".join(map(str, t.seeds)) or "—", diff]
        cells += ["—" if not math.isfinite(t.t) else f"{t.t:.2f}", format_p(t.p_t), p_bonf]
        cells += [format_p(t.p_sign_flip), format_p(t.p_sign_flip_bonferroni)]
        lines.append(_row(cells))
    return lines


def table_rows(
    section: str, groups: Mapping[str, Sequence[RunRecord]], baseline: str
) -> list[dict[str, object]]:
    """The section's table as numbers, one row per variant (:data:`stm3_lightning.reporting.export.COLUMNS`)."""
    tests = {t.variant: t for t in compare_to_baseline(groups, baseline)} if baseline in groups else {}
    base = group_stats(groups[baseline]).get("mae") if baseline in groups else None
    rows = []
    for group, runs in groups.items():
        st = group_stats(runs)
        row: dict[str, object] = {
            "section": section,
            "variant": group,
            "runs": len(runs),
            "seeds": " ".join(str(s) for s in sorted(r.seed for r in runs)),
            "baseline": baseline if baseline in groups else "",
        }
        for key, name, scale in (("mae", "mae", 1.0), ("rmse", "rmse", 1.0), ("mape", "mape_pct", 100.0)):
            if key in st:
                row[f"{name}_mean"], row[f"{name}_std"] = st[key].mean * scale, st[key].std * scale
        if base and "mae" in st:
            row["delta_mae_pct"] = (st["mae"].mean / base.mean - 1) * 100
        if group in tests:
            t = tests[group]
            row.update(pairs=t.n, diff_mae_mean=t.mean_diff, diff_mae_std=t.std_diff, t=t.t, p_ttest=t.p_t)
            row.update(p_ttest_bonferroni=t.p_t_bonferroni, p_sign_flip=t.p_sign_flip)
            row.update(p_sign_flip_bonferroni=t.p_sign_flip_bonferroni)
        rows.append(row)
    return rows


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
    records: Sequence[RunRecord],
    source: str,
    plots: Mapping[str, Mapping[str, Path]],
    baseline: str = BASELINE,
) -> str:
    """The whole report; ``plots`` maps section -> kind -> PNG path (linked by file name)."""
    lines = [
        "# Ablation report",
        "",
        f"{len(records)} finished runs from `{source}`, collected {datetime.now():%Y-%m-%d %H:%M}. "
        "Cells are mean ± sample standard deviation over the runs of a variant (n, usually one per seed); "
        "MAE and RMSE in the metric units of the run, MAPE in %, all averaged over every forecast step. "
        "Routing/disentanglement metrics are each run's last logged evaluation.",
        "",
        f"Significance against `{baseline}` (in each section that has it): every variant's runs are paired with the "
        f"baseline's by seed and the per-seed test MAE differences are tested two-sided with the paired t-test "
        f"(scipy.stats.ttest_rel) and the exact sign-flip permutation test (numpy, all 2^n sign patterns; its "
        f"smallest possible p is 2/2^n, 0.25 for 3 seeds). Both p-values are Bonferroni-corrected over the variants "
        f"tested in the section (n ≥ 2 pairs); * marks a corrected t-test p < {ALPHA}. n is the number of pairs. "
        "The same tables are in `ablations.csv` and `ablations.tex` beside this file.",
    ]
    captions = {
        "bars": "test errors",
        "horizon": "test MAE per forecast step",
        "routing": "analysis metrics over epochs",
    }
    for section, groups in by_section(records).items():
        lines += ["", f"## {section}", "", *error_table(groups, baseline)]
        if baseline in groups and len(groups) > 1:
            tests = compare_to_baseline(groups, baseline)
            lines += ["", f"### Paired tests against {baseline} (test MAE, by seed)", ""]
            lines += significance_table(tests, baseline)
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


def write_report(
    records: Sequence[RunRecord], source: str, out_dir: Path, baseline: str | None = None
) -> Path:
    """Write ``<out_dir>/ablations.md``, its PNGs, ``ablations.csv`` and ``ablations.tex``; return the markdown path.

    ``baseline`` is the variant every other one is compared with (default :data:`BASELINE`, ``full``).
    """
    if not records:
        raise ConfigError(
            f"No finished runs in {source} (a run needs config.yaml and test_metrics.json); run "
            "`make ablations` first or point RUNS= at a folder of finished runs."
        )
    sections = by_section(records)
    variants = sorted({g for groups in sections.values() for g in groups})
    if baseline is not None and baseline not in variants:
        raise ConfigError(
            f"baseline={baseline} is not a variant of these runs; choose one of {', '.join(variants)}."
        )
    baseline = baseline or BASELINE
    out_dir.mkdir(parents=True, exist_ok=True)
    plots = {section: section_plots(section, groups, out_dir) for section, groups in sections.items()}
    rows = [row for section, groups in sections.items() for row in table_rows(section, groups, baseline)]
    write_csv(out_dir / "ablations.csv", rows)
    write_latex(out_dir / "ablations.tex", rows, ERROR_DECIMALS, ALPHA)
    path = out_dir / "ablations.md"
    path.write_text(render_markdown(records, source, plots, baseline))
    return path
