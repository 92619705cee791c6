"""One trial, the same for both backends: start its run row, run it, classify and record how it ended.

`run_trial` runs the workload once (curves streamed to `hvadam_curves`) and turns however it ended
into an `Outcome`:

- complete: a finite objective value;
- pruned (search only): a pruner's `optuna.TrialPruned`, a divergence (`Diverged`: a NaN or
  infinite loss) or a non-finite objective value, with the reason;
- failed: any other exception, with its reason and traceback (passwords masked); a confirm run
  that diverges also fails, since nothing may prune it.

`record` writes the outcome into the run's `hvadam_runs` row, and `trial_user_attrs` gives the
user attrs its Optuna trial carries. What each backend does with an outcome is its own business:
the Optuna backend returns the value or raises for `Study.optimize`, the Ray backend reports it to
Tune. `KeyboardInterrupt` and other `BaseException`s are never classified: they propagate.
"""

from __future__ import annotations

import math
import time
import traceback
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import optuna

from studies.results import ResultsDB
from studies.stopping import check_stop
from studies.storage import mask_text

if TYPE_CHECKING:
    import torch

    from search_spaces import SearchSpace
    from studies.spec import CampaignSpec
    from studies.workloads import EpochReport, RunResult, Workload

__all__ = [
    "TRACEBACK_ATTR_LIMIT",
    "Outcome",
    "TrialFailed",
    "record",
    "run_trial",
    "start_run",
    "trial_user_attrs",
]

TRACEBACK_ATTR_LIMIT = 8000  # characters of a traceback kept in an Optuna user attr


class TrialFailed(Exception):
    """Raised into `Study.optimize` for a failed trial (its reason and traceback are recorded)."""


@dataclass(frozen=True)
class Outcome:
    """How one run ended."""

    status: str  # complete | pruned | failed | stopped
    value: float | None = None  # the objective, when complete (or stopped, with its last value)
    reason: str | None = None
    traceback: str | None = None
    result: RunResult | None = None  # what the workload returned, if it returned
    wall_time: float = 0.0

    def stopped(self, reason: str) -> Outcome:
        """This outcome as a run a scheduler ended, which is never a full-budget result."""
        return replace(self, status="stopped", reason=reason)


def start_run(
    db: ResultsDB,
    spec: CampaignSpec,
    label: str,
    space: SearchSpace,
    params: Mapping[str, Any],
    *,
    trial_number: int | None,
    phase: str,
    seed: int,
    device: str,
) -> int:
    """Open the `hvadam_runs` row of one run (status `running`); returns its id."""
    import hvadam

    hp = space.to_hyperparameters(dict(params))
    return db.start_run(
        campaign=spec.name,
        study=spec.study_name(label),
        optimizer=label,
        trial_number=trial_number,
        phase=phase,
        seed=seed,
        device=device,
        hyperparameters=hvadam.resolve_hyperparameters(space.optimizer, **hp),
    )


def run_trial(
    db: ResultsDB,
    workload: Workload,
    space: SearchSpace,
    params: Mapping[str, Any],
    *,
    run_id: int,
    seed: int,
    device: str,
    phase: str = "search",
    on_report: Callable[[EpochReport], None] | None = None,
    flush_interval: float = 5.0,
    run_options: Mapping[str, Any] | None = None,
) -> Outcome:
    """Run the workload once with `params` (a search-space sample) and classify how it ended.

    `on_report` sees every epoch's report and may raise `optuna.TrialPruned`. Curves are written
    every `flush_interval` seconds and at the end (0: at every epoch). `run_options` go to
    `Workload.run` as keywords (the Ray backend's `resume`).
    """
    import hvadam
    from studies.workloads import Diverged, OptimizerFactory

    hp = space.to_hyperparameters(dict(params))
    buffer: list[tuple[int, str, float]] = []
    last_flush = time.monotonic()

    def flush() -> None:
        nonlocal last_flush
        if buffer:
            db.add_curves(run_id, buffer)
            buffer.clear()
        last_flush = time.monotonic()

    def on_epoch(rep: EpochReport) -> None:
        check_stop()  # a worker asked to stop whose KeyboardInterrupt was lost
        if make_optimizer.schedule is not None and not make_optimizer.schedule_applied:
            raise RuntimeError(_unapplied(workload))  # at the first report, not after the run
        buffer.extend((rep.epoch, name, value) for name, value in rep.metrics.items())
        # Long runs stream curves (a live dashboard sees them); short ones write once.
        if time.monotonic() - last_flush > flush_interval:
            flush()
        if on_report is not None:
            on_report(rep)

    def build(
        model_params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]],
    ) -> torch.optim.Optimizer:
        return hvadam.create_optimizer(space.optimizer, model_params, **hp)

    # Carries the searched learning-rate schedule to the workload's `lr_schedule` call.
    make_optimizer = OptimizerFactory(build, space.to_schedule(dict(params)))

    pruned = "pruned" if phase == "search" else "failed"  # nothing prunes a confirm run
    start = time.perf_counter()
    result: RunResult | None = None
    try:
        try:
            result = workload.run(
                make_optimizer, seed=seed, device=device, on_epoch=on_epoch, **(run_options or {})
            )
        finally:
            wall = time.perf_counter() - start
            flush()
    except optuna.TrialPruned as exc:
        return Outcome(pruned, reason=str(exc) or "pruned", wall_time=wall)
    except Diverged as exc:
        return Outcome(
            pruned, reason=f"diverged at epoch {exc.epoch}: {exc.detail}", wall_time=wall
        )
    except Exception as exc:
        return Outcome(
            "failed",
            reason=mask_text(f"{type(exc).__name__}: {exc}"),
            traceback=mask_text(traceback.format_exc()),
            wall_time=wall,
        )
    if make_optimizer.schedule is not None:
        if not make_optimizer.schedule_applied:
            return Outcome("failed", reason=_unapplied(workload), wall_time=wall)
        result.extras = {**(result.extras or {}), "schedule": make_optimizer.schedule}
    value = float(result.value)
    if not math.isfinite(value):
        return Outcome(
            pruned, reason=f"non-finite objective value {value}", result=result, wall_time=wall
        )
    return Outcome("complete", value=value, result=result, wall_time=wall)


def _unapplied(workload: Workload) -> str:
    return (
        f"the campaign searches a learning-rate schedule (spec key `schedule:`), but workload "
        f"{workload.name!r} never applied it: call studies.workloads.lr_schedule(make_optimizer, "
        "optimizer, total_steps) and step it after each optimizer step (docs/schedules.md), or "
        "remove `schedule:` from the spec"
    )


def record(
    db: ResultsDB, run_id: int, outcome: Outcome, *, extras: Mapping[str, Any] | None = None
) -> None:
    """Write `outcome` into the run's row; `extras` are added to the workload's own."""
    result = outcome.result
    merged = None if result is None else result.extras
    if merged is not None or extras:
        merged = {**(merged or {}), **(extras or {})}
    db.finish_run(
        run_id,
        status=outcome.status,
        wall_time=outcome.wall_time,
        value=outcome.value if outcome.status in ("complete", "stopped") else None,
        reason=outcome.reason,
        traceback=outcome.traceback,
        metrics=None if result is None else result.metrics,
        extras=merged,
    )


def trial_user_attrs(outcome: Outcome) -> dict[str, Any]:
    """The user attrs an Optuna trial carries for `outcome` (why it was pruned or failed)."""
    if outcome.status in ("pruned", "stopped"):
        return {"prune_reason": outcome.reason}
    if outcome.status == "failed":
        return {
            "fail_reason": outcome.reason,
            "traceback": (outcome.traceback or "")[-TRACEBACK_ATTR_LIMIT:],
        }
    return {}
