"""Progress of a running campaign: a bar per optimizer on a terminal, a line per run otherwise.

Each bar shows trials done of the budget plus confirm runs (with a seconds budget, the search
seconds spent of it too), the best value so far and the phase (search, confirm, done). When the output is not a terminal (a log file, CI) every
finished run prints one line instead.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Any, TextIO

from studies.budget import Budget
from studies.runner import Event
from studies.spec import CampaignSpec

__all__ = ["Progress"]


@dataclass
class _State:
    search: int = 0
    confirm: int = 0
    seconds: float = 0.0  # finished search runs' wall time
    best: float = math.nan


def _fmt(value: float | None) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.5g}"


class Progress:
    """Feed it `Event`s (from a worker in this process, or polled from the database)."""

    def __init__(
        self,
        spec: CampaignSpec,
        *,
        metric: str,
        direction: str,
        stream: TextIO | None = None,
        tty: bool | None = None,
        quiet: bool = False,
    ) -> None:
        self.spec = spec
        self.metric = metric
        self.maximize = direction == "maximize"
        self.stream = stream if stream is not None else sys.stdout
        self.tty = self.stream.isatty() if tty is None else tty
        self.quiet = quiet
        self.state = {label: _State() for label in spec.labels}
        self.seen: set[int] = set()
        self.last_id = 0
        self._bars: dict[str, Any] = {}
        self.budget = Budget.of(spec)

    def start(self, history: list[Event]) -> None:
        """Take in what was done before this command (a resumed campaign), printing nothing."""
        for event in history:
            self._count(event)
        if self.quiet:
            return
        if self.tty:
            from tqdm import tqdm

            # No monitor thread (it only tunes tqdm's refresh of loops we do not have): CPU
            # workers are forked from this process, which must then run no other thread.
            tqdm.monitor_interval = 0
            width = max(len(label) for label in self.spec.labels)
            trials = self.spec.trials
            total = None if trials is None else trials + self.spec.confirm_seeds
            for i, label in enumerate(self.spec.labels):
                bar = tqdm(
                    total=total,
                    desc=label.ljust(width),
                    position=i,
                    leave=True,
                    file=self.stream,
                    dynamic_ncols=True,
                    bar_format="{desc} {bar} {n_fmt}/{total_fmt} {postfix} [{elapsed}]",
                )
                self._bars[label] = bar
                self._refresh(label)
        else:
            done = sum(s.search + s.confirm for s in self.state.values())
            if done:
                print(
                    f"[{self.spec.name}] resuming: {done} runs already finished", file=self.stream
                )

    def _count(self, event: Event) -> bool:
        if event.run_id is not None:
            if event.run_id in self.seen:
                return False
            self.seen.add(event.run_id)
            self.last_id = max(self.last_id, event.run_id)
        state = self.state.get(event.optimizer)
        if state is None:
            return False
        lost = event.status == "failed" and (event.reason or "").startswith(
            ("worker lost", "interrupted", "duplicate")
        )
        if event.phase == "search":
            if not lost:
                state.search = min(state.search + 1, self.spec.trials or state.search + 1)
            state.seconds += event.wall_time or 0.0
            if event.status == "complete" and event.value is not None:
                v = float(event.value)
                better = v > state.best if self.maximize else v < state.best
                if math.isnan(state.best) or better:
                    state.best = v
        elif event.phase == "confirm" and (event.status != "failed" or not lost):
            state.confirm = min(state.confirm + 1, self.spec.confirm_seeds)
        return True

    def phase(self, label: str) -> str:
        s = self.state[label]
        trials, seconds = self.budget.trials, self.budget.seconds
        if (trials is None or s.search < trials) and (seconds is None or s.seconds < seconds):
            return "search"
        if s.confirm < self.spec.confirm_seeds:
            return "confirm"
        return "done"

    def _refresh(self, label: str) -> None:
        bar = self._bars.get(label)
        if bar is None:
            return
        s = self.state[label]
        bar.n = s.search + s.confirm
        bar.set_postfix_str(
            f"best {self.metric}={_fmt(s.best)}{self._spent(s)} | {self.phase(label)}",
            refresh=False,
        )
        bar.refresh()

    def __call__(self, event: Event) -> None:
        if not self._count(event) or self.quiet:
            return
        if self.tty:
            self._refresh(event.optimizer)
            return
        s = self.state[event.optimizer]
        where = f"#{event.trial_number}" if event.phase == "search" else f"seed {event.seed}"
        value = f"{self.metric}={_fmt(event.value)}" if event.status == "complete" else ""
        reason = f" ({event.reason})" if event.reason and event.status != "complete" else ""
        took = f" {event.wall_time:.1f}s" if event.wall_time is not None else ""
        print(
            f"[{self.spec.name}] {event.optimizer} {event.phase} {where} {event.status}"
            f"{' ' + value if value else ''}{reason}{took} | search {s.search}/{self.spec.trials or '-'}"
            f"{self._spent(s)} confirm {s.confirm}/{self.spec.confirm_seeds} best {_fmt(s.best)}",
            file=self.stream,
            flush=True,
        )

    def _spent(self, s: _State) -> str:
        seconds = self.budget.seconds
        return "" if seconds is None else f" ({s.seconds:.0f}/{seconds:g} s)"

    def close(self) -> None:
        for bar in self._bars.values():
            bar.close()
        self._bars.clear()


def events_from_rows(rows: list[dict[str, Any]]) -> list[Event]:
    """`Event`s from `ResultsDB.finished_runs` rows."""
    return [
        Event(
            optimizer=r["optimizer"],
            phase=r["phase"],
            status=r["status"],
            value=r["value"],
            trial_number=r["trial_number"],
            seed=r["seed"],
            wall_time=r["wall_time"],
            reason=r["reason"],
            run_id=r["id"],
        )
        for r in rows
    ]


class Poller:
    """Feeds a progress display the runs that finished since the last call.

    Runs finish out of id order when several workers run at once: each call reads from the
    floor below which every run had finished at the previous call, and the display drops the
    runs it has already counted.
    """

    def __init__(self, db: Any, campaign: str, progress: Progress) -> None:
        self.db = db
        self.campaign = campaign
        self.progress = progress
        self.cursor = 0

    def __call__(self) -> None:
        floor = self.db.unfinished_floor(self.campaign)  # read first: later finishers come below
        for event in events_from_rows(self.db.finished_runs(self.campaign, self.cursor)):
            self.progress(event)
        self.cursor = floor
