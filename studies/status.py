"""Where a campaign stands: per optimizer, its phase, trial counts, best value and confirm runs."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.budget import Budget, Spend, count_trials, search_spend
from studies.results import ResultsDB
from studies.storage import optuna_storage

__all__ = ["campaign_status", "search_progress"]


def campaign_status(storage: str, campaign: str) -> list[dict[str, Any]]:
    """One dict per optimizer of `campaign` (in spec order).

    Keys: optimizer, phase (search | confirm | sweep | done), budget (trials; None with only a
    seconds budget), search_done (trials that count against the budget and have finished),
    complete, pruned, failed, running (incl. queued), best (best complete value, NaN if none),
    confirm_done, confirm_seeds, sweep_done, sweep_runs (the controlled sweeps' runs done and
    asked for, `studies.sweep`), budget_seconds (None without one) and spent_seconds (the
    finished search runs' wall time, studies/budget.py).
    """
    db = ResultsDB(storage)
    info = db.campaign(campaign)
    if info is None:
        raise KeyError(f"no campaign {campaign!r} in this storage")
    spec = info["spec"]
    limits = Budget.from_normalized(spec)
    budget = limits.trials
    spend = search_spend(storage, campaign)
    seeds = int(spec["confirm"]["seeds"])
    claims = db.claims(campaign, "confirm")
    sweep_claims = db.claims(campaign, "sweep")
    sweeps = spec.get("sweep") or []
    rdb = optuna_storage(storage, create_tables=False)
    out = []
    try:
        for label in spec["optimizers"]:
            try:
                study = optuna.load_study(study_name=f"{campaign}/{label}", storage=rdb)
                trials = study.get_trials(deepcopy=False)
            except KeyError:
                trials = []
            counts = {s: 0 for s in ("complete", "pruned", "failed", "running")}
            done = 0
            best = math.nan
            for t in trials:
                if t.state == TrialState.COMPLETE:
                    counts["complete"] += 1
                    v = t.value
                    if v is not None and (
                        math.isnan(best)
                        or (v > best if info["direction"] == "maximize" else v < best)
                    ):
                        best = v
                elif t.state == TrialState.PRUNED:
                    counts["pruned"] += 1
                elif t.state == TrialState.FAIL:
                    counts["failed"] += 1
                else:
                    counts["running"] += 1
            # Budget used by finished trials: each retry chain counts once, when it has ended.
            retried = {n for t in trials for n in t.system_attrs.get("retry_history", [])}
            done = sum(1 for t in trials if t.state.is_finished() and t.number not in retried)
            confirm_done = sum(
                1 for c in claims if c["optimizer"] == label and c["status"] == "done"
            )
            sweep_done = sum(
                1 for c in sweep_claims if c["optimizer"] == label and c["status"] == "done"
            )
            sweep_runs = sum(
                len(s["values"]) * int(s["seeds"]) for s in sweeps if s["optimizer"] == label
            )
            if not count_trials(trials, spend.get(label)).search_finished(limits):
                phase = "search"
            elif counts["complete"] and confirm_done < seeds:
                phase = "confirm"
            elif counts["complete"] and sweep_done < sweep_runs:
                phase = "sweep"
            else:
                phase = "done"
            out.append(
                {
                    "optimizer": label,
                    "phase": phase,
                    "budget": budget,
                    "search_done": done if budget is None else min(done, budget),
                    **counts,
                    "best": best,
                    "confirm_done": confirm_done,
                    "confirm_seeds": seeds,
                    "sweep_done": sweep_done,
                    "sweep_runs": sweep_runs,
                    "budget_seconds": limits.seconds,
                    "search_progress": search_progress(
                        done, limits, spend.get(label, Spend()).seconds
                    ),
                    "spent_seconds": spend.get(label, Spend()).seconds,
                }
            )
    finally:
        rdb.engine.dispose()
    return out


def search_progress(done: int, budget: Budget, spent: float) -> str:
    """Trials done of the budget, as shown: "5/8", "5 trials, 41/60 s" or "5/8, 41/60 s"."""
    trials = f"{done}/{budget.trials}" if budget.trials is not None else f"{done} trials"
    if budget.seconds is None:
        return trials
    return f"{trials}, {_seconds(spent)}/{_seconds(budget.seconds)} s"


def _seconds(value: float) -> str:
    return f"{value:.0f}" if value >= 100 else f"{value:.3g}"
