"""The project's results tables, beside Optuna's in the same database (SQLAlchemy 2 models).

- `hvadam_campaigns`: one row per campaign: its spec (JSON) and spec hash, workload, metric.
- `hvadam_runs`: one row per trial run, search, confirm or sweep (`studies.sweep`): who ran it where, with which full
  hyperparameters, how it ended (status and reason, traceback) and what it measured.
- `hvadam_curves`: per-epoch named metrics of a run (long format: run id, epoch, metric, value).
- `hvadam_claims`: work items taken by one worker (unique per campaign, optimizer, phase and
  slot), so that each confirm and sweep run happens exactly once however many workers there are.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

__all__ = [
    "PHASES",
    "STATUSES",
    "Base",
    "CampaignConflict",
    "CampaignRow",
    "ClaimRow",
    "CurveRow",
    "RunRow",
]

PHASES = ("search", "confirm", "sweep")
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
