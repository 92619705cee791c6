"""Writing and reading the results tables: campaigns, runs and their curves, confirm claims.

`ResultsDB(url)` is cheap to construct (it uses the process's shared engine for the URL). Every
write is one short transaction, retried on a busy database.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from studies.results.claims import ConfirmClaims
from studies.results.provenance import git_revision, run_provenance, worker_name
from studies.results.schema import (
    PHASES,
    STATUSES,
    Base,
    CampaignConflict,
    CampaignRow,
    CurveRow,
    RunRow,
)
from studies.results.values import finite_or_none, jsonable
from studies.storage import get_engine, read_connection, reading, with_retries

__all__ = ["ResultsDB"]


def _now() -> datetime:
    return datetime.now(timezone.utc)


class ResultsDB(ConfirmClaims):
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
            versions=run_provenance(device),
            git_revision=git_revision(),
            hyperparameters=jsonable(hyperparameters),
        )

        def txn() -> int:
            with self.engine.begin() as conn:
                key = conn.execute(sa.insert(RunRow).values(**values)).inserted_primary_key
                assert key is not None
                return int(key[0])

        return with_retries(txn)

    def add_curves(self, run_id: int, rows: Iterable[tuple[int, str, float]]) -> None:
        """Append (epoch, metric, value) points of a run in one batched insert."""
        batch = [
            {"run_id": run_id, "epoch": int(e), "metric": str(m), "value": finite_or_none(v)}
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
            value=finite_or_none(value),
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
        self.finish_if_running(run_id, status="failed", reason=reason)

    def finish_if_running(
        self, run_id: int, *, status: str, reason: str, wall_time: float | None = None
    ) -> bool:
        """End a run row that is still `running` (a stopped, lost or interrupted trial's).

        Returns whether it was still running; a row that has finished is left as it is.
        """
        if status not in STATUSES[1:]:
            raise ValueError(f"a finished run's status must be one of {STATUSES[1:]}")
        values: dict[str, Any] = dict(status=status, reason=reason, finished_at=_now())
        if wall_time is not None:
            values["wall_time"] = wall_time

        def txn() -> bool:
            with self.engine.begin() as conn:
                result = conn.execute(
                    sa.update(RunRow)
                    .where(RunRow.id == run_id, RunRow.status == "running")
                    .values(**values)
                )
                return result.rowcount == 1

        return with_retries(txn)

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
