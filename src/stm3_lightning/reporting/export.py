"""The report's table as files beside the markdown: ``ablations.csv`` (every number, full precision) and
``ablations.tex`` (one booktabs table per section, ``\\usepackage{booktabs}``).

Both are written from the same rows (:data:`COLUMNS`), one per section and variant; a missing value is an empty CSV
cell and an em dash in LaTeX. MAPE is in %, ``delta_mae_pct`` is the MAE change against the baseline in %, the
``diff_mae_*`` and ``p_*`` columns are the paired tests of :mod:`stm3_lightning.reporting.significance`.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Mapping, Sequence
from itertools import groupby
from pathlib import Path

COLUMNS: tuple[str, ...] = (
    "section",
    "variant",
    "runs",
    "seeds",
    "mae_mean",
    "mae_std",
    "rmse_mean",
    "rmse_std",
    "mape_pct_mean",
    "mape_pct_std",
    "delta_mae_pct",
    "baseline",
    "pairs",
    "diff_mae_mean",
    "diff_mae_std",
    "t",
    "p_ttest",
    "p_ttest_bonferroni",
    "p_sign_flip",
    "p_sign_flip_bonferroni",
)
Row = Mapping[str, object]
_LATEX_SPECIAL = {
    **{c: "\\" + c for c in "&%$#_{}"},
    "~": r"\textasciitilde{}",
    "^": r"\textasciicircum{}",
    "\\": r"\textbackslash{}",
}


def _cell(value: object) -> object:
    return "" if value is None or (isinstance(value, float) and math.isnan(value)) else value


def write_csv(path: Path, rows: Sequence[Row]) -> Path:
    with path.open("w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: _cell(row.get(k)) for k in COLUMNS})
    return path


def latex_escape(text: str) -> str:
    r"""``no_agccn`` -> ``no\_agccn``: LaTeX's special characters as text."""
    return "".join(_LATEX_SPECIAL.get(char, char) for char in text)


def _number(value: object) -> float | None:
    return float(value) if isinstance(value, (int, float)) and math.isfinite(value) else None


def _mean_std(row: Row, key: str, decimals: int) -> str:
    mean, std = _number(row.get(f"{key}_mean")), _number(row.get(f"{key}_std"))
    if mean is None:
        return "---"
    return f"{mean:.{decimals}f}" + (f" $\\pm$ {std:.{decimals}f}" if std is not None else "")


def _p_value(value: object) -> str:
    p = _number(value)
    if p is None:
        return "---"
    return "$<$0.001" if p < 0.001 else f"{p:.3f}"


def _latex_table(section: str, rows: Sequence[Row], decimals: int, alpha: float) -> list[str]:
    baseline = next((str(r["baseline"]) for r in rows if r.get("baseline")), "")
    header = ["Variant", "$n$", "MAE", "RMSE", "MAPE (\\%)"]
    if baseline:
        header += ["$\\Delta$MAE", "$p_\\mathrm{t}$", "$p_\\mathrm{flip}$"]
    title = latex_escape(section).replace("->", r"$\rightarrow$")
    caption = f"{title}: test errors, mean $\\pm$ sample std over runs."
    if baseline:
        caption += (
            f" $\\Delta$MAE: change of the mean MAE against {latex_escape(baseline)}; $p$: two-sided paired t-test and"
            " exact sign-flip test over seeds, Bonferroni-corrected over the variants tested"
            f" (bold: $p_\\mathrm{{t}} < {alpha}$)."
        )
    lines = [
        "\\begin{table}[t]",
        "\\centering",
        f"\\caption{{{caption}}}",
        f"\\label{{tab:{re.sub(r'[^a-z0-9]+', '-', section.lower()).strip('-')}}}",
        f"\\begin{{tabular}}{{l{'r' * (len(header) - 1)}}}",
        "\\toprule",
        " & ".join(header) + " \\\\",
        "\\midrule",
    ]
    for row in rows:
        cells = [latex_escape(str(row["variant"])), str(row["runs"])]
        cells += [_mean_std(row, k, decimals) for k in ("mae", "rmse")] + [
            _mean_std(row, "mape_pct", decimals)
        ]
        if baseline:
            delta = _number(row.get("delta_mae_pct"))
            p_t = _number(row.get("p_ttest_bonferroni"))
            cells += ["---" if delta is None else f"{delta:+.2f}\\%"]
            cells += [f"\\textbf{{{_p_value(p_t)}}}" if p_t is not None and p_t < alpha else _p_value(p_t)]
            cells += [_p_value(row.get("p_sign_flip_bonferroni"))]
        lines.append(" & ".join(cells) + " \\\\")
    return [*lines, "\\bottomrule", "\\end{tabular}", "\\end{table}"]


def write_latex(path: Path, rows: Sequence[Row], decimals: int, alpha: float) -> Path:
    """One ``table`` per section, in the order of ``rows`` (grouped by their ``section``)."""
    lines = ["% stm3 report: one table per section; needs \\usepackage{booktabs}."]
    for section, section_rows in groupby(rows, key=lambda r: str(r["section"])):
        lines += ["", *_latex_table(section, list(section_rows), decimals, alpha)]
    path.write_text("\n".join(lines) + "\n")
    return path
