"""The driver of a Ray run: `run_campaign_ray`, the search phase as one Tune run, then the
confirm runs left open and the sweep runs (`studies.sweep`) as Ray tasks."""

from __future__ import annotations

import functools
import os
import shutil
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ray
from optuna.trial import TrialState
from ray import tune
from ray.tune import Callback

from studies.budget import search_spend
from studies.campaign import CampaignError, campaign_complete, prepare_campaign, quiet_optuna
from studies.execution import Execution
from studies.ray_backend.scheduler import PerOptimizerScheduler, make_scheduler
from studies.ray_backend.searchers import CampaignSearch, StudySearch
from studies.ray_backend.session import RAY_STORAGE_ENV, RayError, ray_session
from studies.ray_backend.trial import confirm_task, trainable
from studies.seeds import sampler_seed
from studies.spec import CampaignSpec
from studies.storage import mask_text, with_retries
from studies.sweep import sweep_runs
from studies.worker import Event, RunnerConfig, Worker

if TYPE_CHECKING:
    from studies.workloads import Workload

__all__ = ["run_campaign_ray"]

# The trials an optimizer may start when only its seconds budget limits it.
UNLIMITED = 10**9


def _recover_interrupted(worker: Worker, label: str) -> None:
    """Trials a previous Ray run left running (it was interrupted): fail and queue them again.

    One Ray driver works on a campaign at a time, so a running trial marked `backend: ray`
    that this driver did not start belongs to a driver that is gone.
    """
    study = worker.studies[label]
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        if t.user_attrs.get("backend") != "ray":
            continue
        worker.rdb.set_trial_user_attr(t._trial_id, "fail_reason", "interrupted Ray run")
        with_retries(
            functools.partial(worker.rdb.set_trial_state_values, t._trial_id, TrialState.FAIL)
        )
        worker.retry_trial(study, worker.rdb.get_trial(t._trial_id))
        worker.db.fail_lost_runs(
            campaign=worker.spec.name,
            optimizer=label,
            trial_number=t.number,
            phase="search",
            reason="interrupted Ray run; the trial is queued again",
        )


_POLLERS: dict[int, Callable[[], None]] = {}


def _run_poller(key: int) -> None:
    # Module level, so that Tune's pickling of the callback (by value) never reaches _POLLERS.
    poll = _POLLERS.get(key)
    if poll is not None:
        poll()


class PollCallback(Callback):
    """Calls `poll` (the progress display) about once a second from Tune's loop."""

    def __init__(self, key: int) -> None:
        self.key = key
        self.last = 0.0

    def on_step_end(self, iteration: int, trials: list[Any], **info: Any) -> None:
        now = time.monotonic()
        if now - self.last > 1.0:
            self.last = now
            _run_poller(self.key)

    def __getstate__(self) -> dict[str, Any]:
        # Tune pickles its run config; the poller (database engines) stays in this process.
        return {"key": self.key, "last": 0.0}


def _poll_callback(poll: Callable[[], None] | None) -> PollCallback:
    key = id(poll)
    if poll is not None:
        _POLLERS[key] = poll
    return PollCallback(key)


def run_campaign_ray(
    spec: CampaignSpec,
    config: RunnerConfig,
    *,
    address: str | None = None,
    execution: Execution | None = None,
    num_cpus: int | None = None,
    workers: int = 1,
    spec_arg: str | None = None,
    on_event: Callable[[Event], None] | None = None,
    poll: Callable[[], None] | None = None,
) -> None:
    """Prepare the campaign, then run its search and confirm phases on Ray until complete.

    `execution` (default: the spec's) sets resources per trial, the concurrency limit and the
    scheduler; `address` joins a running Ray cluster (else a local Ray is started, with
    `num_cpus` CPUs if given); `poll` is called about once a second (the progress display).
    `workers` > 1 limits concurrent trials when neither `execution` nor the spec does.
    `spec_arg` and `on_event` are accepted for symmetry with `run_campaign` (trials get the
    spec object; progress comes from the database through `poll`).
    """
    del on_event, spec_arg
    # `pruner: none` means no early stopping on Ray too, unless a scheduler is named.
    execution = (execution or spec.execution or Execution()).for_pruner(spec.pruner)
    if workers > 1 and execution.max_concurrent is None:
        execution = execution.with_changes(max_concurrent=workers)
    prepare_campaign(spec, config.storage)
    quiet_optuna()
    driver = Worker(spec, RunnerConfig(storage=config.storage))
    with ray_session(address=address, num_cpus=num_cpus) as resources:
        for key, name in (("cpus", "CPU"), ("gpus", "GPU")):
            wanted, have = getattr(execution, key), float(resources.get(name, 0.0))
            if wanted > have:
                raise RayError(
                    f"resources.{key} is {wanted:g} per trial, but the Ray cluster has "
                    f"{have:g} {name}s"
                )
        experiments = Path(
            os.environ.get(RAY_STORAGE_ENV) or tempfile.mkdtemp(prefix="hvadam-tune-")
        )
        owned = RAY_STORAGE_ENV not in os.environ
        try:
            asks, used = {}, {}
            for label in spec.labels:
                _recover_interrupted(driver, label)
                counts = driver.counts(label)
                room = UNLIMITED if spec.trials is None else max(0, spec.trials - counts.used)
                asks[label] = room + counts.waiting
                used[label] = counts.used - counts.waiting
            if sum(asks.values()) or not campaign_complete(spec, config.storage):
                runner = RunnerConfig(
                    storage=config.storage, device=config.device, artifacts=config.artifacts
                )
                _search(spec, runner, execution, asks, used, driver.workload, experiments, poll)
            # Confirm runs left open (a confirm trial that failed) and the sweeps: Ray tasks.
            if not campaign_complete(spec, config.storage):
                _confirm(
                    spec,
                    RunnerConfig(
                        storage=config.storage, device=config.device, artifacts=config.artifacts
                    ),
                    execution,
                    poll,
                )
        finally:
            if owned:
                shutil.rmtree(experiments, ignore_errors=True)
    if poll is not None:
        poll()
    if not campaign_complete(spec, config.storage):
        raise CampaignError(
            f"campaign {spec.name!r} is incomplete after the Ray run (see `hvadam status "
            f"{spec.name}`); run the same command again to continue"
        )


def _search(
    spec: CampaignSpec,
    runner: RunnerConfig,
    execution: Execution,
    asks: dict[str, int],
    used: dict[str, int],
    workload: Workload,
    experiments: Path,
    poll: Callable[[], None] | None,
) -> None:
    """The search phase of every optimizer with budget left, in one Tune run: `asks[label]`
    trials more of each, which has `used[label]` of its budget already."""
    mode = "max" if workload.direction == "maximize" else "min"
    subs, schedulers = {}, {}
    stops: set[str] = set()
    scheduler = execution.scheduler
    assert scheduler is not None  # chosen by Execution.for_pruner in run_campaign_ray
    for i, label in enumerate(spec.labels):
        subs[label] = StudySearch(
            spec=spec,
            label=label,
            storage=runner.storage,
            scheduler=scheduler,
            direction=workload.direction,
            sampler_seed=sampler_seed(spec.seed, i),
            scheduler_stops=stops,
        )
        schedulers[label] = make_scheduler(
            execution, subs[label].search_space, workload.max_epochs, mode
        )
    runnable = tune.with_resources(
        tune.with_parameters(
            trainable,
            spec=spec,
            runner=runner,
            execution=execution,
        ),
        {"cpu": execution.cpus, "gpu": execution.gpus},
    )
    tuner = tune.Tuner(
        runnable,
        tune_config=tune.TuneConfig(
            search_alg=CampaignSearch(
                subs,
                asks,
                used,
                spec.confirm_seeds,
                seconds=spec.seconds,
                spend=functools.partial(search_spend, runner.storage, spec.name),
            ),
            scheduler=PerOptimizerScheduler(schedulers, stops),
            # The searcher ends the run; the extra room is for retried trials.
            # (-1: no limit; a seconds budget's searcher ends the run when it is spent.)
            num_samples=-1
            if spec.trials is None
            else 2 * sum(asks.values()) + len(spec.labels) * spec.confirm_seeds,
            max_concurrent_trials=execution.max_concurrent,
            reuse_actors=True,
        ),
        run_config=tune.RunConfig(
            name=f"{spec.name}-{uuid.uuid4().hex[:8]}",
            storage_path=str(experiments),
            verbose=0,
            # A trial's final report (its outcome) ends it before any scheduler decision.
            stop=_stop_on_outcome,
            callbacks=[_poll_callback(poll)],
            # PBT copies the latest checkpoint of a top trial; keep a few for it.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=4),
        ),
    )
    tuner.fit()


def _stop_on_outcome(trial_id: str, result: Mapping[str, Any]) -> bool:
    return bool(result.get("hvadam_status"))


def _confirm(
    spec: CampaignSpec, runner: RunnerConfig, execution: Execution, poll: Callable[[], None] | None
) -> None:
    work = len(spec.labels) * spec.confirm_seeds + sweep_runs(spec)
    if work == 0:
        return
    tasks = min(work, execution.max_concurrent or work)
    remote = ray.remote(confirm_task).options(
        num_cpus=execution.cpus, num_gpus=execution.gpus, max_retries=0
    )
    pending = [remote.remote(spec, runner, execution) for _ in range(tasks)]
    while pending:
        done, pending = ray.wait(pending, timeout=1.0)
        try:
            ray.get(done)
        except Exception as exc:
            for task in pending:
                ray.cancel(task)
            raise RayError(f"a confirm task failed: {mask_text(_first_line(exc))}") from None
        if poll is not None:
            poll()


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0] if lines else type(exc).__name__
