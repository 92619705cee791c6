"""What a campaign's search phase says about tuning cost: budget curves, time-to-target, compute.

- `expected_best_curve(values, direction)`: the expected best value of k trials drawn without
  replacement from an optimizer's n complete search trials, k = 1..n (exact, from the order
  statistics), and `bootstrap_band` its bootstrap 90% band.
- `budget_curves(runs, direction)` / `budget_curve_frame(storage, campaign)`: those curves per
  optimizer, with how many of its search trials completed, were pruned (or stopped) or failed.
- `time_to_target(runs, curves, ...)` / `time_to_target_frame(storage, campaign)`: the summed
  compute seconds and the number of search trials until a run first reached a target value.
- `best_so_far(runs, direction)` / `best_so_far_frame(storage, campaign)`: the best complete
  value against cumulative compute seconds.

The definitions are in docs/tuning-analysis.md. The `*_frame` functions read the storage; the
others take the frames of `runs_frame` and `curves_frame`, so a report that has read them
already computes without touching the database again.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from studies.results.db import ResultsDB
from studies.results.frames import _storage_url, curves_frame, runs_frame

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "BAND_LEVEL",
    "BEST_SO_FAR_COLUMNS",
    "BOOTSTRAP_SAMPLES",
    "BUDGET_CURVE_COLUMNS",
    "TIME_TO_TARGET_COLUMNS",
    "best_so_far",
    "best_so_far_frame",
    "bootstrap_band",
    "budget_curve_frame",
    "budget_curves",
    "campaign_target",
    "curve_with_band",
    "expected_best_curve",
    "expected_best_weights",
    "search_counts",
    "target_of_spec",
    "time_to_target",
    "time_to_target_frame",
]

BAND_LEVEL = 0.90
BOOTSTRAP_SAMPLES = 1000
BOOTSTRAP_SEED = 0
DIRECTIONS = ("minimize", "maximize")
PRUNED_STATUSES = ("pruned", "stopped")
COUNT_COLUMNS = ["n_complete", "n_pruned", "n_failed"]
BUDGET_CURVE_COLUMNS = ["optimizer", "k", "expected_best", "lower", "upper", *COUNT_COLUMNS]
TIME_TO_TARGET_COLUMNS = [
    "optimizer",
    "target",
    "reached",
    "seconds",
    "trials",
    "run_id",
    "trial_number",
    "epoch",
    "total_seconds",
    "total_trials",
]
BEST_SO_FAR_COLUMNS = ["optimizer", "trial", "run_id", "status", "seconds", "value", "best_so_far"]
# The weight matrix is built in blocks of rows of at most this many cells (8 MB of float64).
_BLOCK_CELLS = 1 << 20


def _check_direction(direction: str) -> bool:
    """True for maximize; a clear error for anything but the two directions."""
    if direction not in DIRECTIONS:
        raise ValueError(f"direction must be 'minimize' or 'maximize', got {direction!r}")
    return direction == "maximize"


def _worst_to_best(values: Any, direction: str) -> np.ndarray:
    """The values as floats sorted from the worst to the best (along the last axis)."""
    maximize = _check_direction(direction)
    x = np.asarray(values, dtype=float)
    if not np.all(np.isfinite(x)):
        raise ValueError("values must be finite numbers (drop the trials without a value first)")
    return np.sort(x, axis=-1) if maximize else -np.sort(-x, axis=-1)


def expected_best_weights(n: int, ks: Sequence[int] | np.ndarray | None = None) -> np.ndarray:
    """W[j, i] = P(the best of a random size-k subset is the (i+1)-th worst of n), k = ks[j].

    W[j, i] = C(i, k-1) / C(n, k) for i + 1 >= k, else 0 (i counts from 0), computed from
    log-factorials (a cumulative sum of logs) so that it neither overflows nor loses the small
    weights for n in the thousands. Each row sums to 1 (hockey-stick identity); rows are
    renormalised to absorb rounding.
    """
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    k = np.arange(1, n + 1) if ks is None else np.asarray(ks, dtype=np.int64)
    if k.size and (k.min() < 1 or k.max() > n):
        raise ValueError(f"every k must be in [1, {n}]")
    log_fact = np.concatenate([[0.0], np.cumsum(np.log(np.arange(1, n + 1, dtype=float)))])
    i = np.arange(n)[None, :]  # 0-based rank from the worst: i + 1 is the 1-based rank
    r = k[:, None] - 1  # the best of k is the (i+1)-th worst: the other k-1 are among the i below
    valid = i >= r
    top = np.where(valid, i, 0)
    low = np.where(valid, r, 0)
    log_c_i = log_fact[top] - log_fact[low] - log_fact[top - low]
    log_c_n = log_fact[n] - log_fact[k] - log_fact[n - k]
    w = np.where(valid, np.exp(log_c_i - log_c_n[:, None]), 0.0)
    return w / w.sum(axis=1, keepdims=True)


def _apply_weights(sorted_values: np.ndarray, ks: np.ndarray) -> np.ndarray:
    """E_k for every k in ks and every row of `sorted_values` (rows sorted worst to best):
    result shape (rows, len(ks)). Built in blocks of k so memory stays bounded."""
    n = sorted_values.shape[-1]
    x = np.atleast_2d(sorted_values)
    out = np.empty((x.shape[0], len(ks)))
    step = max(1, _BLOCK_CELLS // n)
    for start in range(0, len(ks), step):
        block = ks[start : start + step]
        out[:, start : start + len(block)] = x @ expected_best_weights(n, block).T
    return out


def expected_best_curve(values: Sequence[float] | np.ndarray, direction: str) -> np.ndarray:
    """E[best of k] for k = 1..n over uniformly random size-k subsets (without replacement).

    With the n values sorted from the worst to the best, x_1..x_n, the best of k is x_i with
    probability C(i-1, k-1) / C(n, k), so E_k = sum_i x_i C(i-1, k-1) / C(n, k). E_1 is the
    mean, E_n the best value. Ties need no care (tied values are interchangeable).
    """
    x = _worst_to_best(values, direction)
    if x.ndim != 1:
        raise ValueError("values must be one-dimensional")
    if x.size == 0:
        return np.empty(0)
    return _apply_weights(x, np.arange(1, x.size + 1))[0]


def curve_with_band(
    values: Sequence[float] | np.ndarray,
    direction: str,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = BAND_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(expected best, lower, upper) for k = 1..n: `expected_best_curve` and its band.

    The n values are resampled with replacement `samples` times (a generator seeded with
    `seed`, so the band is reproducible); each resample's curve is computed exactly, and the
    band is the (1 - level)/2 and (1 + level)/2 quantiles over resamples at each k, widened
    where needed to contain the curve itself (lower <= expected best <= upper).
    """
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    if samples < 1:
        raise ValueError(f"samples must be >= 1, got {samples}")
    x = _worst_to_best(values, direction)
    n = x.size
    if n == 0:
        return np.empty(0), np.empty(0), np.empty(0)
    rng = np.random.default_rng(seed)
    # x is sorted worst to best, so sorted indices give each resample sorted the same way
    picks = np.sort(rng.integers(0, n, size=(samples, n)), axis=1)
    curves = _apply_weights(np.vstack([x[None, :], x[picks]]), np.arange(1, n + 1))
    curve = curves[0]
    lo, hi = np.quantile(curves[1:], [(1 - level) / 2, (1 + level) / 2], axis=0)
    return curve, np.minimum(lo, curve), np.maximum(hi, curve)


def bootstrap_band(
    values: Sequence[float] | np.ndarray,
    direction: str,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    level: float = BAND_LEVEL,
    seed: int = BOOTSTRAP_SEED,
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper): the bootstrap band of `expected_best_curve`, k = 1..n (see
    `curve_with_band`)."""
    _, lower, upper = curve_with_band(values, direction, samples=samples, level=level, seed=seed)
    return lower, upper


def _optimizers(runs: pd.DataFrame, order: Sequence[str] | None) -> list[str]:
    present = list(dict.fromkeys(runs["optimizer"].tolist()))
    if order is None:
        return present
    return list(order) + [o for o in present if o not in order]


def _search(runs: pd.DataFrame) -> pd.DataFrame:
    """Finished search runs in start order (run id)."""
    search = runs.loc[(runs["phase"] == "search") & (runs["status"] != "running")]
    return search.sort_values("run_id", kind="stable")


def _complete_mask(runs: pd.DataFrame) -> Any:
    values = runs["value"].astype(float)
    return (runs["status"] == "complete").to_numpy() & np.isfinite(values.to_numpy())


def search_counts(runs: pd.DataFrame, optimizers: Sequence[str] | None = None) -> pd.DataFrame:
    """Per optimizer: its finished search trials, how many completed with a finite value
    (what the budget curve is over), were pruned or stopped, or failed (a `complete` trial
    without a finite value counts as failed), and the shares of each."""
    import pandas as pd

    search = _search(runs)
    rows = []
    for name in _optimizers(runs, optimizers):
        mine = search.loc[search["optimizer"] == name]
        complete = int(_complete_mask(mine).sum())
        pruned = int(mine["status"].isin(PRUNED_STATUSES).sum())
        total = len(mine)
        failed = total - complete - pruned
        rows.append(
            {
                "optimizer": name,
                "n_search": total,
                "n_complete": complete,
                "n_pruned": pruned,
                "n_failed": failed,
                "share_pruned": pruned / total if total else math.nan,
                "share_failed": failed / total if total else math.nan,
            }
        )
    columns = ["optimizer", "n_search", *COUNT_COLUMNS, "share_pruned", "share_failed"]
    return pd.DataFrame(rows, columns=columns)


def budget_curves(
    runs: pd.DataFrame,
    direction: str,
    *,
    optimizers: Sequence[str] | None = None,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """The budget curve of every optimizer over its complete search trials (columns
    `BUDGET_CURVE_COLUMNS`, one row per optimizer and k); an optimizer without a complete
    search trial has no rows (its counts are in `search_counts`)."""
    import pandas as pd

    _check_direction(direction)
    counts = search_counts(runs, optimizers).set_index("optimizer")
    search = _search(runs)
    parts = []
    for name in counts.index:
        mine = search.loc[search["optimizer"] == name]
        values = mine.loc[_complete_mask(mine), "value"].astype(float).to_numpy()
        if values.size == 0:
            continue
        curve, lower, upper = curve_with_band(values, direction, samples=samples, seed=seed)
        part = pd.DataFrame(
            {
                "optimizer": name,
                "k": np.arange(1, values.size + 1),
                "expected_best": curve,
                "lower": lower,
                "upper": upper,
            }
        )
        for col in COUNT_COLUMNS:
            part[col] = int(counts.loc[name, col])
        parts.append(part)
    if not parts:
        return pd.DataFrame(columns=BUDGET_CURVE_COLUMNS)
    return pd.concat(parts, ignore_index=True)[BUDGET_CURVE_COLUMNS]


def _reached(values: np.ndarray, target: float, maximize: bool) -> np.ndarray:
    return values >= target if maximize else values <= target


def time_to_target(
    runs: pd.DataFrame,
    curves: pd.DataFrame,
    *,
    metric: str,
    direction: str,
    target: float,
    optimizers: Sequence[str] | None = None,
) -> pd.DataFrame:
    """Per optimizer: compute seconds and search trials until a run first reached `target`.

    Search trials (every finished one: complete, pruned, stopped or failed) are taken in start
    order (run id). A trial reaches the target at the first epoch whose stored `metric` is at
    or beyond it (<= for minimize, >= for maximize); a trial without a stored curve of `metric`
    reaches it, at its end, when its final value does. `seconds` = the summed wall time of the
    optimizer's earlier trials + this trial's wall time x epoch / its last reported epoch
    (epochs count from 1); `trials` = the 1-based index of that trial. Never reached:
    `reached` False, `seconds`, `trials` and `epoch` missing; `total_*` say what was spent.
    """
    import pandas as pd

    maximize = _check_direction(direction)
    if not isinstance(target, (int, float)) or not math.isfinite(target):
        raise ValueError(f"target must be a finite number, got {target!r}")
    search = _search(runs)
    mine_curves = curves.loc[curves["metric"] == metric, ["run_id", "epoch", "value"]]
    mine_curves = mine_curves.loc[mine_curves["run_id"].isin(search["run_id"])]
    last_epoch = mine_curves.groupby("run_id")["epoch"].max()
    hit = mine_curves.loc[_reached(mine_curves["value"].astype(float).to_numpy(), target, maximize)]
    first_hit = hit.groupby("run_id")["epoch"].min()
    rows = []
    for name in _optimizers(runs, optimizers):
        mine = search.loc[search["optimizer"] == name]
        walls = mine["wall_time"].astype(float).fillna(0.0).to_numpy()
        row: dict[str, Any] = {
            "optimizer": name,
            "target": float(target),
            "reached": False,
            "seconds": math.nan,
            "trials": None,
            "run_id": None,
            "trial_number": None,
            "epoch": None,
            "total_seconds": float(walls.sum()),
            "total_trials": len(mine),
        }
        spent = 0.0
        for index, (run_id, value, trial_number) in enumerate(
            zip(mine["run_id"], mine["value"].astype(float), mine["trial_number"], strict=True)
        ):
            wall = walls[index]
            if run_id in last_epoch.index:
                if run_id not in first_hit.index:
                    spent += wall
                    continue
                epoch = int(first_hit[run_id])
                fraction = epoch / max(int(last_epoch[run_id]), 1)
            elif math.isfinite(value) and bool(_reached(np.array([value]), target, maximize)[0]):
                epoch, fraction = None, 1.0
            else:
                spent += wall
                continue
            row.update(
                reached=True,
                seconds=spent + fraction * wall,
                trials=index + 1,
                run_id=int(run_id),
                trial_number=None if pd.isna(trial_number) else int(trial_number),
                epoch=epoch,
            )
            break
        rows.append(row)
    frame = pd.DataFrame(rows, columns=TIME_TO_TARGET_COLUMNS)
    for col in ("trials", "run_id", "trial_number", "epoch"):
        frame[col] = frame[col].astype("Int64")
    frame["seconds"] = frame["seconds"].astype(float)
    frame["reached"] = frame["reached"].astype(bool)
    return frame


def best_so_far(
    runs: pd.DataFrame, direction: str, *, optimizers: Sequence[str] | None = None
) -> pd.DataFrame:
    """Per optimizer and search trial in start order: cumulative wall seconds (this trial
    included) and the best value of the complete trials so far (NaN before the first)."""
    import pandas as pd

    maximize = _check_direction(direction)
    search = _search(runs)
    parts = []
    for name in _optimizers(runs, optimizers):
        mine = search.loc[search["optimizer"] == name]
        if mine.empty:
            continue
        values = np.where(_complete_mask(mine), mine["value"].astype(float).to_numpy(), np.nan)
        filled = np.where(np.isnan(values), -np.inf if maximize else np.inf, values)
        best = np.maximum.accumulate(filled) if maximize else np.minimum.accumulate(filled)
        parts.append(
            pd.DataFrame(
                {
                    "optimizer": name,
                    "trial": np.arange(1, len(mine) + 1),
                    "run_id": mine["run_id"].to_numpy(),
                    "status": mine["status"].to_numpy(),
                    "seconds": np.cumsum(mine["wall_time"].astype(float).fillna(0.0).to_numpy()),
                    "value": values,
                    "best_so_far": np.where(np.isfinite(best), best, np.nan),
                }
            )
        )
    if not parts:
        return pd.DataFrame(columns=BEST_SO_FAR_COLUMNS)
    return pd.concat(parts, ignore_index=True)[BEST_SO_FAR_COLUMNS]


# ---- reading the storage ------------------------------------------------------------------


def target_of_spec(spec: Mapping[str, Any] | None) -> float | None:
    """The `target: {value: V}` of a (normalised, stored) spec, or None."""
    target = (spec or {}).get("target")
    if isinstance(target, Mapping):
        value = target.get("value")
        if isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            return float(value)
    return None


def _campaign(storage: str | None, campaign: str) -> tuple[str, dict[str, Any]]:
    url = _storage_url(storage)
    info = ResultsDB(url).campaign(campaign)
    if info is None:
        raise KeyError(f"no campaign {campaign!r} in this storage")
    return url, info


def _order(info: Mapping[str, Any]) -> list[str]:
    return list((info.get("spec") or {}).get("optimizers", {}))


def campaign_target(storage: str | None, campaign: str) -> float | None:
    """The target value the campaign's stored spec gives, or None."""
    return target_of_spec(_campaign(storage, campaign)[1].get("spec"))


def budget_curve_frame(
    storage: str | None,
    campaign: str,
    *,
    samples: int = BOOTSTRAP_SAMPLES,
    seed: int = BOOTSTRAP_SEED,
) -> pd.DataFrame:
    """`budget_curves` of a stored campaign (optimizers in the spec's order)."""
    url, info = _campaign(storage, campaign)
    return budget_curves(
        runs_frame(url, campaign),
        info["direction"],
        optimizers=_order(info),
        samples=samples,
        seed=seed,
    )


def time_to_target_frame(
    storage: str | None, campaign: str, target: float | None = None
) -> pd.DataFrame:
    """`time_to_target` of a stored campaign; `target` overrides the spec's `target.value`.

    Raises ValueError when neither gives a target.
    """
    url, info = _campaign(storage, campaign)
    if target is None:
        target = target_of_spec(info.get("spec"))
    if target is None:
        raise ValueError(
            f"campaign {campaign!r} has no target: its spec gives no `target: {{value: V}}`, "
            f"and none was passed"
        )
    return time_to_target(
        runs_frame(url, campaign),
        curves_frame(url, campaign),
        metric=info["metric"],
        direction=info["direction"],
        target=target,
        optimizers=_order(info),
    )


def best_so_far_frame(storage: str | None, campaign: str) -> pd.DataFrame:
    """`best_so_far` of a stored campaign (optimizers in the spec's order)."""
    url, info = _campaign(storage, campaign)
    return best_so_far(runs_frame(url, campaign), info["direction"], optimizers=_order(info))
