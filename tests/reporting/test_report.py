"""`stm3 report`: the table values are the means / sample stds of the fixture runs' JSON, plots are written.

The runs of ``tests/reporting/fixtures/report_runs.json`` are materialised as run folders; the expected values are computed
here with numpy/scipy straight from that JSON and compared with the numbers in ``report/ablations.md``, ``.csv`` and
``.tex``.
"""

from __future__ import annotations

import csv
import json
import math
import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest
import yaml
from scipy import stats

from stm3_lightning.cli import main
from stm3_lightning.config.compose import ConfigError
from stm3_lightning.reporting.report import ANALYSIS_DECIMALS, ERROR_DECIMALS, write_report
from stm3_lightning.reporting.report_runs import collect_local, final_values, history_from_rows, run_group

FIXTURE = json.loads((Path(__file__).parent / "fixtures" / "report_runs.json").read_text())
SYNTH = "synthetic 24->4 (official)"
PEMS = "pems08 12->12 (masked)"


def materialise(root: Path) -> Path:
    """Write the fixture's runs as run folders under ``root``."""
    for run in FIXTURE["runs"] + FIXTURE["unfinished"]:
        folder = root / run["path"]
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text(yaml.safe_dump(run["config"]))
        if "test_metrics" in run:
            (folder / "test_metrics.json").write_text(json.dumps(run["test_metrics"]))
        if "metrics_csv" in run:
            names = sorted({k for row in run["metrics_csv"] for k in row})
            lines = [",".join(names)] + [
                ",".join(str(row.get(k, "")) for k in names) for row in run["metrics_csv"]
            ]
            (folder / "csv").mkdir()
            (folder / "csv" / "metrics.csv").write_text("\n".join(lines) + "\n")
    return root


def expected_groups() -> dict[str, dict[str, list[dict]]]:
    """section -> group -> fixture runs, grouped the way the report must group them."""
    out: dict[str, dict[str, list[dict]]] = defaultdict(lambda: defaultdict(list))
    for run in FIXTURE["runs"]:
        c = run["config"]
        section = f"{c['data']['name']} {c['data']['input_len']}->{c['data']['horizon']} ({c['metrics']['protocol']})"
        out[section][run_group(c)].append(run)
    return out


def last_epoch_value(run: dict, metric: str) -> float | None:
    rows = [r for r in run.get("metrics_csv", []) if metric in r]
    return max(rows, key=lambda r: r["epoch"])[metric] if rows else None


def parse_tables(markdown: str) -> dict[str, list[list[str]]]:
    """``## section`` -> rows (cells) of all its tables, header rows included."""
    tables: dict[str, list[list[str]]] = {}
    section = ""
    for line in markdown.splitlines():
        if line.startswith("## "):
            section = line[3:]
            tables[section] = []
        elif line.startswith("|") and not line.startswith("| ---"):
            tables[section].append([c.strip() for c in line.strip("|").split("|")])
    return tables


def parse_stat(cell: str) -> tuple[float, float]:
    mean, _, std = cell.partition(" ± ")
    return float(mean), float(std) if std else math.nan


def assert_stat(cell: str, values: list[float], decimals: int, scale: float = 1.0) -> None:
    mean, std = parse_stat(cell)
    tol = 0.5 * 10**-decimals + 1e-12
    assert mean == pytest.approx(np.mean(values) * scale, abs=tol), cell
    if len(values) > 1:
        assert std == pytest.approx(np.std(values, ddof=1) * scale, abs=tol), cell
    else:
        assert math.isnan(std), f"a single run must show no ± ({cell})"


@pytest.fixture
def report(tmp_path: Path) -> tuple[str, Path]:
    root = materialise(tmp_path / "runs")
    out = tmp_path / "report"
    assert main(["report", f"runs={root}", f"out={out}"]) == 0
    return (out / "ablations.md").read_text(), out


def test_collect_local_skips_unfinished_runs(tmp_path: Path) -> None:
    records = collect_local(materialise(tmp_path))
    assert len(records) == len(FIXTURE["runs"])
    assert {r.group for r in records} == {"full", "no_agccn", "stm2", "reproduce/pems08", "linear"}


def test_error_table_equals_mean_and_std_of_fixture_json(report: tuple[str, Path]) -> None:
    tables = parse_tables(report[0])
    assert set(tables) == {SYNTH, PEMS}
    for section, groups in expected_groups().items():
        header, *rows = [r for r in tables[section] if r[0] != "metric"][: len(groups) + 1]
        assert header[:6] == ["variant", "n", "seeds", "MAE", "RMSE", "MAPE (%)"]
        by_group = {row[0]: row for row in rows}
        assert list(by_group) == sorted(groups, key=lambda g: (g != "full", g))
        for group, runs in groups.items():
            row = by_group[group]
            assert row[1] == str(len(runs)) and row[2] == ",".join(str(r["config"]["seed"]) for r in runs)
            for col, key, scale in ((3, "mae", 1.0), (4, "rmse", 1.0), (5, "mape", 100.0)):
                assert_stat(
                    row[col], [r["test_metrics"]["overall"][key] for r in runs], ERROR_DECIMALS, scale
                )


def test_mae_change_against_the_baseline(report: tuple[str, Path]) -> None:
    rows = {r[0]: r for r in parse_tables(report[0])[SYNTH] if len(r) == 7}
    groups = expected_groups()[SYNTH]
    base = np.mean([r["test_metrics"]["overall"]["mae"] for r in groups["full"]])
    for group, runs in groups.items():
        change = (np.mean([r["test_metrics"]["overall"]["mae"] for r in runs]) / base - 1) * 100
        assert float(rows[group][6].rstrip("%")) == pytest.approx(change, abs=0.005)
    assert "ΔMAE" not in " ".join(parse_tables(report[0])[PEMS][0])  # no baseline in that section


def test_analysis_table_equals_last_epoch_values_of_metrics_csv(report: tuple[str, Path]) -> None:
    rows = parse_tables(report[0])[SYNTH]
    start = next(i for i, r in enumerate(rows) if r[0] == "metric")
    header, body = rows[start], {r[0]: r for r in rows[start + 1 :]}
    groups = expected_groups()[SYNTH]
    assert set(body) == {"routing/flip_rate", "routing/load_entropy", "disent/cka"}
    for metric, row in body.items():
        for group, cell in zip(header[1:], row[1:], strict=True):
            values = [v for r in groups[group] if (v := last_epoch_value(r, metric)) is not None]
            if values:
                assert_stat(cell, values, ANALYSIS_DECIMALS)
            else:
                assert cell == "—"


def test_plots_are_png_files_linked_from_the_report(report: tuple[str, Path]) -> None:
    markdown, out = report
    names = {p.name for p in out.glob("*.png")}
    assert names == {
        "synthetic_24-4_official-bars.png",
        "synthetic_24-4_official-horizon_mae.png",
        "synthetic_24-4_official-routing.png",
        "pems08_12-12_masked-bars.png",
        "pems08_12-12_masked-horizon_mae.png",
    }
    for name in names:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"]({name})" in markdown
        assert (out / name).stat().st_size > 5000


def test_history_keeps_the_last_finite_value_of_each_epoch() -> None:
    rows = [
        {"epoch": "0", "routing/tv": "0.5"},
        {"epoch": "0", "routing/tv": "0.4", "val/loss": "3"},
        {"epoch": "1", "routing/tv": "nan"},
        {"epoch": "", "routing/tv": "9"},
        {"epoch": "2", "routing/tv": "", "layer1/disent/cka": "0.25"},
    ]
    history = history_from_rows(rows)
    assert history == {"routing/tv": {0: 0.4}, "layer1/disent/cka": {2: 0.25}}
    assert final_values(history) == {"routing/tv": 0.4, "layer1/disent/cka": 0.25}


def test_report_errors(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["report", f"runs={tmp_path}"]) == 2
    assert "No finished runs in" in capsys.readouterr().err
    assert main(["report", f"runs={tmp_path / 'missing'}"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["report", "rns=x"]) == 2
    assert "stm3 report takes runs=" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="No finished runs"):
        write_report([], "nowhere", tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_sections_never_mix_protocols_or_horizons(report: tuple[str, Path]) -> None:
    headings = re.findall(r"^## (.+)$", report[0], flags=re.M)
    assert headings == sorted(headings) and len(headings) == len(set(headings)) == 2


def fixture_mae(section: str, group: str) -> dict[int, float]:
    return {
        r["config"]["seed"]: r["test_metrics"]["overall"]["mae"] for r in expected_groups()[section][group]
    }


def test_paired_tests_against_the_baseline_in_the_markdown(report: tuple[str, Path]) -> None:
    rows = {r[0]: r for r in parse_tables(report[0])[SYNTH] if len(r) == 9}
    assert rows["variant"][1:4] == ["n pairs", "seeds", "MAE − full (mean ± std)"]
    base, other = fixture_mae(SYNTH, "full"), fixture_mae(SYNTH, "no_agccn")
    seeds = sorted(set(base) & set(other))
    expected = stats.ttest_rel([other[s] for s in seeds], [base[s] for s in seeds])
    row = rows["no_agccn"]
    assert row[1:3] == ["2", "1,2"]
    assert float(row[4]) == pytest.approx(expected.statistic, abs=0.005)
    assert float(row[5]) == pytest.approx(expected.pvalue, abs=0.0005)
    assert float(row[6].rstrip(" *")) == pytest.approx(
        expected.pvalue, abs=0.0005
    )  # one variant tested: m = 1
    assert float(row[7]) == pytest.approx(0.5)  # both differences positive: 2 of the 4 sign patterns
    assert rows["stm2"][1:3] == ["1", "1"] and rows["stm2"][5] == "—"
    pems = report[0].split(f"## {PEMS}")[1].split(f"## {SYNTH}")[0]
    assert (
        "Paired tests against" not in pems and "Paired tests against full" in report[0]
    )  # no baseline in pems


def test_csv_export_holds_the_table_numbers(report: tuple[str, Path]) -> None:
    with (report[1] / "ablations.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == sum(len(g) for g in expected_groups().values())
    for row in rows:
        runs = expected_groups()[row["section"]][row["variant"]]
        maes = [r["test_metrics"]["overall"]["mae"] for r in runs]
        assert int(row["runs"]) == len(runs) and float(row["mae_mean"]) == pytest.approx(np.mean(maes))
        mape = np.array([r["test_metrics"]["overall"]["mape"] for r in runs]) * 100
        assert float(row["mape_pct_mean"]) == pytest.approx(mape.mean())
        if len(runs) > 1:
            assert float(row["mae_std"]) == pytest.approx(np.std(maes, ddof=1))
        else:
            assert row["mae_std"] == ""
    by_variant = {(r["section"], r["variant"]): r for r in rows}
    tested = by_variant[(SYNTH, "no_agccn")]
    base, other = fixture_mae(SYNTH, "full"), fixture_mae(SYNTH, "no_agccn")
    assert float(tested["p_ttest"]) == pytest.approx(
        stats.ttest_rel([other[1], other[2]], [base[1], base[2]]).pvalue
    )
    assert (
        tested["baseline"] == "full"
        and tested["pairs"] == "2"
        and by_variant[(PEMS, "linear")]["p_ttest"] == ""
    )


def test_latex_export_is_one_booktabs_table_per_section(report: tuple[str, Path]) -> None:
    tex = (report[1] / "ablations.tex").read_text()
    assert tex.count("\\begin{tabular}") == tex.count("\\end{table}") == 2
    assert tex.count("\\toprule") == tex.count("\\bottomrule") == 2
    assert "no\\_agccn & 2 & 3.394 $\\pm$ 0.025" in tex and "reproduce/pems08 & 2" in tex
    assert "\\caption{synthetic 24$\\rightarrow$4 (official): test errors" in tex and "$p_\\mathrm{t}$" in tex


def test_bar_charts_start_at_zero() -> None:
    from stm3_lightning.plots import plot_error_bars
    from stm3_lightning.reporting.report import TABLE_METRICS, Stat

    means = {"full": {k: Stat(v, 0.01, 3) for k, v in (("mae", 15.3), ("rmse", 24.5), ("mape", 0.095))}}
    means["other"] = {k: Stat(s.mean * 1.01, 0.01, 3) for k, s in means["full"].items()}
    fig = plot_error_bars(means, TABLE_METRICS, "t")
    for ax, (key, _, scale) in zip(fig.axes, TABLE_METRICS, strict=True):
        low, high = ax.get_ylim()
        assert low == 0.0 and high >= means["other"][key].mean * scale


def test_baseline_option_chooses_the_reference_variant(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = materialise(tmp_path / "runs")
    out = tmp_path / "report"
    assert main(["report", f"runs={root}", f"out={out}", "baseline=reproduce/pems08"]) == 0
    tables = parse_tables((out / "ablations.md").read_text())
    assert "ΔMAE vs reproduce/pems08" in tables[PEMS][0]
    assert any(r[0] == "linear" and r[1] == "1" for r in tables[PEMS] if len(r) == 9)
    assert "ΔMAE" not in " ".join(tables[SYNTH][0])
    assert main(["report", f"runs={root}", f"out={tmp_path / 'r2'}", "baseline=nope"]) == 2
    assert (
        "baseline=nope is not a variant of these runs; choose one of full, linear" in capsys.readouterr().err
    )
    assert not (tmp_path / "r2").exists()
