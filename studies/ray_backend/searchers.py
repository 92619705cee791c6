"""The searchers of a Ray run (in the driver): one for the campaign, one per optimizer's study.

`CampaignSearch` hands each new trial to the optimizer with the fewest trials (among those
whose budget, studies/budget.py, lets one start) and, once an optimizer's search is done,
queues its confirm runs. `StudySearch` is Ray's `OptunaSearch` on
one campaign study; it translates how each Ray trial ended into the Optuna trial's state (the
run row itself is written by the trial, `studies.trial`), and fails and requeues lost trials.
"""

from __future__ import annotations

import contextlib
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState
from ray.tune.search import Searcher
from ray.tune.search.optuna import OptunaSearch

from studies.budget import Budget, Spend, can_start
from studies.events import Counts
from studies.ray_backend.session import LABEL_KEY, METRIC, PHASE_KEY
from studies.results import ResultsDB, is_finite_number
from studies.samplers import make_sampler
from studies.seeds import search_seed
from studies.spec import CampaignSpec
from studies.storage import optuna_storage, with_retries
from studies.worker import MAX_RETRY

__all__ = ["CampaignSearch", "StudySearch"]


class StudySearch(OptunaSearch):
    """Ray's OptunaSearch on one campaign study, recording how each trial really ended."""

    def __init__(
        self,
        *,
        spec: CampaignSpec,
        label: str,
        storage: str,
        scheduler: str,
        direction: str,
        sampler_seed: int,
        scheduler_stops: set[str],
    ) -> None:
        self.spec = spec
        self.scheduler_stops = scheduler_stops  # Ray trial ids the scheduler stopped
        self.label = label
        self.storage_url = storage
        self.scheduler_name = scheduler
        self.search_space = spec.load_spaces()[label]
        self.max_epochs = spec.build_workload().max_epochs
        self.metric_name = spec.build_workload().metric
        super().__init__(
            space=self.search_space.suggest,
            metric=METRIC,
            mode="max" if direction == "maximize" else "min",
            sampler=make_sampler(
                spec.sampler, self.search_space, sampler_seed, spec.sampler_options
            ),
            study_name=spec.study_name(label),
            storage=optuna_storage(storage, create_tables=False),
        )

    def suggest(self, trial_id: str) -> dict[str, Any] | None:
        config = super().suggest(trial_id)
        trial = self._ot_trials[trial_id]
        # A retried trial inherits its original's seed, as with the Optuna backend.
        if "seed" not in trial.user_attrs:
            trial.set_user_attr("seed", search_seed(self.spec.seed, trial.number))
        trial.set_user_attr("backend", "ray")
        trial.set_user_attr("ray_trial_id", trial_id)
        return config

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        epoch = result.get("hvadam_epoch")
        value = result.get(METRIC)
        trial = self._ot_trials.get(trial_id)
        if trial is None or epoch is None or result.get("hvadam_status"):
            return
        if is_finite_number(value):
            with contextlib.suppress(Exception):  # a step reported before (a PBT resume)
                trial.report(float(value), int(epoch))

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        self.finish(trial_id, result, error)

    def finish(self, trial_id: str, result: dict[str, Any] | None, error: bool) -> bool:
        """Record how the trial ended in its Optuna trial; True when it was queued again."""
        if trial_id in self._completed_trials or trial_id not in self._ot_trials:
            return False
        study = self._ot_study
        assert study is not None  # set by OptunaSearch.__init__
        trial = self._ot_trials[trial_id]
        result = result or {}
        status = result.get("hvadam_status")
        value: Any = result.get(METRIC)
        state, values = TrialState.FAIL, None
        if status == "complete" and not error:
            state, values = TrialState.COMPLETE, float(value)
        elif status in ("pruned", "stopped") and not error:
            state = TrialState.PRUNED  # the trial set its own reason attrs
        elif status == "failed":
            state = TrialState.FAIL
        elif error or not result or trial_id not in self.scheduler_stops:
            # Lost (its Ray worker died) or ended by Tune itself, not by the scheduler:
            # failed and queued again, as the Optuna backend does with a lost worker.
            reason = "the Ray trial ended with an error (its worker died?)"
            if not result:
                reason = "the Ray trial was removed before it reported"
            elif not error:
                reason = "the Ray trial was ended before its outcome (interrupted)"
            trial.set_user_attr("fail_reason", reason)
            retried = len(trial.system_attrs.get("retry_history", [])) < MAX_RETRY
            self._finish_row(
                result,
                "failed",
                reason + ("; the trial is retried" if retried else "; retries exhausted"),
            )
            with_retries(lambda: study.tell(trial, None, state=TrialState.FAIL))
            self._completed_trials.add(trial_id)
            if retried:
                frozen = study._storage.get_trial(trial._trial_id)
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                    retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                retry(study, frozen)
            return retried
        else:
            state = TrialState.PRUNED
            epoch = int(result.get("hvadam_epoch", 0))
            shown = f" ({self.metric_name}={value:.6g})" if is_finite_number(value) else ""
            reason = (
                f"{self.scheduler_name}: stopped by the scheduler at epoch {epoch} of "
                f"{self.max_epochs}{shown}; not a full-budget result"
            )
            if is_finite_number(value) and epoch:
                # Tune does not pass the result that stopped a trial to on_trial_result.
                with contextlib.suppress(Exception):
                    trial.report(float(value), epoch)
            trial.set_user_attr("stopped_by", self.scheduler_name)
            trial.set_user_attr("stopped_at_epoch", epoch)
            trial.set_user_attr("prune_reason", reason)
            self._finish_row(result, "stopped", reason)
        with_retries(lambda: study.tell(trial, values, state=state))
        self._completed_trials.add(trial_id)
        return False

    def _finish_row(self, result: dict[str, Any], status: str, reason: str) -> None:
        run_id = result.get("hvadam_run_id")
        if run_id is not None:
            ResultsDB(self.storage_url).finish_if_running(
                int(run_id), status=status, reason=reason, wall_time=result.get("hvadam_wall")
            )

    # Tune checkpoints its searcher into the experiment directory; this one's state is the
    # Optuna study itself (in the campaign's storage), so nothing is written there (and
    # with it, no storage URL).
    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(b"")

    def restore(self, checkpoint_path: str) -> None:
        return None


class CampaignSearch(Searcher):
    """One searcher for the whole campaign.

    Each new search trial goes to the optimizer with the fewest trials so far (optimizers
    advance together), whose study searcher samples it. When an optimizer's search has
    finished, its confirm runs follow as trials too (one confirm run each, claimed in the
    database), so they use the warm workers and overlap the other optimizers' search.
    """

    def __init__(
        self,
        subs: dict[str, Any],
        asks: dict[str, int],
        used: dict[str, int],
        confirm_seeds: int,
        seconds: float | None = None,
        spend: Callable[[], dict[str, Spend]] | None = None,
    ) -> None:
        """`asks[label]`: trials that label may still start (its trial budget; a large number
        for none); `seconds` and `spend` (the finished search runs' wall time, read from the
        database): the seconds budget, gated as the Optuna backend's workers gate it."""
        mode = next(iter(subs.values())).mode
        super().__init__(metric=METRIC, mode=mode)
        self.subs = subs
        self.asks = dict(asks)
        self.used = dict(used)
        self.running = dict.fromkeys(subs, 0)
        self.order = list(subs)
        self.labels: dict[str, str] = {}
        self.confirm_seeds = confirm_seeds
        self.seconds = seconds
        self.spend = spend
        self.started: dict[str, float] = {}  # trial id -> when it was suggested (time.time())
        self.confirm_queue = [
            label for label in self.order if not self._open(label) for _ in range(confirm_seeds)
        ]

    def _open(self, label: str, spend: dict[str, Spend] | None = None) -> bool:
        """Whether a new search trial of `label` may start (its trials and seconds budgets)."""
        if self.asks[label] <= 0:
            return False
        if self.seconds is None or self.spend is None:
            return True
        spend = self.spend() if spend is None else spend
        now = time.time()
        counts = Counts(running=self.running[label])
        counts.elapsed = [now - t for i, t in self.started.items() if self.labels[i] == label]
        counts.spend = spend.get(label, Spend())
        return can_start(Budget(seconds=self.seconds), counts)

    def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
        return True

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:  # type: ignore[override]
        if self.confirm_queue:
            return {LABEL_KEY: self.confirm_queue.pop(0), PHASE_KEY: "confirm"}
        spend = self.spend() if self.seconds is not None and self.spend is not None else {}
        open_labels = [label for label in self.order if self._open(label, spend)]
        if not open_labels:
            # Nothing to search; wait while searches run (their confirm runs follow).
            return None if any(self.running.values()) else Searcher.FINISHED
        label = min(open_labels, key=lambda lab: (self.used[lab], self.order.index(lab)))
        config = self.subs[label].suggest(trial_id)
        self.asks[label] -= 1
        self.used[label] += 1
        self.running[label] += 1
        self.labels[trial_id] = label
        self.started[trial_id] = time.time()
        return {**config, LABEL_KEY: label, PHASE_KEY: "search"}

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.labels:
            self.subs[self.labels[trial_id]].on_trial_result(trial_id, result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        label = self.labels.get(trial_id)
        if label is None:
            return  # a confirm trial
        if self.subs[label].finish(trial_id, result, error):
            self.asks[label] += 1  # the retry (queued in the study) still has to run
        self.running[label] -= 1
        del self.labels[trial_id]
        self.started.pop(trial_id, None)
        if not self.running[label] and not self._open(label):
            self.confirm_queue.extend([label] * self.confirm_seeds)

    def save(self, checkpoint_path: str) -> None:
        Path(checkpoint_path).write_bytes(b"")

    def restore(self, checkpoint_path: str) -> None:
        return None
