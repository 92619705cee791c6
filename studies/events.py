"""What a worker counts and reports: a study's trial counts, and finished runs as events."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Counts", "Event"]


@dataclass
class Counts:
    used: int = 0  # budget used: every trial except heartbeat retries
    waiting: int = 0
    running: int = 0
    finished: int = 0

    def search_finished(self, budget: int) -> bool:
        return self.used >= budget and self.waiting == 0 and self.running == 0


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
