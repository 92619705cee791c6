"""pandas views of a campaign's results: `runs_frame`, `curves_frame`, `compare_frame`.

The columns are documented in docs/architecture-results.md.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from studies.results.db import ResultsDB
from studies.results.schema import CampaignRow, CurveRow, RunRow
from studies.storage import read_connection

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "COMPARE_COLUMNS",
    "CURVE_COLUMNS",
    "RUN_COLUMNS",
    "compare_frame",
    "current_reruns",
    "curves_frame",
    "runs_frame",
]

RUN_COLUMNS = [
    "run_id",
    "campaign",
    "study",
    "optimizer",
    "phase",
    "trial_number",
    "seed",
    "status",
    "reason",
    "value",
    "metric",
    "direction",
    "wall_time",
    "started_at",
    "finished_at",
    "device",
    "worker",
    "hyperparameters",
    "metrics",
    "extras",
    "versions",
    "git_revision",
    "traceback",
]
CURVE_COLUMNS = [
    "run_id",
    "campaign",
    "optimizer",
    "phase",
    "trial_number",
    "seed",
    "status",
    "epoch",
    "metric",
    "value",
]
COMPARE_COLUMNS = [
    "optimizer",
    "metric",
    "direction",
    "best_value",
    "best_trial",
    "confirm_mean",
    "confirm_std",
    "confirm_seeds",
    "trials_complete",
    "trials_pruned",
    "trials_failed",
    "compute_time",
]


def _storage_url(storage: Any) -> str:
    from studies.storage import resolve_storage_url

    return resolve_storage_url(storage)


def runs_frame(storage: str | None, campaign: str) -> pd.DataFrame:
    """One row per run of `campaign` (search and confirm), oldest first.

    Columns: see docs/architecture-results.md. `hyperparameters`, `metrics`, `extras` and
    `versions` hold dicts; times are UTC timestamps; `value` is NaN when there is none.
    """
    import pandas as pd

    db = ResultsDB(_storage_url(storage))
    if not db.tables_exist():
        return pd.DataFrame(columns=RUN_COLUMNS)
    stmt = (
        sa.select(RunRow, CampaignRow.metric, CampaignRow.direction)
        .join(CampaignRow, CampaignRow.name == RunRow.campaign)
        .where(RunRow.campaign == campaign)
        .order_by(RunRow.id)
    )
    with read_connection(db.engine) as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    for row in rows:
        row["run_id"] = row.pop("id")
    frame = pd.DataFrame(rows, columns=RUN_COLUMNS)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    frame["wall_time"] = pd.to_numeric(frame["wall_time"], errors="coerce").astype(float)
    frame["trial_number"] = frame["trial_number"].astype("Int64")
    frame["seed"] = frame["seed"].astype("int64")
    for col in ("started_at", "finished_at"):
        frame[col] = pd.to_datetime(frame[col], utc=True)
    return frame


def curves_frame(storage: str | None, campaign: str) -> pd.DataFrame:
    """Per-epoch metrics of every run of `campaign`, long format, ordered by run, epoch, metric."""
    import pandas as pd

    db = ResultsDB(_storage_url(storage))
    if not db.tables_exist():
        return pd.DataFrame(columns=CURVE_COLUMNS)
    stmt = (
        sa.select(
            CurveRow.run_id,
            RunRow.campaign,
            RunRow.optimizer,
            RunRow.phase,
            RunRow.trial_number,
            RunRow.seed,
            RunRow.status,
            CurveRow.epoch,
            CurveRow.metric,
            CurveRow.value,
        )
        .join(RunRow, RunRow.id == CurveRow.run_id)
        .where(RunRow.campaign == campaign)
        .order_by(CurveRow.run_id, CurveRow.epoch, CurveRow.id)
    )
    with read_connection(db.engine) as conn:
        rows = [dict(r._mapping) for r in conn.execute(stmt)]
    frame = pd.DataFrame(rows, columns=CURVE_COLUMNS)
    frame["value"] = pd.to_numeric(frame["value"], errors="coerce").astype(float)
    frame["trial_number"] = frame["trial_number"].astype("Int64")
    return frame


def current_reruns(runs: pd.DataFrame) -> pd.DataFrame:
    """`runs` without the confirm and sweep runs of a superseded best trial.

    Confirm and sweep runs re-run an optimizer's best search trial (their `trial_number`). When
    a grown campaign's search finds a new best, that trial is confirmed and swept anew and the
    earlier runs stay in the database (docs/budgets.md); the current ones are those of the trial
    the optimizer's last run of the phase re-ran. Search runs are all kept.
    """
    if runs.empty:
        return runs
    rerun = runs["phase"].isin(("confirm", "sweep"))
    if not rerun.any():
        return runs
    latest = (
        runs.loc[rerun].sort_values("run_id").groupby(["optimizer", "phase"])["trial_number"].last()
    )
    keys = list(zip(runs["optimizer"], runs["phase"], strict=True))
    current = [
        not is_rerun or latest.get(key) == number
        for is_rerun, key, number in zip(rerun, keys, runs["trial_number"], strict=True)
    ]
    return runs.loc[current]


def compare_frame(storage: str | None, campaign: str) -> pd.DataFrame:
    """One row per optimizer of `campaign`: best search value, confirm statistics, counts, time.

    Rows are ranked by the confirm mean (then the best search value), best first, by the
    workload's direction. `confirm_std` is the sample standard deviation (NaN below 2 seeds);
    `compute_time` the summed wall time of all the optimizer's runs, in seconds.
    """
    import pandas as pd

    url = _storage_url(storage)
    info = ResultsDB(url).campaign(campaign)
    if info is None:
        raise KeyError(f"no campaign {campaign!r} in this storage")
    every = runs_frame(url, campaign)
    runs = current_reruns(every)
    direction = info["direction"]
    maximize = direction == "maximize"
    optimizers = list(info["spec"].get("optimizers", {})) or sorted(runs["optimizer"].unique())
    rows = []
    for name in optimizers:
        mine = runs[runs["optimizer"] == name]
        search = mine[mine["phase"] == "search"]
        done = search[search["status"] == "complete"].dropna(subset=["value"])
        confirm = mine[(mine["phase"] == "confirm") & (mine["status"] == "complete")]
        confirm_values = confirm["value"].dropna()
        best_value, best_trial = math.nan, pd.NA
        if len(done):
            best = done.loc[done["value"].idxmax() if maximize else done["value"].idxmin()]
            best_value, best_trial = float(best["value"]), int(best["trial_number"])
        rows.append(
            {
                "optimizer": name,
                "metric": info["metric"],
                "direction": direction,
                "best_value": best_value,
                "best_trial": best_trial,
                "confirm_mean": float(confirm_values.mean()) if len(confirm_values) else math.nan,
                "confirm_std": float(confirm_values.std(ddof=1))
                if len(confirm_values) > 1
                else math.nan,
                "confirm_seeds": len(confirm_values),
                "trials_complete": int((search["status"] == "complete").sum()),
                "trials_pruned": int(search["status"].isin(("pruned", "stopped")).sum()),
                "trials_failed": int((search["status"] == "failed").sum()),
                "compute_time": float(
                    every.loc[every["optimizer"] == name, "wall_time"].fillna(0.0).sum()
                ),
            }
        )
    frame = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    frame["best_trial"] = frame["best_trial"].astype("Int64")
    sign = -1.0 if maximize else 1.0
    frame["_k1"] = (sign * frame["confirm_mean"]).fillna(math.inf)
    frame["_k2"] = (sign * frame["best_value"]).fillna(math.inf)
    frame = frame.sort_values(["_k1", "_k2"], kind="stable").drop(columns=["_k1", "_k2"])
    return frame.reset_index(drop=True)
