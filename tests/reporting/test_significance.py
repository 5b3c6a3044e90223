"""Paired tests against the baseline: pairing by seed, the t-test by its formula, the exact sign-flip test by brute
force over every sign pattern, Bonferroni over the variants tested."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from stm3_lightning.reporting.report_runs import RunRecord
from stm3_lightning.reporting.significance import compare_to_baseline, paired_test, per_seed, sign_flip_p


def runs(group: str, maes: dict[int, float]) -> list[RunRecord]:
    return [RunRecord(f"{group}/{s}", group, "s", s, {"mae": v}) for s, v in maes.items()]


def brute_force_sign_flip(diffs: np.ndarray) -> float:
    observed = abs(diffs.mean())
    hits = [
        abs((diffs * np.array(signs)).mean()) >= observed - 1e-12
        for signs in itertools.product((1, -1), repeat=len(diffs))
    ]
    return float(np.mean(hits))


@pytest.mark.parametrize("n", range(1, 9))
def test_sign_flip_equals_brute_force(n: int) -> None:
    diffs = np.random.default_rng(n).normal(0.3, 1.0, size=n)
    assert sign_flip_p(diffs) == pytest.approx(brute_force_sign_flip(diffs), abs=1e-12)


def test_sign_flip_smallest_p_is_two_over_two_to_the_n() -> None:
    assert sign_flip_p(np.array([0.1, 0.2, 0.3])) == pytest.approx(0.25)
    assert sign_flip_p(np.array([-0.1, -0.2, -0.3, -0.1, -0.5])) == pytest.approx(2 / 32)
    assert sign_flip_p(np.zeros(4)) == 1.0


def test_t_test_follows_its_formula_and_pairs_by_seed() -> None:
    base = per_seed(runs("full", {1: 3.0, 2: 3.2, 3: 3.1, 4: 3.3}), "mae")
    other_runs = runs("v", {1: 3.4, 2: 3.5, 3: 3.3, 5: 9.9}) + runs("v", {1: 3.6})  # seed 1 twice: averaged
    test = paired_test("v", base, per_seed(other_runs, "mae"))
    d = np.array([3.5 - 3.0, 3.5 - 3.2, 3.3 - 3.1])
    t = d.mean() / (d.std(ddof=1) / math.sqrt(3))
    assert test.seeds == (1, 2, 3) and test.n == 3
    assert test.mean_diff == pytest.approx(d.mean()) and test.std_diff == pytest.approx(d.std(ddof=1))
    assert test.t == pytest.approx(t) and test.p_t == pytest.approx(2 * stats.t.sf(abs(t), df=2))
    assert test.p_sign_flip == pytest.approx(0.25)


def test_bonferroni_counts_the_variants_tested_and_caps_at_one() -> None:
    groups = {
        "full": runs("full", {1: 3.0, 2: 3.2, 3: 3.1}),
        "a": runs("a", {1: 3.5, 2: 3.6, 3: 3.55}),
        "b": runs("b", {1: 3.0, 2: 3.3, 3: 3.0}),
        "single": runs("single", {1: 4.0}),
    }
    tests = {t.variant: t for t in compare_to_baseline(groups, "full")}
    assert list(tests) == ["a", "b", "single"]
    for name in ("a", "b"):
        assert tests[name].p_t_bonferroni == pytest.approx(min(1.0, 2 * tests[name].p_t))
        assert tests[name].p_sign_flip_bonferroni == pytest.approx(min(1.0, 2 * tests[name].p_sign_flip))
    assert tests["single"].n == 1 and math.isnan(tests["single"].p_t) and not tests["single"].significant
    assert tests["a"].significant == (tests["a"].p_t_bonferroni < 0.05)


def test_constant_differences_have_no_t_test_but_a_sign_flip_p() -> None:
    test = paired_test("v", {1: 1.0, 2: 2.0}, {1: 1.5, 2: 2.5})
    assert math.isnan(test.t) and math.isnan(test.p_t) and test.p_sign_flip == pytest.approx(0.5)
