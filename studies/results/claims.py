"""Confirm claims: work items that exactly one worker runs (`hvadam_claims`).

A claim is unique per (campaign, optimizer, phase, slot). Its holder heart-beats it while the
run goes on; a claim whose holder went silent for the grace period is taken over by the next
worker (compare-and-swap on its token), and the run it left behind is marked failed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from datetime import datetime, timezone
from typing import Any

import sqlalchemy as sa

from studies.results.provenance import worker_name
from studies.results.schema import ClaimRow, RunRow
from studies.storage import read_connection, with_retries

__all__ = ["ConfirmClaims", "confirmed", "open_slots"]


class ConfirmClaims:
    """The claim operations of `ResultsDB` (which provides `engine`)."""

    engine: sa.Engine

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
                            key = conn.execute(
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
                            ).inserted_primary_key
                            assert key is not None
                            new_id = int(key[0])
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
                            finished_at=datetime.now(timezone.utc),
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

    def abandon_claim(self, claim_id: int, token: str) -> bool:
        """Leave a claim immediately stale (an interrupted run), so that the next worker takes it."""
        return self._update_claim(claim_id, token, heartbeat_at=0.0)


def confirmed(claims: list[dict[str, Any]], label: str, seeds: int) -> int:
    """How many of `label`'s confirm slots 0..seeds-1 are done (one pass over the claims)."""
    return sum(
        1
        for c in claims
        if c["optimizer"] == label and c["status"] == "done" and 0 <= c["slot"] < seeds
    )


def open_slots(
    claims: list[dict[str, Any]], seeds: int, stale: Callable[[dict[str, Any]], bool]
) -> Iterator[int] | None:
    """The slots a worker may claim, stale ones first; None when there is none.

    Works from the claims that exist (never a pass over all `seeds` slots): the stale running
    ones, then the free slots in order, produced lazily as the worker tries them.
    """
    taken = {c["slot"] for c in claims}
    retake = sorted(c["slot"] for c in claims if c["status"] == "running" and stale(c))
    if not retake and len([s for s in taken if 0 <= s < seeds]) >= seeds:
        return None

    def free() -> Iterator[int]:
        yield from retake
        slot = 0
        while slot < seeds:
            if slot not in taken:
                yield slot
            slot += 1

    return free()
