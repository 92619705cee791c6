"""Search budgets per optimizer: a number of trials, compute seconds, or both.

A spec gives `budget: {trials: N}`, `budget: {seconds: S}` or both (whichever runs out first).
Every gate on the search phase (the Optuna backend's workers, `campaign_complete`, the Ray
backend's searcher, `hvadam status`, the progress display) asks this module.

Trials: a new search trial starts while fewer than N trials count against the budget (a
heartbeat retry of a lost trial does not count, and a queued one always runs).

Seconds: an optimizer's *spend* is the summed `wall_time` of its finished search runs
(`hvadam_runs`, phase search; a lost run without a measured time counts nothing, its retry
counts). A new trial of that optimizer starts only while its *projected* spend is below S:

    projected = spend + sum over its running trials of max(elapsed, longest)

where `elapsed` is the time since the running trial's Optuna trial was created (its
`datetime_start`, written under the campaign lock when the trial is asked for, so every worker
sees it before the run row exists) and `longest` is the longest finished search run of that
optimizer. Before any run of the optimizer has finished there is no estimate: one trial of it
runs at a time. Its search has finished when none of its trials runs and the spend is >= S.

The bound: the trial that starts last sees a projected spend below S, so the final spend is
below S plus that trial's own time, plus, for each trial running beside it, how much longer
it ran than `max(elapsed, longest)`. With trials no longer than the longest one seen (trials of
one optimizer with the same epochs take about the same time) that is *never more than one
trial over*, however many workers run; with one worker it holds for any trial times. (The
naive rule "spend < S" overshoots by up to one trial per worker.) The spend is never below S
when the search ends: the gate only stops for good once nothing runs and the spend reached S.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from optuna.trial import TrialState

from studies.results.schema import RunRow
from studies.storage import get_engine, read_connection

if TYPE_CHECKING:
    from studies.events import Counts

__all__ = [
    "Budget",
    "Spend",
    "can_start",
    "count_trials",
    "projected_seconds",
    "search_finished",
    "search_spend",
]


@dataclass(frozen=True)
class Budget:
    """One optimizer's search budget: trials, seconds or both (None: no such limit)."""

    trials: int | None = None
    seconds: float | None = None

    @classmethod
    def of(cls, spec: Any) -> Budget:
        """The budget of a `CampaignSpec`."""
        return cls(trials=spec.trials, seconds=getattr(spec, "seconds", None))

    @classmethod
    def from_normalized(cls, spec: Mapping[str, Any]) -> Budget:
        """The budget of a stored (normalized) spec, as `hvadam_campaigns.spec` holds it."""
        budget = spec.get("budget") or {}
        trials, seconds = budget.get("trials"), budget.get("seconds")
        return cls(
            trials=None if trials is None else int(trials),
            seconds=None if seconds is None else float(seconds),
        )

    def describe(self) -> str:
        parts = [f"{self.trials} trials"] if self.trials is not None else []
        if self.seconds is not None:
            parts.append(f"{self.seconds:g} s of search")
        return " or ".join(parts) + (", whichever runs out first" if len(parts) > 1 else "")


@dataclass(frozen=True)
class Spend:
    """An optimizer's finished search runs: summed and longest wall time, how many were timed."""

    seconds: float = 0.0
    timed: int = 0
    longest: float = 0.0


def search_spend(url: str, campaign: str) -> dict[str, Spend]:
    """optimizer label -> `Spend` of its finished search runs (one grouped query)."""
    with read_connection(get_engine(url)) as conn:
        rows = conn.execute(
            sa.select(
                RunRow.optimizer,
                sa.func.sum(sa.func.coalesce(RunRow.wall_time, 0.0)),
                sa.func.count(RunRow.wall_time),
                sa.func.max(RunRow.wall_time),
            )
            .where(
                RunRow.campaign == campaign,
                RunRow.phase == "search",
                RunRow.status != "running",
            )
            .group_by(RunRow.optimizer)
        ).all()
    return {
        str(label): Spend(float(total or 0.0), int(timed or 0), float(longest or 0.0))
        for label, total, timed, longest in rows
    }


def count_trials(
    trials: Iterable[Any], spend: Spend | None = None, now: float | None = None
) -> Counts:
    """The `Counts` of one study's trials (and, for a seconds budget, its `Spend`)."""
    from studies.events import Counts

    now = time.time() if now is None else now
    counts = Counts()
    for t in trials:
        if "failed_trial" not in t.system_attrs:
            counts.used += 1
        if t.state == TrialState.WAITING:
            counts.waiting += 1
        elif t.state == TrialState.RUNNING:
            counts.running += 1
            # Optuna writes datetime_start as naive local time, as `timestamp()` reads it.
            start = t.datetime_start.timestamp() if t.datetime_start is not None else now
            counts.elapsed.append(max(0.0, now - start))
        else:
            counts.finished += 1
    if spend is not None:
        counts.spend = spend
    return counts


def projected_seconds(counts: Counts) -> float | None:
    """Spend plus each running trial's max(elapsed, longest); None while nothing is timed yet
    and a trial runs (no estimate of a trial's time: the seconds gate stays closed)."""
    spend = counts.spend
    if not counts.elapsed:
        return spend.seconds
    if spend.timed == 0:
        return None
    return spend.seconds + sum(max(e, spend.longest) for e in counts.elapsed)


def can_start(budget: Budget, counts: Counts) -> bool:
    """Whether a new search trial of this optimizer may start now (see the module docstring)."""
    if budget.trials is not None and not counts.waiting and counts.used >= budget.trials:
        return False
    if budget.seconds is not None:
        projected = projected_seconds(counts)
        if projected is None or projected >= budget.seconds:
            return False
    return True


def search_finished(budget: Budget | int, counts: Counts) -> bool:
    """Whether the optimizer's search is over: nothing of it runs and no trial may start."""
    if not isinstance(budget, Budget):
        budget = Budget(trials=int(budget))
    return counts.running == 0 and not can_start(budget, counts)


def warm_up(spaces: Mapping[str, Any]) -> None:
    """Build each optimizer once on a throwaway parameter, before any trial is timed.

    The first torch optimizer a process builds pays for torch's lazy imports (seconds); without
    this, that cost would be charged to whichever optimizer's trial happens to run first.
    """
    import torch

    import hvadam

    for space in spaces.values():
        try:
            hp = space.to_hyperparameters(dict(space.default_params()))
            hvadam.create_optimizer(space.optimizer, [torch.nn.Parameter(torch.zeros(1))], **hp)
        except Exception:  # only a warm-up: the trial itself reports any problem
            continue
