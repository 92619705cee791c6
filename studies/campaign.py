"""A campaign in its storage: creating its tables and studies once, and telling when it is done.

A campaign is one Optuna study per optimizer (`<campaign>/<optimizer>`), created once before any
worker starts, each tagged with the campaign's user attrs and with the optimizer's default
config enqueued as its first trial. Both backends start with `prepare_campaign` and end when
`campaign_complete` says so.
"""

from __future__ import annotations

import warnings
from typing import Any

import optuna
from optuna.trial import TrialState

from studies.budget import Budget, count_trials, search_spend
from studies.growth import GrowthRefused, grow_stored_spec, growth
from studies.results import ResultsDB
from studies.space_check import check_space_values
from studies.spec import CampaignSpec
from studies.storage import CampaignLock, check_storage_url, connect_check, mask_url, optuna_storage
from studies.sweep import check_sweeps, sweeps_complete

__all__ = ["CampaignError", "campaign_complete", "prepare_campaign", "quiet_optuna"]


class CampaignError(ValueError):
    """A campaign that cannot run as asked (conflicting spec, failed workers, ...)."""


def quiet_optuna() -> None:
    """Silence Optuna's per-trial logging and its experimental-feature warnings.

    Trials are reported by the project's own progress lines; heartbeats and their retry
    callback are marked experimental, and the project relies on them knowingly.
    """
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def prepare_campaign(spec: CampaignSpec, storage: str) -> dict[str, Any]:
    """Check the spec and storage, then create the campaign's tables and studies (idempotent).

    Runs under the campaign lock, so it is safe when several processes start at once. Raises
    `SpecError`, `StorageError` or `CampaignError` (a different spec under the same name).
    Returns the campaign's description (metric, direction, study names).
    """
    quiet_optuna()
    spaces = spec.load_spaces()
    for label, space in spaces.items():
        check_space_values(spec.source, label, space)
    check_sweeps(spec, spaces)
    workload = spec.build_workload()
    check_storage_url(storage)
    connect_check(storage)
    db = ResultsDB(storage)
    normalized = spec.normalized()
    with CampaignLock(storage, spec.name):
        rdb = optuna_storage(storage, create_tables=True)
        db.create_tables()
        try:
            grow_stored_spec(storage, spec)  # a spec that only grows the campaign continues it
            db.register_campaign(
                name=spec.name,
                spec_hash=spec.spec_hash,
                spec=normalized,
                workload=spec.workload,
                metric=workload.metric,
                direction=workload.direction,
            )
        except ValueError as exc:  # GrowthRefused names what changed
            raise CampaignError(str(exc)) from None
        attrs_grown = {
            "spec_hash": spec.spec_hash,
            "spec": normalized,
            "budget_trials": spec.trials,
            **({"budget_seconds": spec.seconds} if spec.seconds is not None else {}),
        }
        for label, space in spaces.items():
            name = spec.study_name(label)
            try:
                study = optuna.load_study(study_name=name, storage=rdb)
            except KeyError:
                study = None
            if study is not None:
                stored = study.user_attrs.get("spec_hash")
                if stored != spec.spec_hash:
                    try:  # the campaign row grew above; its studies follow (and were checked)
                        growth(study.user_attrs.get("spec") or {}, normalized)
                    except GrowthRefused as exc:
                        raise CampaignError(
                            f"study {name!r} already exists in {mask_url(storage)} with a "
                            f"different spec (stored hash {stored}, this spec "
                            f"{spec.spec_hash}): {exc}"
                        ) from None
                    for key, value in attrs_grown.items():
                        study.set_user_attr(key, value)
                if study.metric_names != [workload.metric]:  # a study made before they were set
                    study.set_metric_names([workload.metric])
                continue
            study = optuna.create_study(study_name=name, storage=rdb, direction=workload.direction)
            # The dashboard's plots and best-trial card name the metric instead of "Objective 0".
            study.set_metric_names([workload.metric])
            attrs = {
                "campaign": spec.name,
                "workload": spec.workload,
                "optimizer": label,
                "optimizer_class": space.optimizer,
                "metric": workload.metric,
                "direction": workload.direction,
                **attrs_grown,
            }
            for key, value in attrs.items():
                study.set_user_attr(key, value)
            study.enqueue_trial(space.default_params(), user_attrs={"default_config": True})
        rdb.engine.dispose()
    return {
        "metric": workload.metric,
        "direction": workload.direction,
        "studies": [spec.study_name(label) for label in spaces],
    }


def campaign_complete(spec: CampaignSpec, storage: str) -> bool:
    """Whether every search trial, confirm run and sweep run of the campaign has finished."""
    rdb = optuna_storage(storage, create_tables=False)
    db = ResultsDB(storage)
    claims = db.claims(spec.name, "confirm")
    with_best = set()
    budget = Budget.of(spec)
    spend = search_spend(storage, spec.name) if spec.seconds else {}
    try:
        for label in spec.labels:
            study = optuna.load_study(study_name=spec.study_name(label), storage=rdb)
            trials = study.get_trials(deepcopy=False)
            if not count_trials(trials, spend.get(label)).search_finished(budget):
                return False
            has_complete = any(t.state == TrialState.COMPLETE for t in trials)
            if has_complete:
                with_best.add(label)
                done = sum(
                    1
                    for c in claims
                    if c["optimizer"] == label
                    and c["status"] == "done"
                    and 0 <= c["slot"] < spec.confirm_seeds
                )
                if done < spec.confirm_seeds:
                    return False
        return sweeps_complete(spec, db.claims(spec.name, "sweep"), with_best)
    finally:
        rdb.engine.dispose()
