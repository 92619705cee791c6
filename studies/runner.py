"""The Optuna runner: prepares a campaign's studies, runs workers, and runs the confirm phase.

A campaign is one Optuna study per optimizer (`<campaign>/<optimizer>`), created once before any
worker starts, each with the optimizer's default config enqueued as its first trial. Workers
(processes, possibly on other machines) share one storage:

- search: a worker counts each study's trials and ranks the optimizers, fewest first (so
  optimizers advance together, whatever their speed); then, under a campaign-wide lock, it
  counts the first one with room again and asks Optuna for its trial. The lock ends once the
  trial exists, so no optimizer ever gets more than its budget.
  A trial counts against the budget unless it is a heartbeat retry of an earlier one.
- confirm: when an optimizer's search is finished, its best config is re-run on K fresh seeds;
  each (optimizer, seed) is a claim row with a unique constraint, so it runs exactly once.
- faults: a diverging trial (`Diverged`) is pruned with its reason; an exception fails the
  trial with its traceback stored; a worker that dies stops heart-beating, and its trial is
  failed and retried (`RetryHeartbeatStaleTrialCallback`), its confirm claim taken over.

Seeds: search trial n runs with seed `(S * 1000003 + n) mod 2**31`, confirm seed k with
`(S * 1000003 + 10**9 + k) mod 2**31`, where S is the campaign seed: the same seeds for every
optimizer, never the same for search and confirm.
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import subprocess
import sys
import threading
import time
import traceback as tb_module
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from studies.results import ResultsDB
from studies.spec import CampaignSpec, SpecError
from studies.storage import (
    STORAGE_ENV,
    CampaignLock,
    StorageError,
    check_storage_url,
    close_pooled_connections,
    connect_check,
    mask_url,
    optuna_storage,
    with_retries,
)

__all__ = [
    "CampaignError",
    "Event",
    "RunnerConfig",
    "StorageError",
    "Worker",
    "campaign_complete",
    "confirm_seed",
    "prepare_campaign",
    "run_campaign",
    "search_seed",
    "start_method",
]

SEED_STRIDE = 1_000_003
CONFIRM_OFFSET = 10**9
MAX_RETRY = 3
TRACEBACK_ATTR_LIMIT = 8000


class CampaignError(ValueError):
    """A campaign that cannot run as asked (conflicting spec, failed workers, ...)."""


def search_seed(campaign_seed: int, trial_number: int) -> int:
    return (campaign_seed * SEED_STRIDE + trial_number) % 2**31


def confirm_seed(campaign_seed: int, index: int) -> int:
    return (campaign_seed * SEED_STRIDE + CONFIRM_OFFSET + index) % 2**31


@dataclass
class RunnerConfig:
    """How workers run (not part of the spec, so not part of its hash)."""

    storage: str
    heartbeat_interval: int = 10  # seconds between heartbeats of a running trial
    grace_period: int = 60  # seconds without heartbeat before a trial counts as lost
    max_retry: int = MAX_RETRY
    device: str | None = None  # overrides the spec's device
    threads: int | None = None  # torch threads per worker (CPU)
    worker_index: int | None = None
    poll_interval: float = 0.5


# ---- preparing a campaign ----------------------------------------------------------------------


def _quiet_optuna() -> None:
    # Trials are reported by our own progress lines; Optuna's per-trial logging would repeat them.
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    # Heartbeats and their retry callback are marked experimental; we rely on them knowingly.
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)


def prepare_campaign(spec: CampaignSpec, storage: str) -> dict[str, Any]:
    """Check the spec and storage, then create the campaign's tables and studies (idempotent).

    Runs under the campaign lock, so it is safe when several processes start at once. Raises
    `SpecError`, `StorageError` or `CampaignError` (a different spec under the same name).
    Returns the campaign's description (metric, direction, study names).
    """
    _quiet_optuna()
    spaces = spec.load_spaces()
    workload = spec.build_workload()
    check_storage_url(storage)
    connect_check(storage)
    db = ResultsDB(storage)
    normalized = spec.normalized()
    with CampaignLock(storage, spec.name):
        rdb = optuna_storage(storage, create_tables=True)
        db.create_tables()
        try:
            db.register_campaign(
                name=spec.name,
                spec_hash=spec.spec_hash,
                spec=normalized,
                workload=spec.workload,
                metric=workload.metric,
                direction=workload.direction,
            )
        except ValueError as exc:
            raise CampaignError(str(exc)) from None
        for label, space in spaces.items():
            name = spec.study_name(label)
            try:
                study = optuna.load_study(study_name=name, storage=rdb)
            except KeyError:
                study = None
            if study is not None:
                stored = study.user_attrs.get("spec_hash")
                if stored != spec.spec_hash:
                    raise CampaignError(
                        f"study {name!r} already exists in {mask_url(storage)} with a different "
                        f"spec (stored hash {stored}, this spec {spec.spec_hash}); give the "
                        f"changed campaign a new name, or use another storage"
                    )
                continue
            study = optuna.create_study(study_name=name, storage=rdb, direction=workload.direction)
            attrs = {
                "campaign": spec.name,
                "workload": spec.workload,
                "optimizer": label,
                "optimizer_class": space.optimizer,
                "spec_hash": spec.spec_hash,
                "spec": normalized,
                "metric": workload.metric,
                "direction": workload.direction,
                "budget_trials": spec.trials,
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


# ---- samplers and pruners ----------------------------------------------------------------------


def make_sampler(spec: CampaignSpec, space: Any, seed: int) -> optuna.samplers.BaseSampler:
    s = spec.sampler
    if s == "tpe":
        return optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    if s == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if s == "cmaes":
        return optuna.samplers.CmaEsSampler(seed=seed, warn_independent_sampling=False)
    if s == "gp":
        return optuna.samplers.GPSampler(seed=seed)
    if s == "grid":
        return optuna.samplers.GridSampler(grid_space(space), seed=seed)
    raise SpecError(f"unknown sampler {s!r}")


def grid_space(space: Any, points: int = 3) -> dict[str, list[Any]]:
    """A grid over a space's distributions: categorical choices, `points` values per range."""
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    grid: dict[str, list[Any]] = {}
    for name, dist in space.distributions().items():
        if isinstance(dist, CategoricalDistribution):
            grid[name] = list(dist.choices)
        elif isinstance(dist, (FloatDistribution, IntDistribution)):
            lo, hi = dist.low, dist.high
            if dist.log:
                values = [lo * (hi / lo) ** (i / (points - 1)) for i in range(points)]
            else:
                values = [lo + (hi - lo) * i / (points - 1) for i in range(points)]
            if isinstance(dist, IntDistribution):
                values = sorted({round(v) for v in values})
            grid[name] = values
    return grid


def make_pruner(spec: CampaignSpec, max_epochs: int) -> optuna.pruners.BasePruner:
    if spec.pruner == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=3, n_warmup_steps=max(1, max_epochs // 4)
        )
    if spec.pruner == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=1, max_resource=max(1, max_epochs), reduction_factor=3
        )
    return optuna.pruners.NopPruner()


# ---- the worker --------------------------------------------------------------------------------


@dataclass
class _Counts:
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


@dataclass
class _Outcome:
    result: Any = None
    wall_time: float = 0.0


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
        _quiet_optuna()
        cfg = self.config
        self.db = ResultsDB(cfg.storage)
        self.spaces = self.spec.load_spaces()
        self.workload = self.spec.build_workload()
        self.device = _resolve_device(cfg.device or self.spec.device)
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
            sampler_seed = (self.spec.seed * 7919 + i * 104729 + self.index * 15485863) % 2**31
            try:
                study = with_retries(
                    lambda name=name, label=label, seed=sampler_seed: optuna.load_study(
                        study_name=name,
                        storage=self.rdb,
                        sampler=make_sampler(self.spec, self.spaces[label], seed),
                        pruner=make_pruner(self.spec, self.workload.max_epochs),
                    )
                )
            except KeyError:
                raise CampaignError(
                    f"study {name!r} does not exist in {mask_url(cfg.storage)}; start the "
                    f"campaign with `hvadam tune` (or prepare_campaign) first"
                ) from None
            if study.user_attrs.get("spec_hash") != self.spec.spec_hash:
                raise CampaignError(
                    f"study {name!r} in {mask_url(cfg.storage)} belongs to a different spec "
                    f"(hash {study.user_attrs.get('spec_hash')}, this spec {self.spec.spec_hash})"
                )
            self.studies[label] = study
            self._study_label[name] = label
        self._retry = RetryHeartbeatStaleTrialCallback(max_retry=cfg.max_retry)
        self._round = 0
        self._last_stale_check = 0.0
        self._best: dict[str, Any] = {}

    # -- the loop

    def run(self) -> list[Event]:
        """Work until the whole campaign (every optimizer's search and confirm) is done."""
        previous = signal.getsignal(signal.SIGTERM)
        in_main = threading.current_thread() is threading.main_thread()
        if in_main:
            signal.signal(signal.SIGTERM, _raise_interrupted)
        try:
            while True:
                if self._search_step():
                    continue
                if self._confirm_step():
                    continue
                if self._all_done():
                    return self._events
                if self.on_idle is not None:
                    self.on_idle()
                time.sleep(self.config.poll_interval)
        finally:
            if in_main:
                signal.signal(signal.SIGTERM, previous)

    def _emit(self, event: Event) -> None:
        self._events.append(event)
        if self.on_event is not None:
            self.on_event(event)

    # -- search

    def _counts(self, label: str) -> _Counts:
        counts = _Counts()
        for t in self.studies[label].get_trials(deepcopy=False):
            if "failed_trial" not in t.system_attrs:
                counts.used += 1
            if t.state == TrialState.WAITING:
                counts.waiting += 1
            elif t.state == TrialState.RUNNING:
                counts.running += 1
            else:
                counts.finished += 1
        return counts

    def _fail_stale(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self._last_stale_check < self.config.heartbeat_interval:
            return
        self._last_stale_check = now
        for study in self.studies.values():
            with_retries(lambda study=study: optuna.storages.fail_stale_trials(study))

    def _search_step(self) -> bool:
        budget = self.spec.trials

        def open_(counts: _Counts) -> bool:
            return bool(counts.waiting) or counts.used < budget

        # Rank the optimizers on counts read without the lock (reads run beside the other
        # workers'), then re-count under the lock only the one about to get a trial: the lock
        # is held for one count and Optuna's ask, and the budget is still never exceeded.
        self._fail_stale()  # a lost worker's trial comes back as a waiting one
        counts = {label: self._counts(label) for label in self.labels}
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
                if open_(self._counts(label)):
                    self._run_search_trial(label, lock)
                    return True
            return True  # others took the last trials meanwhile: look again
        finally:
            lock.release()

    def _run_search_trial(self, label: str, lock: CampaignLock) -> None:
        study = self.studies[label]
        space = self.spaces[label]
        record: dict[str, Any] = {}

        def objective(trial: optuna.Trial) -> float:
            lock.release()  # the trial exists now: other workers may count and ask
            record["number"] = trial.number
            return self._search_objective(label, space, trial, record)

        try:
            study.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False)
        except KeyboardInterrupt:
            self._requeue_interrupted(label, record)
            raise
        event = record.get("event")
        if event is not None:
            self._emit(event)

    def _search_objective(
        self, label: str, space: Any, trial: optuna.Trial, record: dict[str, Any]
    ) -> float:
        import hvadam
        from studies.workloads import Diverged

        # A heartbeat retry inherits its original's user attrs, so it reruns the same seed.
        seed = trial.user_attrs.get("seed")
        if seed is None:
            seed = search_seed(self.spec.seed, trial.number)
            trial.set_user_attr("seed", seed)
        params = space.suggest(trial)
        hp = space.to_hyperparameters(params)
        resolved = hvadam.resolve_hyperparameters(space.optimizer, **hp)
        run_id = self.db.start_run(
            campaign=self.spec.name,
            study=self.spec.study_name(label),
            optimizer=label,
            trial_number=trial.number,
            phase="search",
            seed=seed,
            device=self.device,
            hyperparameters=resolved,
        )
        record["run_id"] = run_id
        trial.set_user_attr("run_id", run_id)
        pruned_at: dict[str, Any] = {}

        def on_report(rep: Any) -> None:
            if not math.isfinite(rep.value):
                return  # the workload raises Diverged for a non-finite loss
            trial.report(rep.value, rep.epoch)
            if trial.should_prune():
                pruned_at.update(epoch=rep.epoch, value=rep.value)
                raise optuna.TrialPruned(
                    f"pruned by the {self.spec.pruner} pruner at epoch {rep.epoch} "
                    f"({self.workload.metric}={rep.value:.6g})"
                )

        outcome = _Outcome()

        def event(status: str, value: float | None, reason: str | None) -> Event:
            return Event(
                optimizer=label,
                phase="search",
                status=status,
                value=value,
                trial_number=trial.number,
                seed=seed,
                wall_time=outcome.wall_time,
                reason=reason,
                run_id=run_id,
            )

        try:
            self._execute(space, hp, seed, run_id, on_report, outcome)
        except optuna.TrialPruned as exc:
            reason = str(exc) or "pruned"
            self._finish_pruned(trial, run_id, outcome, reason)
            record["event"] = event("pruned", None, reason)
            raise
        except Diverged as exc:
            reason = f"diverged at epoch {exc.epoch}: {exc.detail}"
            self._finish_pruned(trial, run_id, outcome, reason)
            record["event"] = event("pruned", None, reason)
            raise optuna.TrialPruned(reason) from None
        except Exception as exc:
            text = tb_module.format_exc()
            reason = f"{type(exc).__name__}: {exc}"
            trial.set_user_attr("fail_reason", reason)
            trial.set_user_attr("traceback", text[-TRACEBACK_ATTR_LIMIT:])
            self.db.finish_run(
                run_id,
                status="failed",
                wall_time=outcome.wall_time,
                reason=reason,
                traceback=text,
            )
            record["event"] = event("failed", None, reason)
            raise
        result = outcome.result
        value = float(result.value)
        if not math.isfinite(value):
            reason = f"non-finite objective value {value}"
            self._finish_pruned(trial, run_id, outcome, reason)
            record["event"] = event("pruned", None, reason)
            raise optuna.TrialPruned(reason)
        self.db.finish_run(
            run_id,
            status="complete",
            wall_time=outcome.wall_time,
            value=value,
            metrics=result.metrics,
            extras=result.extras,
        )
        record["event"] = event("complete", value, None)
        return value

    def _finish_pruned(
        self, trial: optuna.Trial, run_id: int, outcome: _Outcome, reason: str
    ) -> None:
        trial.set_user_attr("prune_reason", reason)
        self.db.finish_run(run_id, status="pruned", wall_time=outcome.wall_time, reason=reason)

    def _execute(
        self,
        space: Any,
        hp: dict[str, Any],
        seed: int,
        run_id: int,
        on_report: Callable[[Any], None] | None,
        outcome: _Outcome,
        run_options: dict[str, Any] | None = None,
    ) -> None:
        """Run the workload once, streaming its curves to the database in batches.

        `run_options` go to `Workload.run` as extra keywords (the Ray backend's `resume`).
        """
        import hvadam

        buffer: list[tuple[int, str, float]] = []
        last_flush = time.monotonic()

        def flush() -> None:
            nonlocal last_flush
            if buffer:
                self.db.add_curves(run_id, buffer)
                buffer.clear()
            last_flush = time.monotonic()

        def on_epoch(rep: Any) -> None:
            buffer.extend((rep.epoch, name, value) for name, value in rep.metrics.items())
            # Long runs stream curves (a live dashboard sees them); short ones write once.
            if time.monotonic() - last_flush > self.curve_flush_interval:
                flush()
            if on_report is not None:
                on_report(rep)

        def make_optimizer(params: Any) -> Any:
            return hvadam.create_optimizer(space.optimizer, params, **hp)

        start = time.perf_counter()
        try:
            outcome.result = self.workload.run(
                make_optimizer,
                seed=seed,
                device=self.device,
                on_epoch=on_epoch,
                **(run_options or {}),
            )
        finally:
            outcome.wall_time = time.perf_counter() - start
            flush()

    def _on_stale_trial(self, study: optuna.Study, trial: optuna.trial.FrozenTrial) -> None:
        """A trial whose worker stopped heart-beating: fail its run row and retry it."""
        label = self._study_label.get(study.study_name, study.study_name.rsplit("/", 1)[-1])
        retries = len(trial.system_attrs.get("retry_history", []))
        retried = retries < self.config.max_retry
        self._retry(study, trial)
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

    def _requeue_interrupted(self, label: str, record: dict[str, Any]) -> None:
        """An interrupted trial is not finished: queue it again so a resumed campaign reruns it."""
        number = record.get("number")
        if number is None:
            return
        study = self.studies[label]
        for t in study.get_trials(deepcopy=False):
            if t.number == number and t.state == TrialState.FAIL:
                self._retry(study, t)
        run_id = record.get("run_id")
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

    def _confirm_step(self) -> bool:
        seeds = self.spec.confirm_seeds
        if seeds == 0:
            return False
        claims = {(c["optimizer"], c["slot"]): c for c in self.db.claims(self.spec.name, "confirm")}
        now = time.time()
        k = len(self.labels)
        for j in range(k):
            label = self.labels[(j + self.index) % k]
            open_slots = []
            for slot in range(seeds):
                c = claims.get((label, slot))
                if c is None or (
                    c["status"] == "running" and now - c["heartbeat_at"] > self.config.grace_period
                ):
                    open_slots.append(slot)
            if not open_slots:
                continue
            if not self._counts(label).search_finished(self.spec.trials):
                continue
            best = self._best_trial(label)
            if best is None:
                continue
            for slot in open_slots:
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
        import hvadam
        from studies.workloads import Diverged

        space = self.spaces[label]
        hp = space.to_hyperparameters(best.params)
        seed = confirm_seed(self.spec.seed, slot)
        run_id = self.db.start_run(
            campaign=self.spec.name,
            study=self.spec.study_name(label),
            optimizer=label,
            trial_number=best.number,
            phase="confirm",
            seed=seed,
            device=self.device,
            hyperparameters=hvadam.resolve_hyperparameters(space.optimizer, **hp),
        )
        self.db.attach_run(claim_id, token, run_id)
        stop = threading.Event()

        def beat() -> None:
            while not stop.wait(self.config.heartbeat_interval):
                self.db.heartbeat_claim(claim_id, token)

        beater = threading.Thread(target=beat, name="hvadam-claim-heartbeat", daemon=True)
        beater.start()
        outcome = _Outcome()
        status, value, reason, text = "complete", None, None, None
        try:
            self._execute(space, hp, seed, run_id, None, outcome)
            value = float(outcome.result.value)
            if not math.isfinite(value):
                status, reason, value = "failed", f"non-finite objective value {value}", None
        except Diverged as exc:
            status, reason = "failed", f"diverged at epoch {exc.epoch}: {exc.detail}"
        except Exception as exc:
            status, reason = "failed", f"{type(exc).__name__}: {exc}"
            text = tb_module.format_exc()
        except BaseException:
            stop.set()
            beater.join()
            # Leave the claim immediately stale, so that the next worker takes it over.
            self.db._update_claim(claim_id, token, heartbeat_at=0.0)
            self.db.fail_run_if_running(run_id, "interrupted; the confirm run is open again")
            raise
        stop.set()
        beater.join()
        result = outcome.result
        if not self.db.complete_claim(claim_id, token):
            status, reason = "failed", "duplicate: this claim was taken over by another worker"
        self.db.finish_run(
            run_id,
            status=status,
            wall_time=outcome.wall_time,
            value=value,
            reason=reason,
            traceback=text,
            metrics=None if result is None else result.metrics,
            extras=None if result is None else result.extras,
        )
        self._emit(
            Event(
                optimizer=label,
                phase="confirm",
                status=status,
                value=value,
                trial_number=best.number,
                seed=seed,
                wall_time=outcome.wall_time,
                reason=reason,
                run_id=run_id,
            )
        )

    def _all_done(self) -> bool:
        for label in self.labels:
            if not self._counts(label).search_finished(self.spec.trials):
                return False
        if self.spec.confirm_seeds == 0:
            return True
        claims = {(c["optimizer"], c["slot"]): c for c in self.db.claims(self.spec.name, "confirm")}
        for label in self.labels:
            if self._best_trial(label) is None:
                continue  # nothing to confirm
            for slot in range(self.spec.confirm_seeds):
                c = claims.get((label, slot))
                if c is None or c["status"] != "done":
                    return False
        return True


def _raise_interrupted(signum: int, frame: Any) -> None:
    # SIGTERM (a scheduler stopping the job) leaves the work resumable, like Ctrl-C.
    raise KeyboardInterrupt


def _resolve_device(device: str) -> str:
    if device == "auto":
        import torch

        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


# ---- running a campaign with N workers ---------------------------------------------------------


def campaign_complete(spec: CampaignSpec, storage: str) -> bool:
    """Whether every search trial and confirm run of the campaign has finished."""
    rdb = optuna_storage(storage, create_tables=False)
    db = ResultsDB(storage)
    claims = {(c["optimizer"], c["slot"]): c for c in db.claims(spec.name, "confirm")}
    try:
        for label in spec.labels:
            study = optuna.load_study(study_name=spec.study_name(label), storage=rdb)
            used = running = 0
            has_complete = False
            for t in study.get_trials(deepcopy=False):
                used += "failed_trial" not in t.system_attrs
                running += t.state in (TrialState.RUNNING, TrialState.WAITING)
                has_complete = has_complete or t.state == TrialState.COMPLETE
            if used < spec.trials or running:
                return False
            if has_complete:
                for slot in range(spec.confirm_seeds):
                    c = claims.get((label, slot))
                    if c is None or c["status"] != "done":
                        return False
        return True
    finally:
        rdb.engine.dispose()


def worker_devices(spec: CampaignSpec, workers: int, device: str | None) -> list[dict[str, str]]:
    """Per-worker environment: one GPU each (round robin) when using CUDA, else nothing."""
    wanted = device or spec.device
    if wanted not in ("auto", "cuda"):
        return [{} for _ in range(workers)]
    import torch

    if not torch.cuda.is_available():
        return [{} for _ in range(workers)]
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    ids = (
        [v.strip() for v in visible.split(",") if v.strip()]
        if visible
        else [str(i) for i in range(torch.cuda.device_count())]
    )
    return [{"CUDA_VISIBLE_DEVICES": ids[i % len(ids)]} for i in range(workers)]


def start_method(cuda: bool) -> str:
    """How `run_campaign` starts workers 1..N-1: "fork" or "spawn" (`hvadam worker`).

    Fork for CPU workers on Linux when this process runs no other Python thread (a forked
    child would inherit the locks those threads hold); spawn for CUDA, which does not survive
    a fork, and wherever `HVADAM_WORKER_START=spawn` asks for it.
    """
    wanted = os.environ.get("HVADAM_WORKER_START") or "fork"
    if wanted not in ("fork", "spawn"):
        raise CampaignError(f"HVADAM_WORKER_START must be 'fork' or 'spawn', got {wanted!r}")
    # Linux only: macOS's system frameworks are not safe in a forked child.
    forkable = sys.platform.startswith("linux") and threading.active_count() == 1
    return "fork" if wanted == "fork" and forkable and not cuda else "spawn"


def _prepare_for_fork(spec: CampaignSpec) -> None:
    """Do once here what every forked worker would otherwise repeat; close database connections."""
    import torch._dynamo  # noqa: F401 - torch.optim imports it at the first optimizer: ~2 s

    # The data set, read once and shared copy-on-write. A missing one is left to fail each run
    # with its own clear error, as without forking.
    with contextlib.suppress(Exception):
        spec.build_workload().prepare()
    close_pooled_connections()


class _ForkedWorker:
    """A worker process forked from this one, with `Popen`'s `poll`/`wait`/`terminate`/`kill`.

    CPU workers start this way: a fork shares the imports and the loaded data set and starts in
    milliseconds, where a new interpreter spends seconds importing torch and reading the data.
    CUDA workers are new processes (`hvadam worker`), since CUDA does not survive a fork.
    """

    def __init__(self, spec: CampaignSpec, config: RunnerConfig) -> None:
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:  # the child: run, then leave without the parent's cleanup (atexit, finally)
            code = 1
            try:
                Worker(spec, config).run()
                code = 0
            except KeyboardInterrupt:
                code = 130
            except BaseException:
                tb_module.print_exc()
            finally:
                try:
                    sys.stdout.flush()
                    sys.stderr.flush()
                finally:
                    os._exit(code)
        self.pid = pid
        self.returncode: int | None = None

    def poll(self) -> int | None:
        if self.returncode is None:
            pid, status = os.waitpid(self.pid, os.WNOHANG)
            if pid:
                self.returncode = os.waitstatus_to_exitcode(status)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"worker pid {self.pid}", timeout or 0.0)
            time.sleep(0.05)
        return self.returncode  # type: ignore[return-value]

    def terminate(self) -> None:
        self._signal(signal.SIGTERM)

    def kill(self) -> None:
        self._signal(signal.SIGKILL)

    def _signal(self, signum: int) -> None:
        if self.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)


def run_campaign(
    spec: CampaignSpec,
    config: RunnerConfig,
    *,
    workers: int = 1,
    spec_arg: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    poll: Callable[[], None] | None = None,
) -> None:
    """Prepare the campaign, then run it with `workers` processes until it is complete.

    Worker 0 runs in this process. On the CPU (Linux), workers 1..N-1 are forked from it once
    the campaign is prepared, and each gets an equal share of the cores (torch threads); set
    `HVADAM_WORKER_START=spawn` to start them as `hvadam worker` subprocesses instead. With
    CUDA they are always such subprocesses (the storage URL is passed in the environment,
    never on a command line), each on its own GPU (round robin over the visible ones). `poll`
    is called after this process's runs and while it waits (the progress display reads the
    other workers' runs from the database then).
    """
    if workers < 1:
        raise CampaignError(f"--workers must be >= 1, got {workers}")
    prepare_campaign(spec, config.storage)
    if workers == 1:
        Worker(spec, config, on_event=on_event).run()
        return
    envs = worker_devices(spec, workers, config.device)
    threads = config.threads
    if threads is None and not envs[0]:
        threads = max(1, (os.cpu_count() or 1) // workers)

    def on_parent_event(event: Event) -> None:
        if on_event is not None:
            on_event(event)
        if poll is not None:
            poll()

    procs: list[Any] = []
    fork = start_method(cuda=bool(envs[0])) == "fork"
    if fork:
        _prepare_for_fork(spec)
    try:
        # This process is worker 0 (it has paid for its imports already); 1..N-1 are children.
        for i in range(1, workers):
            if fork:
                child = replace(config, worker_index=i, threads=threads)
                procs.append(_ForkedWorker(spec, child))
                continue
            env = dict(os.environ)
            env.update(envs[i])
            env[STORAGE_ENV] = config.storage
            cmd = [
                sys.executable,
                "-m",
                "studies.cli",
                "worker",
                spec_arg or spec.source,
                "--worker-index",
                str(i),
                "--heartbeat-interval",
                str(config.heartbeat_interval),
                "--grace-period",
                str(config.grace_period),
                "--quiet",
            ]
            if threads:
                cmd += ["--threads", str(threads)]
            if envs[i]:
                cmd += ["--device", "cuda"]
            elif config.device:
                cmd += ["--device", config.device]
            procs.append(subprocess.Popen(cmd, env=env))
        # Within this process the visible GPUs keep their order: its own is the first one.
        own = replace(
            config,
            worker_index=0,
            threads=threads,
            device="cuda:0" if envs[0] else config.device,
        )
        Worker(spec, own, on_event=on_parent_event, on_idle=poll).run()
        while any(p.poll() is None for p in procs):
            if poll is not None:
                poll()
            time.sleep(0.2)
        if poll is not None:
            poll()
    except BaseException:
        for p in procs:
            if p.poll() is None:
                p.terminate()
        for p in procs:
            try:
                p.wait(timeout=30)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    failed = [(i, p.returncode) for i, p in enumerate(procs, start=1) if p.returncode != 0]
    if failed and not campaign_complete(spec, config.storage):
        detail = ", ".join(f"worker {i} exited with code {rc}" for i, rc in failed)
        raise CampaignError(
            f"campaign {spec.name!r} is incomplete: {detail}; run the same command again to "
            f"continue"
        )
