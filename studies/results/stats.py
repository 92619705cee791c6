"""Statistics for comparing optimizers on confirm-phase seeds: summaries, intervals and tests.

The numbers a comparison quotes are the confirm phase's: the best config of every optimizer
re-run on K fresh seeds. For each optimizer we give the mean, the sample standard deviation and
a 95% confidence interval for the mean (Student's t, since K is small and the spread unknown).

HVAdam and Anon (the *candidates*) are tested against every other optimizer (the *baselines*):

- **Welch's t-test** (two-sided) is the primary test. The seeds of two optimizers are
  independent samples whose variances need not be equal (an adaptive optimizer can be both
  better and more erratic), which is exactly Welch's setting; with a handful of seeds it is
  also far more powerful than a rank test.
- **Mann-Whitney U** (two-sided) is reported as a distribution-free check: it does not assume
  normal seed-to-seed noise. Its p-value is exact (all assignments of the pooled ranks, ties
  included) whenever there are at most 20,000 of them, else the normal approximation with tie
  and continuity corrections. With few seeds it cannot reach small p-values at all (3 vs 3
  seeds: the smallest attainable two-sided p is 0.1), so that minimum is reported next to it.
- The verdict uses Welch's p-value after a **Holm** correction over all candidate-baseline
  pairs of the campaign, so that testing many pairs does not manufacture a "significant" win.

Honest outcomes: fewer than two seeds on either side gives "too few seeds"; two samples without
any spread give "not testable (no spread)" instead of the infinite t that a naive test returns.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

import numpy as np

__all__ = [
    "CANDIDATES",
    "Comparison",
    "Summary",
    "compare_groups",
    "comparison_tables",
    "holm",
    "mann_whitney",
    "summarize",
]

CANDIDATES = ("hvadam", "anon")
EXACT_LIMIT = 20_000  # rank assignments enumerated for an exact Mann-Whitney p-value
TOO_FEW = "too few seeds"
NO_SPREAD = "not testable (no spread)"
NOT_SIGNIFICANT = "not significant"


def _check_direction(direction: str) -> None:
    if direction not in ("minimize", "maximize"):
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")


def _clean(values: Sequence[float], what: str) -> np.ndarray:
    arr = np.asarray(list(values), dtype=float)
    if arr.ndim != 1:
        raise ValueError(f"{what}: expected a flat sequence of numbers")
    return arr[np.isfinite(arr)]


@dataclass(frozen=True)
class Summary:
    """Mean, spread and 95% confidence interval of one optimizer's confirm values."""

    optimizer: str
    n: int
    mean: float
    std: float
    ci_low: float
    ci_high: float

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def summarize(optimizer: str, values: Sequence[float], *, confidence: float = 0.95) -> Summary:
    """Summarise one optimizer's values; the interval needs two values, else it is NaN."""
    from scipy.special import stdtrit  # the light corner of scipy: keeps reports fast to start

    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    x = _clean(values, f"values of {optimizer!r}")
    n = len(x)
    if n == 0:
        return Summary(optimizer, 0, math.nan, math.nan, math.nan, math.nan)
    mean = float(x.mean())
    if n < 2:
        return Summary(optimizer, 1, mean, math.nan, math.nan, math.nan)
    std = float(x.std(ddof=1))
    half = float(stdtrit(n - 1, 0.5 + confidence / 2)) * std / math.sqrt(n)
    return Summary(optimizer, n, mean, std, mean - half, mean + half)


@dataclass(frozen=True)
class Comparison:
    """One candidate against one baseline on confirm values."""

    candidate: str
    baseline: str
    n_candidate: int
    n_baseline: int
    mean_difference: float  # candidate mean minus baseline mean
    welch_t: float
    welch_df: float
    welch_p: float
    mwu_u: float
    mwu_p: float
    mwu_min_p: float  # the smallest two-sided p the rank test can give with these sample sizes
    welch_p_holm: float = math.nan
    verdict: str = ""

    def as_dict(self) -> dict[str, float | int | str]:
        return asdict(self)


def _welch(a: np.ndarray, b: np.ndarray) -> tuple[float, float, float]:
    """Welch's t statistic, its Welch-Satterthwaite degrees of freedom and two-sided p."""
    from scipy.special import stdtr

    va, vb = a.var(ddof=1) / len(a), b.var(ddof=1) / len(b)
    se2 = va + vb
    if se2 <= 0.0:
        return math.nan, math.nan, math.nan
    t = (a.mean() - b.mean()) / math.sqrt(se2)
    df = se2**2 / (va**2 / (len(a) - 1) + vb**2 / (len(b) - 1))
    p = 2.0 * float(stdtr(df, -abs(t)))
    return float(t), float(df), p


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """Ranks 1..n, tied values sharing the mean of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    ranks = np.empty(len(x))
    i = 0
    while i < len(x):
        j = i
        while j + 1 < len(x) and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def mann_whitney(a: np.ndarray, b: np.ndarray) -> tuple[float, float]:
    """U of `a` and its two-sided p-value (exact by enumeration when feasible)."""
    n1, n2 = len(a), len(b)
    ranks = _average_ranks(np.concatenate([a, b]))
    offset = n1 * (n1 + 1) / 2
    u = float(ranks[:n1].sum() - offset)
    centre = n1 * n2 / 2
    if math.comb(n1 + n2, n1) <= EXACT_LIMIT:
        picks = np.fromiter(
            itertools.chain.from_iterable(itertools.combinations(range(n1 + n2), n1)),
            dtype=np.int64,
        ).reshape(-1, n1)
        us = ranks[picks].sum(axis=1) - offset
        # a small tolerance: rank sums of ties are halves, compared after float sums
        p = float(np.mean(np.abs(us - centre) >= abs(u - centre) - 1e-9))
        return u, min(1.0, p)
    _, counts = np.unique(np.concatenate([a, b]), return_counts=True)
    n = n1 + n2
    tie = float((counts**3 - counts).sum())
    sd = math.sqrt(n1 * n2 / 12 * ((n + 1) - tie / (n * (n - 1))))
    if sd == 0.0:
        return u, 1.0
    z = (abs(u - centre) - 0.5) / sd
    return u, min(1.0, math.erfc(max(z, 0.0) / math.sqrt(2)))


def compare_groups(
    candidate: str,
    candidate_values: Sequence[float],
    baseline: str,
    baseline_values: Sequence[float],
) -> Comparison:
    """Welch's t-test and Mann-Whitney U of two optimizers' values (no verdict yet)."""
    a = _clean(candidate_values, f"values of {candidate!r}")
    b = _clean(baseline_values, f"values of {baseline!r}")
    na, nb = len(a), len(b)
    diff = float(a.mean() - b.mean()) if na and nb else math.nan
    if na < 2 or nb < 2:
        nan = math.nan  # no test statistics, p-values or rank bound with fewer than 2 values
        return Comparison(
            candidate, baseline, na, nb, diff, nan, nan, nan, nan, nan, nan, verdict=TOO_FEW
        )
    t, df, p = _welch(a, b)
    if a.min() == a.max() == b.min() == b.max():
        u, up = math.nan, math.nan
    else:
        u, up = mann_whitney(a, b)
    min_p = min(1.0, 2.0 / math.comb(na + nb, na))
    verdict = NO_SPREAD if math.isnan(p) else ""
    return Comparison(candidate, baseline, na, nb, diff, t, df, p, u, up, min_p, verdict=verdict)


def holm(pvalues: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values; NaN entries stay NaN and do not count."""
    p = np.asarray(list(pvalues), dtype=float)
    out = np.full(p.shape, math.nan)
    idx = np.flatnonzero(~np.isnan(p))
    m = len(idx)
    running = 0.0
    for rank, i in enumerate(idx[np.argsort(p[idx], kind="stable")]):
        running = max(running, min(1.0, (m - rank) * p[i]))
        out[i] = running
    return out.tolist()


def comparison_tables(
    values: Mapping[str, Sequence[float]],
    *,
    direction: str,
    candidates: Sequence[str] = CANDIDATES,
    alpha: float = 0.05,
    confidence: float = 0.95,
):
    """The summary table (one row per optimizer) and the test table (candidate x baseline).

    `values` maps each optimizer to its confirm values. Returns two pandas DataFrames; the
    summary is sorted best first for `direction`, the tests carry a `verdict` column.
    """
    import pandas as pd

    _check_direction(direction)
    if not 0.0 < alpha < 1.0:
        raise ValueError(f"alpha must be in (0, 1), got {alpha!r}")
    summaries = [summarize(name, v, confidence=confidence).as_dict() for name, v in values.items()]
    summary = pd.DataFrame(
        summaries, columns=["optimizer", "n", "mean", "std", "ci_low", "ci_high"]
    )
    summary = summary.sort_values(
        "mean", ascending=direction == "minimize", na_position="last", kind="stable"
    ).reset_index(drop=True)

    present = [c for c in candidates if c in values]
    baselines = [name for name in values if name not in candidates]
    comps = [compare_groups(c, values[c], b, values[b]) for c in present for b in baselines]
    adjusted = holm([c.welch_p for c in comps])
    rows = []
    for comp, p_adj in zip(comps, adjusted, strict=True):
        row = comp.as_dict()
        row["welch_p_holm"] = p_adj
        if not row["verdict"]:
            if p_adj < alpha:
                better = (comp.mean_difference > 0) == (direction == "maximize")
                row["verdict"] = f"{comp.candidate} {'better' if better else 'worse'}"
            else:
                row["verdict"] = NOT_SIGNIFICANT
        rows.append(row)
    columns = list(Comparison.__dataclass_fields__)
    tests = pd.DataFrame(rows, columns=columns)
    return summary, tests
