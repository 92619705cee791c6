"""Where a campaign stands: per optimizer, its phase, trial counts, best value and confirm runs."""

from __future__ import annotations

import math
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.results import ResultsDB
from studies.storage import optuna_storage

__all__ = ["campaign_status"]


def campaign_status(storage: str, campaign: str) -> list[dict[str, Any]]:
    """One dict per optimizer of `campaign` (in spec order).

    Keys: optimizer, phase (search | confirm | sweep | done), budget, search_done (trials that
    count against the budget and have finished), complete, pruned, failed, running (incl.
    queued), best (best complete value, NaN if none), confirm_done, confirm_seeds, sweep_done,
    sweep_runs (the controlled sweeps' runs done and asked for, `studies.sweep`).
    """
    db = ResultsDB(storage)
    info = db.campaign(campaign)
    if info is None:
        raise KeyError(f"no campaign {campaign!r} in this storage")
    spec = info["spec"]
    budget = int(spec["budget"]["trials"])
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
            if done < budget or counts["running"]:
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
                    "search_done": min(done, budget),
                    **counts,
                    "best": best,
                    "confirm_done": confirm_done,
                    "confirm_seeds": seeds,
                    "sweep_done": sweep_done,
                    "sweep_runs": sweep_runs,
                }
            )
    finally:
        rdb.engine.dispose()
    return out
