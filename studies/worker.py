"""The Optuna backend's worker: one process's share of a campaign, search trials then confirm runs.

Workers (processes, possibly on other machines) share one storage:

- search: a worker counts each study's trials and ranks the optimizers, fewest first (so
  optimizers advance together, whatever their speed); then, under a campaign-wide lock, it
  counts the first one with room again and asks Optuna for its trial. The lock ends once the
  trial exists, so no optimizer ever gets more than its budget.
  A trial counts against the budget unless it is a heartbeat retry of an earlier one.
- confirm: when an optimizer's search is finished, its best config is re-run on K fresh seeds;
  each (optimizer, seed) is a claim row with a unique constraint, so it runs exactly once.
- faults: how a run ends is decided by `studies.trial` (pruned with its reason, failed with its
  traceback); a worker that dies stops heart-beating, and its trial is failed and retried
  (`RetryHeartbeatStaleTrialCallback`), its confirm claim taken over.

Seeds: `studies.seeds`.
"""

from __future__ import annotations

import functools
import math
import os
import sys
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from search_spaces import SearchSpace
from studies.artifacts import ARTIFACTS_ENV, resolve_artifacts, upload_checkpoint
from studies.budget import Budget, can_start, count_trials, search_spend, warm_up
from studies.campaign import CampaignError, quiet_optuna
from studies.events import Counts, Event
from studies.growth import check_spec_current, release_superseded, spec_mismatch
from studies.live import LiveNotes
from studies.results import ResultsDB
from studies.results.claims import confirmed, open_slots
from studies.run_settings import (
    MAX_RETRY,
    RunnerConfig,
    check_device,
    check_run_settings,
    resolve_device,
)
from studies.samplers import make_pruner, make_sampler
from studies.seeds import confirm_seed, sampler_seed, search_seed
from studies.spec import CampaignSpec
from studies.stopping import check_stop, stop_on_signals
from studies.storage import (
    CampaignLock,
    check_storage_identity,
    mask_text,
    mask_url,
    optuna_storage,
    storage_identity,
    with_retries,
)
from studies.sweep import sweep_claims, sweep_step, sweeps_done
from studies.trial import Outcome, TrialFailed, record, run_trial, start_run, trial_user_attrs

if TYPE_CHECKING:
    from studies.workloads import EpochReport


__all__ = [
    "MAX_RETRY",
    "Counts",
    "Event",
    "RunnerConfig",
    "Worker",
    "check_device",
    "check_run_settings",
    "resolve_device",
]


@dataclass
class Worker:
    """One process's share of a campaign: search trials, then confirm runs, until all is done."""

    spec: CampaignSpec
    config: RunnerConfig
    on_event: Callable[[Event], None] | None = None
    on_idle: Callable[[], None] | None = None
    _events: list[Event] = field(default_factory=list, init=False)
    # Seconds between curve writes of a running trial (the Ray backend writes every epoch,
    # since a scheduler may stop a trial at any report).
    curve_flush_interval: float = field(default=5.0, init=False)

    def __post_init__(self) -> None:
        quiet_optuna()
        cfg = self.config
        self.db = ResultsDB(cfg.storage)
        self.spaces = self.spec.load_spaces()
        self.workload = self.spec.build_workload()
        self.device = resolve_device(cfg.device or self.spec.device)
        if cfg.threads:
            import torch

            torch.set_num_threads(cfg.threads)
        self.index = cfg.worker_index if cfg.worker_index is not None else os.getpid() % 997
        self.rdb = optuna_storage(
            cfg.storage,
            heartbeat_interval=cfg.heartbeat_interval,
            grace_period=cfg.grace_period,
            stale_trial_callback=self._on_stale_trial,
            create_tables=False,
        )
        self.labels = self.spec.labels
        self.studies: dict[str, optuna.Study] = {}
        self._study_label: dict[str, str] = {}
        for i, label in enumerate(self.labels):
            name = self.spec.study_name(label)
            seed = sampler_seed(self.spec.seed, i, self.index)
            try:
                study = with_retries(functools.partial(self._load, name, label, seed))
            except KeyError:
                raise CampaignError(
                    f"study {name!r} does not exist in {mask_url(cfg.storage)}; start the "
                    f"campaign with `hvadam tune` (or prepare_campaign) first"
                ) from None
            if study.user_attrs.get("spec_hash") != self.spec.spec_hash:  # grown, or another
                where = mask_url(cfg.storage)
                raise CampaignError(spec_mismatch(name, study.user_attrs, self.spec, where))
            self.studies[label] = study
            self._study_label[name] = label
        self._storage_identity = storage_identity(cfg.storage)
        self._said_waiting: list[str] = []
        self._retry = RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry)
        self._round = 0
        self._last_stale_check = 0.0
        self._best: dict[str, Any] = {}
        self._released: set[str] = set()  # labels whose confirm claims of an old best are gone
        self.artifacts = resolve_artifacts(cfg.storage, cfg.artifacts)
        if self.artifacts is None and self.spec.live is not None and self.spec.live.checkpoints:
            raise CampaignError(
                f"spec {self.spec.source}: artifacts.checkpoints: needs an artifact store; give "
                f"one (--artifacts, ${ARTIFACTS_ENV}): {mask_url(cfg.storage)} has no default"
            )
        first = self.studies[self.labels[0]]
        self.live = LiveNotes(self.spec, cfg.storage, first, artifacts=self.artifacts)

    def _load(self, name: str, label: str, seed: int) -> optuna.Study:
        return optuna.load_study(
            study_name=name,
            storage=self.rdb,
            sampler=make_sampler(
                self.spec.sampler, self.spaces[label], seed, self.spec.sampler_options
            ),
            pruner=make_pruner(self.spec.pruner, self.workload.max_epochs),
        )

    def retry_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """Queue a failed trial again with the same params and seed (up to `max_retry` times)."""
        self._retry(study, trial)

    # -- the loop

    def run(self) -> list[Event]:
        """Work until the whole campaign (every optimizer's search and confirm) is done."""
        warm_up(self.spaces)  # torch's lazy imports, so that no trial's time pays for them
        with stop_on_signals():
            while True:
                check_stop()  # a stop whose KeyboardInterrupt was lost (studies/stopping.py)
                check_storage_identity(self.config.storage, self._storage_identity)
                check_spec_current(self.config.storage, self.spec)  # not grown meanwhile
                if self._search_step():
                    continue
                if self.confirm_step() or sweep_step(self):
                    continue
                if self._all_done():
                    check_storage_identity(self.config.storage, self._storage_identity)
                    return self._events
                self._say_what_it_waits_for()
                if self.on_idle is not None:
                    self.on_idle()
                time.sleep(self.config.poll_interval)

    def waiting_for(self) -> list[str]:
        """The runs other workers hold that this one waits for ("adam trial #3", ...)."""
        held = []
        for label in self.labels:
            for t in self.studies[label].get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                held.append(f"{label} trial #{t.number}")
        for c in self.db.claims(self.spec.name, "confirm") + sweep_claims(self):
            if c["status"] == "running":
                held.append(f"{c['optimizer']} {c['phase']} seed slot {c['slot']}")
        return held

    def _say_what_it_waits_for(self) -> None:
        """One line when the set of runs this idle worker waits for changes (never silence).

        After a worker was killed its runs stay RUNNING until no heartbeat came for the grace
        period; the next `tune` would otherwise wait that long without a word.
        """
        held = self.waiting_for()
        if not held or held == self._said_waiting:
            return
        self._said_waiting = held
        shown = ", ".join(held[:4]) + (f" and {len(held) - 4} more" if len(held) > 4 else "")
        print(
            f"[{self.spec.name}] waiting for {len(held)} run(s) held by other workers: {shown}; "
            f"a run whose worker is gone is taken over once it has had no heartbeat for "
            f"{self.config.grace_period}s (--grace-period)",
            file=sys.stderr,
            flush=True,
        )

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    # -- search

    def counts(self, label: str) -> Counts:
        """The trial counts of `label` (with its search spend when the budget has seconds)."""
        spend = search_spend(self.config.storage, self.spec.name) if self.spec.seconds else {}
        return count_trials(self.studies[label].get_trials(deepcopy=False), spend.get(label))

    def _fail_stale(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stale_check < self.config.heartbeat_interval:
            return
        self._last_stale_check = now
        for study in self.studies.values():
            with_retries(functools.partial(optuna.storages.fail_stale_trials, study))

    def _search_step(self) -> bool:
        budget = Budget.of(self.spec)

        def open_(counts: Counts) -> bool:
            return can_start(budget, counts)

        # Rank the optimizers on counts read without the lock (reads run beside the other
        # workers'), then re-count under the lock only the one about to get a trial: the lock
        # is held for one count and Optuna's ask, and the budget is still never exceeded.
        self._fail_stale()  # a lost worker's trial comes back as a waiting one
        counts = {label: self.counts(label) for label in self.labels}
        candidates = [label for label in self.labels if open_(counts[label])]
        if not candidates:
            return False
        # Fewest trials first; ties rotate with the worker and the round, so that workers
        # interleave optimizers instead of all starting on the same one.
        order = {label: i for i, label in enumerate(self.labels)}
        k = len(self.labels)
        self._round += 1
        candidates.sort(
            key=lambda lab: (counts[lab].used, (order[lab] - self.index - self._round) % k)
        )
        lock = CampaignLock(self.config.storage, self.spec.name)
        lock.acquire()
        try:
            for label in candidates:
                if open_(self.counts(label)):
                    self._run_search_trial(label, lock)
                    return True
            return True  # others took the last trials meanwhile: look again
        finally:
            lock.release()

    def _run_search_trial(self, label: str, lock: CampaignLock) -> None:
        study = self.studies[label]
        space = self.spaces[label]
        # Under the campaign lock no other worker creates a trial: a trial that is new after
        # an interrupted `optimize` is this worker's, even when the interrupt came before the
        # objective learned its number.
        notes: dict[str, Any] = {"known": {t.number for t in study.get_trials(deepcopy=False)}}

        def objective(trial: optuna.Trial) -> float:
            notes["number"] = trial.number
            lock.release()  # the trial exists now: other workers may count and ask
            return self._search_objective(label, space, trial, notes)

        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        except KeyboardInterrupt:
            self._requeue_interrupted(label, notes)
            raise
        event = notes.get("event")
        if event is not None:
            self._emit(event)
            self.live.run_finished("search", label)

    def _search_objective(
        self, label: str, space: SearchSpace, trial: optuna.Trial, notes: dict[str, Any]
    ) -> float:
        # A heartbeat retry inherits its original's user attrs, so it reruns the same seed.
        seed = trial.user_attrs.get("seed")
        if seed is None:
            seed = search_seed(self.spec.seed, trial.number)
            trial.set_user_attr("seed", seed)
        params = space.suggest(trial)
        run_id = self._start(label, params, trial.number, "search", seed)
        notes["run_id"] = run_id
        trial.set_user_attr("run_id", run_id)

        def on_report(rep: EpochReport) -> None:
            if not math.isfinite(rep.value):
                return  # the workload raises Diverged for a non-finite loss
            trial.report(rep.value, rep.epoch)
            if trial.should_prune():
                raise optuna.TrialPruned(
                    f"pruned by the {self.spec.pruner} pruner at epoch {rep.epoch} "
                    f"({self.workload.metric}={rep.value:.6g})"
                )

        outcome = self._run(label, params, run_id, seed, on_report=on_report)
        record(self.db, run_id, outcome)
        for key, value in trial_user_attrs(outcome).items():
            trial.set_user_attr(key, value)
        notes["event"] = self._event(label, "search", outcome, trial.number, seed, run_id)
        # Optuna's side of the outcome: the value, or how the trial ends without one.
        if outcome.status == "pruned":
            raise optuna.TrialPruned(outcome.reason)
        if outcome.status == "failed":
            raise TrialFailed(outcome.reason)
        assert outcome.value is not None
        return outcome.value

    def _event(
        self,
        label: str,
        phase: str,
        outcome: Outcome,
        trial_number: int | None,
        seed: int,
        run_id: int,
    ) -> Event:
        return Event(
            optimizer=label,
            phase=phase,
            status=outcome.status,
            value=outcome.value,
            trial_number=trial_number,
            seed=seed,
            wall_time=outcome.wall_time,
            reason=outcome.reason,
            run_id=run_id,
        )

    def _start(
        self, label: str, params: Mapping[str, Any], trial_number: int, phase: str, seed: int
    ) -> int:
        """Open the run row of one run of `label` with `params` (a search-space sample)."""
        return start_run(
            self.db,
            self.spec,
            label,
            self.spaces[label],
            params,
            trial_number=trial_number,
            phase=phase,
            seed=seed,
            device=self.device,
        )

    def _run(
        self,
        label: str,
        params: Mapping[str, Any],
        run_id: int,
        seed: int,
        *,
        phase: str = "search",
        on_report: Callable[[EpochReport], None] | None = None,
        run_options: Mapping[str, Any] | None = None,
    ) -> Outcome:
        """The shared trial path (`studies.trial.run_trial`) in this worker."""
        return run_trial(
            self.db,
            self.workload,
            self.spaces[label],
            params,
            run_id=run_id,
            seed=seed,
            device=self.device,
            phase=phase,
            on_report=on_report,
            flush_interval=self.curve_flush_interval,
            run_options=run_options,
        )

    def _on_stale_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial whose worker stopped heart-beating: fail its run row and retry it."""
        label = self._study_label.get(study.study_name, study.study_name.rsplit("/", 1)[-1])
        retries = len(trial.system_attrs.get("retry_history", []))
        retried = retries < self.config.max_retry
        self.retry_trial(study, trial)
        self.db.fail_lost_runs(
            campaign=self.spec.name,
            optimizer=label,
            trial_number=trial.number,
            phase="search",
            reason=(
                f"worker lost: no heartbeat for {self.config.grace_period}s; "
                + ("the trial is retried" if retried else "retries exhausted")
            ),
        )

    def _requeue_interrupted(self, label: str, notes: dict[str, Any]) -> None:
        """An interrupted trial is not finished: queue it again so a resumed campaign reruns it."""
        study = self.studies[label]
        number = notes.get("number")
        for t in study.get_trials(deepcopy=False):
            mine = t.number == number if number is not None else t.number not in notes["known"]
            if not mine or t.state not in (TrialState.RUNNING, TrialState.FAIL):
                continue
            if t.state == TrialState.RUNNING:  # interrupted before Optuna could end it
                self.rdb.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
                t = self.rdb.get_trial(t._trial_id)
            self.retry_trial(study, t)
        run_id = notes.get("run_id")
        if run_id is not None:
            self.db.fail_run_if_running(run_id, "interrupted; the trial is queued again")

    # -- confirm

    def _best_trial(self, label: str) -> optuna.trial.FrozenTrial | None:
        if label not in self._best:
            try:
                self._best[label] = self.studies[label].best_trial
            except ValueError:  # no complete trial
                self._best[label] = None
        return self._best[label]

    def confirm_step(self) -> bool:
        seeds = self.spec.confirm_seeds
        for label in set(self.labels) - self._released:  # a grown search's new best trial
            if self.counts(label).search_finished(Budget.of(self.spec)):
                best = self._best_trial(label)
                if best is not None:  # its confirm and sweep runs are run again
                    release_superseded(self.config.storage, self.spec.name, label, best.number)
                self._released.add(label)
        if seeds == 0:
            return False
        claims = self.db.claims(self.spec.name, "confirm")
        now = time.time()
        k = len(self.labels)
        for j in range(k):
            label = self.labels[(j + self.index) % k]
            slots = open_slots(
                [c for c in claims if c["optimizer"] == label],
                seeds,
                lambda c: now - c["heartbeat_at"] > self.config.grace_period,
            )
            if slots is None:
                continue
            if not self.counts(label).search_finished(Budget.of(self.spec)):
                continue
            best = self._best_trial(label)
            if best is None:
                continue
            for slot in slots:
                taken = self.db.claim(
                    campaign=self.spec.name,
                    optimizer=label,
                    phase="confirm",
                    slot=slot,
                    grace_period=self.config.grace_period,
                )
                if taken is not None:
                    self._run_confirm(label, best, slot, *taken)
                    return True
        return False

    def _run_confirm(
        self, label: str, best: optuna.trial.FrozenTrial, slot: int, claim_id: int, token: str
    ) -> None:
        seed = confirm_seed(self.spec.seed, slot)
        run_id = self._start(label, best.params, best.number, "confirm", seed)
        self.db.attach_run(claim_id, token, run_id)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.config.heartbeat_interval):
                self.db.heartbeat_claim(claim_id, token)

        beater = threading.Thread(target=beat, name="hvadam-claim-heartbeat", daemon=True)
        beater.start()
        final: dict[str, Any] = {}  # the last report's state, for a checkpoint

        def keep_state(rep: Any) -> None:
            final["state"] = rep.state

        keep = self.spec.live is not None and self.spec.live.checkpoints
        try:
            outcome = self._run(
                label,
                best.params,
                run_id,
                seed,
                phase="confirm",
                on_report=keep_state if keep else None,
            )
        except BaseException:
            # Leave the claim immediately stale, so that the next worker takes it over.
            stop.set()
            beater.join()
            self.db.abandon_claim(claim_id, token)
            self.db.fail_run_if_running(run_id, "interrupted; the confirm run is open again")
            raise
        stop.set()
        beater.join()
        if not self.db.complete_claim(claim_id, token):
            outcome = replace(
                outcome,
                status="failed",
                reason="duplicate: this claim was taken over by another worker",
            )
        if keep and outcome.status == "complete" and final.get("state") is not None:
            self._upload_checkpoint(label, best, seed, run_id, final["state"]())
        record(self.db, run_id, outcome)
        self._emit(self._event(label, "confirm", outcome, best.number, seed, run_id))
        self.live.run_finished("confirm", label, confirmed=self._confirmed(label))

    def _upload_checkpoint(
        self,
        label: str,
        best: optuna.trial.FrozenTrial,
        seed: int,
        run_id: int,
        state: dict[str, Any],
    ) -> None:
        """Attach a confirm run's final state to its study (a failed upload only warns)."""
        space = self.spaces[label]
        info = {
            "optimizer": space.optimizer,
            "hyperparameters": space.to_hyperparameters(dict(best.params)),
            "campaign": self.spec.name,
            "label": label,
            "seed": seed,
            "trial": best.number,
            "run_id": run_id,
            "workload": {"name": self.spec.workload, "options": self.workload.options},
        }
        try:
            assert self.artifacts is not None  # checked when the worker starts
            upload_checkpoint(
                self.artifacts,
                self.studies[label],
                campaign=self.spec.name,
                optimizer=label,
                seed=seed,
                state=state,
                info=info,
            )
        except Exception as exc:
            text = mask_text(f"{type(exc).__name__}: {exc}")
            print(f"hvadam: warning: checkpoint of {label} seed {seed}: {text}", file=sys.stderr)

    def _confirmed(self, label: str) -> bool:
        """Whether every confirm seed of `label` is done."""
        seeds = self.spec.confirm_seeds
        return confirmed(self.db.claims(self.spec.name, "confirm"), label, seeds) >= seeds

    def _all_done(self) -> bool:
        for label in self.labels:
            if not self.counts(label).search_finished(Budget.of(self.spec)):
                return False
        if self.spec.confirm_seeds == 0:
            return sweeps_done(self)
        claims = self.db.claims(self.spec.name, "confirm")
        for label in self.labels:
            if self._best_trial(label) is None:
                continue  # nothing to confirm
            if confirmed(claims, label, self.spec.confirm_seeds) < self.spec.confirm_seeds:
                return False
        return sweeps_done(self)
