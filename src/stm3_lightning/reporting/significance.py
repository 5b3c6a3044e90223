"""Paired significance of each variant against the baseline across seeds (the report's test table).

A variant's runs are paired with the baseline's runs of the same seed (several runs of one seed in a group are
averaged first), so the seed's share of the variance cancels in the difference ``d = variant - baseline``. For a
variant with ``n >= 2`` pairs two two-sided tests are computed on ``d``:

- the paired t-test (``scipy.stats.ttest_rel``; undefined when every difference is the same);
- the exact sign-flip permutation test (numpy): under the null hypothesis each ``d_i`` is as likely ``-d_i``, so the
  p-value is the share of the ``2^n`` sign patterns whose ``|mean|`` reaches the observed one. It assumes no
  distribution, and its smallest possible p-value is ``2 / 2^n`` (0.25 with 3 seeds, 0.0625 with 5), so few seeds
  can never be significant by it. Exact up to :data:`EXACT_MAX_PAIRS` pairs.

Both p-values are Bonferroni-corrected over the variants tested in the section: multiplied by their number ``m``
(capped at 1), which bounds the chance of any false positive among them by :data:`ALPHA`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import stats

from stm3_lightning.reporting.report_runs import RunRecord

ALPHA = 0.05
EXACT_MAX_PAIRS = 20


@dataclass(frozen=True)
class PairedTest:
    """``variant`` vs the baseline on one metric over ``n`` seeds paired by seed (p-values NaN when undefined)."""

    variant: str
    seeds: tuple[int, ...]
    mean_diff: float
    std_diff: float
    t: float
    p_t: float
    p_sign_flip: float
    p_t_bonferroni: float = math.nan
    p_sign_flip_bonferroni: float = math.nan

    @property
    def n(self) -> int:
        return len(self.seeds)

    @property
    def significant(self) -> bool:
        """Bonferroni-corrected t-test p-value below :data:`ALPHA`."""
        return self.p_t_bonferroni < ALPHA


def per_seed(runs: Sequence[RunRecord], metric: str) -> dict[int, float]:
    """seed -> the metric (mean over the group's runs of that seed that have it)."""
    values: dict[int, list[float]] = {}
    for rec in runs:
        if metric in rec.metrics:
            values.setdefault(rec.seed, []).append(rec.metrics[metric])
    return {seed: float(np.mean(v)) for seed, v in sorted(values.items())}


def sign_flip_p(diffs: np.ndarray) -> float:
    """Exact two-sided sign-flip p-value of ``diffs: [n]`` (NaN above :data:`EXACT_MAX_PAIRS`)."""
    n = diffs.size
    if n > EXACT_MAX_PAIRS:
        return math.nan
    patterns = np.arange(2**n)[:, None] >> np.arange(n)  # [2^n, n]: bit i of pattern k
    signs = 1.0 - 2.0 * (patterns & 1)
    means = np.abs(signs @ diffs) / n  # [2^n]
    observed = abs(diffs.mean())
    return float(np.mean(means >= observed - 1e-12 * max(1.0, observed)))


def paired_test(variant: str, base: Mapping[int, float], other: Mapping[int, float]) -> PairedTest:
    """The tests of ``other - base`` over their common seeds."""
    seeds = tuple(sorted(set(base) & set(other)))
    diffs = np.array([other[s] - base[s] for s in seeds], dtype=float)
    if diffs.size < 2:
        mean = float(diffs.mean()) if diffs.size else math.nan
        return PairedTest(variant, seeds, mean, math.nan, math.nan, math.nan, math.nan)
    std = float(diffs.std(ddof=1))
    t, p_t = math.nan, math.nan
    if std > 0:
        result = stats.ttest_rel([other[s] for s in seeds], [base[s] for s in seeds])
        t, p_t = float(result.statistic), float(result.pvalue)
    return PairedTest(variant, seeds, float(diffs.mean()), std, t, p_t, sign_flip_p(diffs))


def bonferroni(p: float, m: int) -> float:
    return min(1.0, p * m) if math.isfinite(p) else math.nan


def compare_to_baseline(
    groups: Mapping[str, Sequence[RunRecord]], baseline: str, metric: str = "mae"
) -> list[PairedTest]:
    """One test per variant other than ``baseline`` (in group order), Bonferroni-corrected over those with n >= 2."""
    base = per_seed(groups[baseline], metric)
    tests = [paired_test(g, base, per_seed(runs, metric)) for g, runs in groups.items() if g != baseline]
    m = sum(1 for t in tests if t.n >= 2)
    return [
        replace(t, p_t_bonferroni=bonferroni(t.p_t, m), p_sign_flip_bonferroni=bonferroni(t.p_sign_flip, m))
        for t in tests
    ]
