"""What a worker counts and reports: a study's trial counts, and finished runs as events."""

from __future__ import annotations

from dataclasses import dataclass, field

from studies.budget import Budget, Spend, search_finished

__all__ = ["Counts", "Event"]


@dataclass
class Counts:
    used: int = 0  # budget used: every trial except heartbeat retries
    waiting: int = 0
    running: int = 0
    finished: int = 0
    elapsed: list[float] = field(default_factory=list)  # seconds each running trial has run
    spend: Spend = field(default_factory=Spend)  # finished search runs' wall time

    def search_finished(self, budget: Budget | int) -> bool:
        """Whether the search is over under `budget` (studies/budget.py; an int: trials)."""
        return search_finished(budget, self)


@dataclass
class Event:
    """A finished run, as the progress display sees it."""

    optimizer: str
    phase: str
    status: str
    value: float | None
    trial_number: int | None
    seed: int
    wall_time: float | None = None
    reason: str | None = None
    run_id: int | None = None
