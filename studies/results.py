"""The project's results tables (next to Optuna's, in the same database) and pandas views of them.

Tables (SQLAlchemy 2):

- `hvadam_campaigns`: one row per campaign: its spec (JSON) and spec hash, workload, metric.
- `hvadam_runs`: one row per trial run, search or confirm: who ran it where, with which full
  hyperparameters, how it ended (status and reason, traceback) and what it measured.
- `hvadam_curves`: per-epoch named metrics of a run (long format: run id, epoch, metric, value).
- `hvadam_claims`: work items taken by one worker (unique per campaign, optimizer, phase and
  slot), so that each confirm run happens exactly once however many workers there are.

Analyses read them through `runs_frame`, `curves_frame` and `compare_frame`; the columns are
documented in docs/architecture-results.md.
"""

from __future__ import annotations

import contextlib
import functools
import json
import math
import os
import platform
import socket
import subprocess
import time
import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from studies.storage import get_engine, read_connection, reading, with_retries

if TYPE_CHECKING:
    import pandas as pd

__all__ = [
    "CampaignConflict",
    "ResultsDB",
    "compare_frame",
    "curves_frame",
    "git_revision",
    "library_versions",
    "runs_frame",
]

PHASES = ("search", "confirm")
# `stopped`: ended early by a Ray Tune scheduler (ASHA, PBT); never a full-budget result.
STATUSES = ("running", "complete", "pruned", "failed", "stopped")


class CampaignConflict(ValueError):
    """A campaign name already used in this database by a different spec."""


class Base(DeclarativeBase):
    # Our own metadata: creating our tables never touches Optuna's.
    metadata = sa.MetaData()


class CampaignRow(Base):
    __tablename__ = "hvadam_campaigns"

    name: Mapped[str] = mapped_column(sa.String(255), primary_key=True)
    spec_hash: Mapped[str] = mapped_column(sa.String(64))
    spec: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    workload: Mapped[str] = mapped_column(sa.String(255))
    metric: Mapped[str] = mapped_column(sa.String(128))
    direction: Mapped[str] = mapped_column(sa.String(16))
    created_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))


class RunRow(Base):
    __tablename__ = "hvadam_runs"
    __table_args__ = (sa.Index("ix_hvadam_runs_campaign_phase", "campaign", "phase"),)

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    campaign: Mapped[str] = mapped_column(sa.String(255))
    study: Mapped[str] = mapped_column(sa.String(512))
    optimizer: Mapped[str] = mapped_column(sa.String(64))
    trial_number: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    phase: Mapped[str] = mapped_column(sa.String(16))
    seed: Mapped[int] = mapped_column(sa.BigInteger)
    device: Mapped[str] = mapped_column(sa.String(64))
    worker: Mapped[str] = mapped_column(sa.String(255))
    status: Mapped[str] = mapped_column(sa.String(16))
    reason: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    traceback: Mapped[str | None] = mapped_column(sa.Text, nullable=True)
    started_at: Mapped[datetime] = mapped_column(sa.DateTime(timezone=True))
    finished_at: Mapped[datetime | None] = mapped_column(sa.DateTime(timezone=True), nullable=True)
    wall_time: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    versions: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    git_revision: Mapped[str | None] = mapped_column(sa.String(64), nullable=True)
    hyperparameters: Mapped[dict[str, Any]] = mapped_column(sa.JSON)
    value: Mapped[float | None] = mapped_column(sa.Float, nullable=True)
    metrics: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)
    extras: Mapped[dict[str, Any] | None] = mapped_column(sa.JSON, nullable=True)


class CurveRow(Base):
    __tablename__ = "hvadam_curves"

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[int] = mapped_column(
        sa.ForeignKey("hvadam_runs.id", ondelete="CASCADE"), index=True
    )
    epoch: Mapped[int] = mapped_column(sa.Integer)
    metric: Mapped[str] = mapped_column(sa.String(128))
    value: Mapped[float | None] = mapped_column(sa.Float, nullable=True)


class ClaimRow(Base):
    __tablename__ = "hvadam_claims"
    __table_args__ = (
        sa.UniqueConstraint("campaign", "optimizer", "phase", "slot", name="uq_hvadam_claims"),
    )

    id: Mapped[int] = mapped_column(sa.Integer, primary_key=True, autoincrement=True)
    campaign: Mapped[str] = mapped_column(sa.String(255))
    optimizer: Mapped[str] = mapped_column(sa.String(64))
    phase: Mapped[str] = mapped_column(sa.String(16))
    slot: Mapped[int] = mapped_column(sa.Integer)
    status: Mapped[str] = mapped_column(sa.String(16))  # running | done
    token: Mapped[str] = mapped_column(sa.String(36))
    worker: Mapped[str] = mapped_column(sa.String(255))
    run_id: Mapped[int | None] = mapped_column(sa.Integer, nullable=True)
    heartbeat_at: Mapped[float] = mapped_column(sa.Float)  # Unix time, seconds
    attempts: Mapped[int] = mapped_column(sa.Integer, default=1)


# ---- provenance --------------------------------------------------------------------------------


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's numbers depend on."""
    versions = {"python": platform.python_version()}
    for dist in ("hvadam", "torch", "optuna", "numpy", "pytorch-optimizer", "sqlalchemy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    if "hvadam" not in versions:
        import hvadam

        versions["hvadam"] = hvadam.__version__
    return versions


@functools.cache
def git_revision() -> str | None:
    """The commit of the checkout the code runs from (with `+dirty` for local changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = rev.stdout.strip()
    if dirty.returncode == 0 and dirty.stdout.strip():
        revision += "+dirty"
    return revision or None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def jsonable(value: Any) -> Any:
    """`value` as strict JSON data: tuples as lists, numpy scalars as Python, NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "item"):  # numpy / torch scalars
        return jsonable(value.item())
    if hasattr(value, "tolist"):
        return jsonable(value.tolist())
    return str(value)


def _finite(value: float | None) -> float | None:
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def _now() -> datetime:
    return datetime.now(timezone.utc)


# ---- writing -----------------------------------------------------------------------------------


class ResultsDB:
    """The results tables of one database (the process's shared engine; cheap to construct)."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.engine = get_engine(url)

    def create_tables(self) -> None:
        with_retries(lambda: Base.metadata.create_all(self.engine))

    def tables_exist(self) -> bool:
        with reading():
            return sa.inspect(self.engine).has_table(RunRow.__tablename__)

    # campaigns

    def register_campaign(
        self,
        *,
        name: str,
        spec_hash: str,
        spec: Mapping[str, Any],
        workload: str,
        metric: str,
        direction: str,
    ) -> bool:
        """Record a new campaign (True), accept the same spec again (False), refuse another."""

        def txn() -> bool:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(CampaignRow.spec_hash).where(CampaignRow.name == name)
                ).first()
                if row is not None:
                    if row.spec_hash != spec_hash:
                        raise CampaignConflict(
                            f"campaign {name!r} already exists in this storage with a different "
                            f"spec (stored hash {row.spec_hash}, this spec {spec_hash}); give the "
                            f"changed campaign a new name, or use another storage"
                        )
                    return False
                conn.execute(
                    sa.insert(CampaignRow).values(
                        name=name,
                        spec_hash=spec_hash,
                        spec=jsonable(spec),
                        workload=workload,
                        metric=metric,
                        direction=direction,
                        created_at=_now(),
                    )
                )
                return True

        return with_retries(txn)

    def campaign(self, name: str) -> dict[str, Any] | None:
        if not self.tables_exist():
            return None
        with read_connection(self.engine) as conn:
            row = conn.execute(sa.select(CampaignRow).where(CampaignRow.name == name)).first()
        return None if row is None else dict(row._mapping)

    def campaigns(self) -> list[dict[str, Any]]:
        if not self.tables_exist():
            return []
        with read_connection(self.engine) as conn:
            rows = conn.execute(sa.select(CampaignRow).order_by(CampaignRow.created_at)).all()
        return [dict(r._mapping) for r in rows]

    # runs

    def start_run(
        self,
        *,
        campaign: str,
        study: str,
        optimizer: str,
        trial_number: int | None,
        phase: str,
        seed: int,
        device: str,
        hyperparameters: Mapping[str, Any],
    ) -> int:
        if phase not in PHASES:
            raise ValueError(f"phase must be one of {PHASES}, got {phase!r}")
        values = dict(
            campaign=campaign,
            study=study,
            optimizer=optimizer,
            trial_number=trial_number,
            phase=phase,
            seed=int(seed),
            device=device,
            worker=worker_name(),
            status="running",
            started_at=_now(),
            versions=library_versions(),
            git_revision=git_revision(),
            hyperparameters=jsonable(hyperparameters),
        )

        def txn() -> int:
            with self.engine.begin() as conn:
                return conn.execute(sa.insert(RunRow).values(**values)).inserted_primary_key[0]

        return with_retries(txn)

    def add_curves(self, run_id: int, rows: Iterable[tuple[int, str, float]]) -> None:
        """Append (epoch, metric, value) points of a run in one batched insert."""
        batch = [
            {"run_id": run_id, "epoch": int(e), "metric": str(m), "value": _finite(v)}
            for e, m, v in rows
        ]
        if not batch:
            return

        def txn() -> None:
            with self.engine.begin() as conn:
                conn.execute(sa.insert(CurveRow), batch)

        with_retries(txn)

    def finish_run(
        self,
        run_id: int,
        *,
        status: str,
        wall_time: float | None = None,
        value: float | None = None,
        reason: str | None = None,
        traceback: str | None = None,
        metrics: Mapping[str, Any] | None = None,
        extras: Mapping[str, Any] | None = None,
    ) -> None:
        if status not in STATUSES[1:]:
            raise ValueError(f"a finished run's status must be one of {STATUSES[1:]}")
        values = dict(
            status=status,
            finished_at=_now(),
            wall_time=wall_time,
            value=_finite(value),
            reason=reason,
            traceback=traceback,
            metrics=None if metrics is None else jsonable(metrics),
            extras=None if extras is None else jsonable(extras),
        )

        def txn() -> None:
            with self.engine.begin() as conn:
                conn.execute(sa.update(RunRow).where(RunRow.id == run_id).values(**values))

        with_retries(txn)

    def fail_lost_runs(
        self, *, campaign: str, optimizer: str, trial_number: int | None, phase: str, reason: str
    ) -> int:
        """Mark still-running rows of a trial whose worker died as failed; returns how many."""

        def txn() -> int:
            with self.engine.begin() as conn:
                result = conn.execute(
                    sa.update(RunRow)
                    .where(
                        RunRow.campaign == campaign,
                        RunRow.optimizer == optimizer,
                        RunRow.trial_number == trial_number,
                        RunRow.phase == phase,
                        RunRow.status == "running",
                    )
                    .values(status="failed", reason=reason, finished_at=_now())
                )
                return result.rowcount

        return with_retries(txn)

    def fail_run_if_running(self, run_id: int, reason: str) -> None:
        def txn() -> None:
            with self.engine.begin() as conn:
                conn.execute(
                    sa.update(RunRow)
                    .where(RunRow.id == run_id, RunRow.status == "running")
                    .values(status="failed", reason=reason, finished_at=_now())
                )

        with_retries(txn)

    # claims

    def claim(
        self, *, campaign: str, optimizer: str, phase: str, slot: int, grace_period: float
    ) -> tuple[int, str] | None:
        """Take the work item (campaign, optimizer, phase, slot), or None if someone has it.

        A claim whose holder stopped heart-beating for `grace_period` seconds is taken over
        (compare-and-swap on its token), and the run it left behind is marked failed.
        """
        token = str(uuid.uuid4())
        now = time.time()

        def txn() -> tuple[int, str] | None:
            with self.engine.begin() as conn:
                row = conn.execute(
                    sa.select(ClaimRow).where(
                        ClaimRow.campaign == campaign,
                        ClaimRow.optimizer == optimizer,
                        ClaimRow.phase == phase,
                        ClaimRow.slot == slot,
                    )
                ).first()
                if row is None:
                    try:
                        with conn.begin_nested():
                            new_id = conn.execute(
                                sa.insert(ClaimRow).values(
                                    campaign=campaign,
                                    optimizer=optimizer,
                                    phase=phase,
                                    slot=slot,
                                    status="running",
                                    token=token,
                                    worker=worker_name(),
                                    heartbeat_at=now,
                                    attempts=1,
                                )
                            ).inserted_primary_key[0]
                    except sa.exc.IntegrityError:
                        return None  # another worker inserted it first
                    return new_id, token
                if row.status != "running" or now - row.heartbeat_at <= grace_period:
                    return None
                taken = conn.execute(
                    sa.update(ClaimRow)
                    .where(ClaimRow.id == row.id, ClaimRow.token == row.token)
                    .values(
                        token=token,
                        worker=worker_name(),
                        heartbeat_at=now,
                        attempts=row.attempts + 1,
                        run_id=None,
                    )
                ).rowcount
                if taken != 1:
                    return None
                if row.run_id is not None:
                    conn.execute(
                        sa.update(RunRow)
                        .where(RunRow.id == row.run_id, RunRow.status == "running")
                        .values(
                            status="failed",
                            reason=f"worker lost: no heartbeat from {row.worker} "
                            f"for {grace_period:g}s; the run was taken over",
                            finished_at=_now(),
                        )
                    )
                return row.id, token

        return with_retries(txn)

    def _update_claim(self, claim_id: int, token: str, **values: Any) -> bool:
        def txn() -> bool:
            with self.engine.begin() as conn:
                result = conn.execute(
                    sa.update(ClaimRow)
                    .where(ClaimRow.id == claim_id, ClaimRow.token == token)
                    .values(**values)
                )
                return result.rowcount == 1

        return with_retries(txn)

    def heartbeat_claim(self, claim_id: int, token: str) -> bool:
        return self._update_claim(claim_id, token, heartbeat_at=time.time())

    def attach_run(self, claim_id: int, token: str, run_id: int) -> bool:
        return self._update_claim(claim_id, token, run_id=run_id, heartbeat_at=time.time())

    def complete_claim(self, claim_id: int, token: str) -> bool:
        """Mark a claim done; False if it was taken over meanwhile (the run is then a duplicate)."""
        return self._update_claim(claim_id, token, status="done", heartbeat_at=time.time())

    def claims(self, campaign: str, phase: str) -> list[dict[str, Any]]:
        with read_connection(self.engine) as conn:
            rows = conn.execute(
                sa.select(ClaimRow).where(ClaimRow.campaign == campaign, ClaimRow.phase == phase)
            ).all()
        return [dict(r._mapping) for r in rows]

    def unfinished_floor(self, campaign: str) -> int:
        """The largest id below which every run of `campaign` has finished.

        Runs finish out of id order when several workers run at once, so a progress display
        polls from this floor (and drops the runs it has seen), not from the last id it saw.
        """
        with read_connection(self.engine) as conn:
            running, last = conn.execute(
                sa.select(
                    sa.func.min(RunRow.id).filter(RunRow.status == "running"),
                    sa.func.max(RunRow.id),
                ).where(RunRow.campaign == campaign)
            ).one()
        if running is not None:
            return int(running) - 1
        return 0 if last is None else int(last)

    def finished_runs(self, campaign: str, after_id: int = 0) -> list[dict[str, Any]]:
        """Finished runs with id > after_id (what a progress display polls)."""
        with read_connection(self.engine) as conn:
            rows = conn.execute(
                sa.select(
                    RunRow.id,
                    RunRow.optimizer,
                    RunRow.phase,
                    RunRow.trial_number,
                    RunRow.seed,
                    RunRow.status,
                    RunRow.value,
                    RunRow.reason,
                    RunRow.wall_time,
                )
                .where(
                    RunRow.campaign == campaign, RunRow.status != "running", RunRow.id > after_id
                )
                .order_by(RunRow.id)
            ).all()
        return [dict(r._mapping) for r in rows]


# ---- reading -----------------------------------------------------------------------------------

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
    runs = runs_frame(url, campaign)
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
                "compute_time": float(mine["wall_time"].fillna(0.0).sum()),
            }
        )
    frame = pd.DataFrame(rows, columns=COMPARE_COLUMNS)
    frame["best_trial"] = frame["best_trial"].astype("Int64")
    sign = -1.0 if maximize else 1.0
    frame["_k1"] = (sign * frame["confirm_mean"]).fillna(math.inf)
    frame["_k2"] = (sign * frame["best_value"]).fillna(math.inf)
    frame = frame.sort_values(["_k1", "_k2"], kind="stable").drop(columns=["_k1", "_k2"])
    return frame.reset_index(drop=True)


def dumps(value: Any) -> str:
    return json.dumps(jsonable(value), sort_keys=True)
