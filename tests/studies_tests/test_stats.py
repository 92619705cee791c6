"""Comparison statistics: intervals, Welch's t, Mann-Whitney U, Holm, honest verdicts."""

from __future__ import annotations

import itertools
import math

import pytest

from studies.results import compare_groups, comparison_tables, holm, summarize


def _mean(x):
    return sum(x) / len(x)


def _var(x):
    m = _mean(x)
    return sum((v - m) ** 2 for v in x) / (len(x) - 1)


def test_summary_interval_is_student_t_around_the_mean():
    x = [0.91, 0.93, 0.95, 0.94, 0.92]
    s = summarize("adam", x)
    assert s.n == 5
    assert s.mean == pytest.approx(0.93)
    assert s.std == pytest.approx(math.sqrt(_var(x)))
    # t_{0.975, 4} = 2.776445 (statistical tables)
    half = 2.776445 * math.sqrt(_var(x)) / math.sqrt(5)
    assert s.ci_low == pytest.approx(0.93 - half, rel=1e-6)
    assert s.ci_high == pytest.approx(0.93 + half, rel=1e-6)


def test_summary_of_one_seed_has_no_interval():
    s = summarize("sgd", [0.5])
    assert s.n == 1 and s.mean == 0.5
    assert math.isnan(s.std) and math.isnan(s.ci_low) and math.isnan(s.ci_high)


def test_summary_drops_non_finite_values():
    s = summarize("sgd", [1.0, float("nan"), 3.0, float("inf")])
    assert s.n == 2 and s.mean == 2.0


def test_welch_matches_hand_computation():
    a, b = [1.0, 2.0, 3.0, 4.0], [2.0, 4.0, 6.0, 9.0, 11.0]
    va, vb = _var(a) / 4, _var(b) / 5
    t = (_mean(a) - _mean(b)) / math.sqrt(va + vb)
    df = (va + vb) ** 2 / (va**2 / 3 + vb**2 / 4)
    comp = compare_groups("hvadam", a, "adam", b)
    assert comp.welch_t == pytest.approx(t)
    assert comp.welch_df == pytest.approx(df)
    assert comp.mean_difference == pytest.approx(2.5 - 6.4)
    assert 0.0 < comp.welch_p < 1.0


def test_mann_whitney_exact_p_from_enumerating_all_rankings():
    a, b = [0.1, 0.4, 0.35], [0.8, 0.3, 0.9, 0.7]
    comp = compare_groups("anon", a, "sgd", b)
    u_obs = sum((x > y) + 0.5 * (x == y) for x in a for y in b)
    pooled = a + b
    us = []
    for idx in itertools.combinations(range(7), 3):
        xs = [pooled[i] for i in idx]
        ys = [pooled[i] for i in range(7) if i not in idx]
        us.append(sum((x > y) + 0.5 * (x == y) for x in xs for y in ys))
    centre = 3 * 4 / 2
    p = sum(abs(u - centre) >= abs(u_obs - centre) for u in us) / len(us)
    assert comp.mwu_u == pytest.approx(u_obs)
    assert comp.mwu_p == pytest.approx(p)
    assert comp.mwu_min_p == pytest.approx(2 / 35)


def test_three_against_three_seeds_rank_test_cannot_go_below_point_one():
    comp = compare_groups("hvadam", [1, 2, 3], "adam", [10, 11, 12])
    assert comp.mwu_min_p == pytest.approx(0.1)
    assert comp.mwu_p == pytest.approx(0.1)


def test_one_seed_is_too_few():
    comp = compare_groups("hvadam", [0.9], "adam", [0.8, 0.85])
    assert comp.verdict == "too few seeds"
    assert math.isnan(comp.welch_p) and math.isnan(comp.mwu_p)


def test_no_spread_is_not_testable_instead_of_infinitely_significant():
    comp = compare_groups("hvadam", [1.0, 1.0, 1.0], "adam", [2.0, 2.0, 2.0])
    assert comp.verdict == "not testable (no spread)"
    assert math.isnan(comp.welch_p)


def test_holm_adjustment_matches_step_down_definition():
    p = [0.01, 0.04, 0.03, float("nan"), 0.005]
    adj = holm(p)
    # sorted: 0.005 (x4), 0.01 (x3), 0.03 (x2), 0.04 (x1), monotone
    assert adj[4] == pytest.approx(0.02)
    assert adj[0] == pytest.approx(0.03)
    assert adj[2] == pytest.approx(0.06)
    assert adj[1] == pytest.approx(0.06)
    assert math.isnan(adj[3])


def test_tables_rank_best_first_and_test_only_candidates_against_baselines():
    values = {
        "adam": [0.80, 0.81, 0.79, 0.80, 0.82],
        "hvadam": [0.90, 0.91, 0.92, 0.90, 0.91],
        "sgd": [0.85, 0.70, 0.95, 0.60, 0.99],
        "anon": [0.5],
    }
    summary, tests = comparison_tables(values, direction="maximize")
    assert summary["optimizer"].tolist() == ["hvadam", "sgd", "adam", "anon"]
    pairs = list(zip(tests["candidate"], tests["baseline"], strict=True))
    assert pairs == [("hvadam", "adam"), ("hvadam", "sgd"), ("anon", "adam"), ("anon", "sgd")]
    verdict = dict(zip(pairs, tests["verdict"], strict=True))
    assert verdict[("hvadam", "adam")] == "hvadam better"
    assert verdict[("hvadam", "sgd")] == "not significant"
    assert verdict[("anon", "adam")] == "too few seeds"
    # Holm over the two testable pairs: the smaller p is doubled
    ha = tests.iloc[0]
    assert ha["welch_p_holm"] == pytest.approx(min(1.0, 2 * ha["welch_p"]))


def test_minimize_direction_flips_better_and_worse():
    values = {"hvadam": [1.0, 1.1, 1.2, 1.05], "adam": [2.0, 2.1, 2.2, 2.05]}
    summary, tests = comparison_tables(values, direction="minimize")
    assert summary["optimizer"].tolist() == ["hvadam", "adam"]
    assert tests["verdict"].tolist() == ["hvadam better"]
    _, tests = comparison_tables(values, direction="maximize")
    assert tests["verdict"].tolist() == ["hvadam worse"]


def test_bad_direction_is_a_clear_error():
    with pytest.raises(ValueError, match="direction"):
        comparison_tables({"adam": [1.0]}, direction="up")


def test_welch_p_and_interval_agree_with_scipy_stats():
    from scipy import stats

    a, b = [0.3, 0.5, 0.4, 0.45, 0.52], [0.6, 0.7, 0.55, 0.9]
    ref = stats.ttest_ind(a, b, equal_var=False)
    comp = compare_groups("hvadam", a, "adam", b)
    assert comp.welch_t == pytest.approx(ref.statistic)
    assert comp.welch_p == pytest.approx(ref.pvalue)
    s = summarize("adam", b, confidence=0.9)
    lo, hi = stats.t.interval(0.9, df=3, loc=_mean(b), scale=math.sqrt(_var(b) / 4))
    assert (s.ci_low, s.ci_high) == (pytest.approx(lo), pytest.approx(hi))


def test_mann_whitney_without_ties_equals_scipy_exact():
    from scipy import stats

    a, b = [1.2, 3.4, 0.5, 2.2, 7.0], [4.1, 5.5, 6.2, 8.8, 0.1, 9.9]
    ref = stats.mannwhitneyu(a, b, alternative="two-sided", method="exact")
    comp = compare_groups("hvadam", a, "adam", b)
    assert comp.mwu_u == pytest.approx(ref.statistic)
    assert comp.mwu_p == pytest.approx(ref.pvalue)


def test_mann_whitney_large_samples_use_scipys_normal_approximation():
    import numpy as np
    from scipy import stats

    rng = np.random.default_rng(3)
    a = np.round(rng.normal(0.0, 1.0, 30), 1)  # rounded: ties, corrected for
    b = np.round(rng.normal(0.4, 1.0, 25), 1)
    ref = stats.mannwhitneyu(a, b, alternative="two-sided", method="asymptotic")
    comp = compare_groups("hvadam", a, "adam", b)
    assert comp.mwu_u == pytest.approx(ref.statistic)
    assert comp.mwu_p == pytest.approx(ref.pvalue)


def test_mann_whitney_with_ties_in_small_samples_stays_exact():
    # 3 vs 3 with a tie: the exact test cannot go below 0.1, the normal approximation would
    comp = compare_groups("hvadam", [1.0, 2.0, 2.0], "adam", [5.0, 6.0, 7.0])
    assert comp.mwu_p == pytest.approx(0.1)
