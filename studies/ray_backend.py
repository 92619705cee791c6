"""The Ray Tune backend: a campaign's search phase as Ray Tune runs, then its confirm phase on Ray.

`hvadam tune SPEC --backend ray [--address auto|HOST:PORT]` runs the same campaign as the Optuna
backend, in the same storage:

- search: one Tune run for the whole campaign. Its searcher hands each new trial to the
  optimizer with the fewest trials (optimizers advance together) and samples it with Ray's
  `OptunaSearch` on that optimizer's study `<campaign>/<optimizer>` in the campaign's storage
  (define-by-run with the optimizer's search space; the enqueued default config is trial 0),
  so optuna-dashboard shows the trials as they run. The scheduler (ASHA by default, PBT or
  FIFO) is one per optimizer: trials compete only with trials of the same optimizer, and PBT
  never copies one optimizer's state into another's trial.
- each trial runs in a Ray worker with the runner's trial execution and recording: the same
  `hvadam_runs` and `hvadam_curves` rows as the Optuna backend, with the same seeds; torch
  threads per trial equal its CPUs, and workers are reused from trial to trial.
- a trial that the scheduler ends early is not a full-budget result: its run row has status
  `stopped` (reason `asha: ...` or `pbt: ...`), its Optuna trial is PRUNED (with user attrs
  `stopped_by` and `stopped_at_epoch`), so neither the comparison nor the best config (which
  the confirm phase re-runs) ever uses it. A PBT trial that copied another trial's state is
  recorded the same way: its value belongs to a schedule of configs, not to its params.
- confirm: once an optimizer's search is done, its confirm runs follow as trials of the same
  Tune run, each the runner's confirm step (claims in the database: each seed exactly once,
  whoever runs it); any left open afterwards run as Ray tasks.
- a trial lost with its Ray worker, or left running by an interrupted driver, is failed and
  queued again with the same params and seed (one Ray driver works on a campaign at a time).

Without an address a local Ray is started for the command (sized to the machine) and shut
down after; with one, the command joins a running cluster. Ray is set up as the project needs:
`RAY_AUTH_MODE=disabled` (unless set), its own temporary directory, no change of working
directory per trial (`RAY_CHDIR_TO_TRIAL_DIR=0`), and torch threads per trial equal to its CPUs.
The storage URL reaches the trials as a Python argument (never in a trial config, which Ray
prints and stores); Ray's experiment directory, which holds pickled state, is a temporary
directory removed after the run.
"""

from __future__ import annotations

import contextlib
import math
import os
import shutil
import tempfile
import time
import traceback as tb_module
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import optuna
from optuna.storages import RetryHeartbeatStaleTrialCallback
from optuna.trial import TrialState

from studies.execution import Execution
from studies.results import ResultsDB, RunRow
from studies.runner import (
    MAX_RETRY,
    TRACEBACK_ATTR_LIMIT,
    CampaignError,
    Event,
    RunnerConfig,
    Worker,
    _Outcome,
    _quiet_optuna,
    campaign_complete,
    make_sampler,
    prepare_campaign,
    search_seed,
)
from studies.spec import CampaignSpec
from studies.storage import mask_text, optuna_storage, with_retries

__all__ = [
    "RAY_ENV",
    "RayError",
    "ray_session",
    "run_campaign_ray",
]

# What the project needs from Ray on every node (see the module docstring).
RAY_ENV = {
    "RAY_CHDIR_TO_TRIAL_DIR": "0",
    # Results live in the campaign database; Tune's per-trial CSV/JSON/TensorBoard files and
    # its warnings about them are not needed.
    "TUNE_DISABLE_AUTO_CALLBACK_LOGGERS": "1",
    "TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S": "0",
}
RAY_DEFAULT_ENV = {"RAY_AUTH_MODE": "disabled"}
# Where Ray Tune keeps experiment state; a shared directory is needed for PBT on many nodes.
RAY_STORAGE_ENV = "HVADAM_RAY_STORAGE"
METRIC = "objective"  # the key trials report their objective under (a workload metric may clash)
STATE_FILE = "state.pt"


class RayError(CampaignError):
    """Ray cannot be started or joined, or a Ray run cannot go on."""


# ---- Ray itself --------------------------------------------------------------------------------


def _set_ray_env() -> None:
    for key, value in RAY_DEFAULT_ENV.items():
        os.environ.setdefault(key, value)
    os.environ.update(RAY_ENV)
    # Ctrl-C interrupts the command (trials left running are failed and retried by the next
    # run), instead of Tune's graceful stop, which would go on to the confirm phase.
    os.environ["TUNE_DISABLE_SIGINT_HANDLER"] = "1"
    # Tune's console tables would interleave with the project's own progress lines.
    os.environ["RAY_AIR_NEW_OUTPUT"] = "0"
    import logging

    for name in ("ray.tune", "ray.train"):
        logging.getLogger(name).setLevel(logging.ERROR)


@contextlib.contextmanager
def ray_session(
    *, address: str | None = None, num_cpus: int | None = None, num_gpus: int | None = None
) -> Iterator[dict[str, float]]:
    """Ray for one command: join `address`, or start a local Ray sized to the machine.

    A Ray already initialised in this process (a test's) is used as it is and left running.
    Yields the cluster's resources (`CPU`, `GPU`, ...).
    """
    _set_ray_env()
    import ray

    if ray.is_initialized():
        yield ray.cluster_resources()
        return
    temp_dir = None
    kwargs: dict[str, Any] = dict(
        include_dashboard=False,
        log_to_driver=False,
        configure_logging=True,
        logging_level="ERROR",
        runtime_env={"env_vars": {**RAY_DEFAULT_ENV, **RAY_ENV}},
    )
    try:
        if address:
            ray.init(address=address, **kwargs)
        else:
            # A short path: Ray's socket names must fit in 107 bytes.
            temp_dir = tempfile.mkdtemp(
                prefix="hvray-", dir="/tmp" if os.path.isdir("/tmp") else None
            )
            ray.init(num_cpus=num_cpus, num_gpus=num_gpus, _temp_dir=temp_dir, **kwargs)
    except Exception as exc:
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)
        where = f"the Ray cluster at {address!r}" if address else "a local Ray"
        raise RayError(f"cannot start or join {where}: {mask_text(str(exc).strip())}") from None
    try:
        yield ray.cluster_resources()
    finally:
        ray.shutdown()
        if temp_dir:
            shutil.rmtree(temp_dir, ignore_errors=True)


# ---- the searcher (in the driver) --------------------------------------------------------------


LABEL_KEY = "hvadam_optimizer"  # the config key naming a trial's optimizer (its study)
PHASE_KEY = "hvadam_phase"  # search | confirm


def _study_searcher_class() -> type:
    from ray.tune.search.optuna import OptunaSearch

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
                sampler=make_sampler(spec, self.search_space, sampler_seed),
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
            if isinstance(value, (int, float)) and math.isfinite(value):
                with contextlib.suppress(Exception):  # a step reported before (a PBT resume)
                    trial.report(float(value), int(epoch))

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> bool:
            """Record how the trial ended; True when it was queued again (a retry)."""
            if trial_id in self._completed_trials or trial_id not in self._ot_trials:
                return False
            trial = self._ot_trials[trial_id]
            result = result or {}
            status = result.get("hvadam_status")
            value = result.get(METRIC)
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
                with_retries(lambda: self._ot_study.tell(trial, None, state=TrialState.FAIL))
                self._completed_trials.add(trial_id)
                if retried:
                    frozen = self._ot_study._storage.get_trial(trial._trial_id)
                    with warnings.catch_warnings():
                        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                        retry = RetryHeartbeatStaleTrialCallback(max_retry=MAX_RETRY)
                    retry(self._ot_study, frozen)
                return retried
            else:
                state = TrialState.PRUNED
                epoch = int(result.get("hvadam_epoch", 0))
                shown = f" ({self.metric_name}={value:.6g})" if _finite(value) else ""
                reason = (
                    f"{self.scheduler_name}: stopped by the scheduler at epoch {epoch} of "
                    f"{self.max_epochs}{shown}; not a full-budget result"
                )
                if _finite(value) and epoch:
                    # Tune does not pass the result that stopped a trial to on_trial_result.
                    with contextlib.suppress(Exception):
                        trial.report(float(value), epoch)
                trial.set_user_attr("stopped_by", self.scheduler_name)
                trial.set_user_attr("stopped_at_epoch", epoch)
                trial.set_user_attr("prune_reason", reason)
                self._finish_row(result, "stopped", reason)
            with_retries(lambda: self._ot_study.tell(trial, values, state=state))
            self._completed_trials.add(trial_id)
            return False

        def _finish_row(self, result: dict[str, Any], status: str, reason: str) -> None:
            run_id = result.get("hvadam_run_id")
            if run_id is not None:
                _finish_if_running(
                    self.storage_url,
                    int(run_id),
                    status=status,
                    reason=reason,
                    wall_time=result.get("hvadam_wall"),
                )

        # Tune checkpoints its searcher into the experiment directory; this one's state is the
        # Optuna study itself (in the campaign's storage), so nothing is written there (and
        # with it, no storage URL).
        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_bytes(b"")

        def restore(self, checkpoint_path: str) -> None:
            return None

    return StudySearch


def _campaign_searcher_class() -> type:
    from ray.tune.search import Searcher

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
        ) -> None:
            mode = next(iter(subs.values())).mode
            super().__init__(metric=METRIC, mode=mode)
            self.subs = subs
            self.asks = dict(asks)
            self.used = dict(used)
            self.running = dict.fromkeys(subs, 0)
            self.order = list(subs)
            self.labels: dict[str, str] = {}
            self.confirm_seeds = confirm_seeds
            self.confirm_queue = [
                label for label in self.order if not asks[label] for _ in range(confirm_seeds)
            ]

        def set_search_properties(self, metric: Any, mode: Any, config: Any, **spec: Any) -> bool:
            return True

        def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
            if self.confirm_queue:
                return {LABEL_KEY: self.confirm_queue.pop(0), PHASE_KEY: "confirm"}
            open_labels = [label for label in self.order if self.asks[label] > 0]
            if not open_labels:
                # Nothing to search; wait while searches run (their confirm runs follow).
                return None if any(self.running.values()) else Searcher.FINISHED
            label = min(open_labels, key=lambda lab: (self.used[lab], self.order.index(lab)))
            config = self.subs[label].suggest(trial_id)
            self.asks[label] -= 1
            self.used[label] += 1
            self.running[label] += 1
            self.labels[trial_id] = label
            return {**config, LABEL_KEY: label, PHASE_KEY: "search"}

        def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
            if trial_id in self.labels:
                self.subs[self.labels[trial_id]].on_trial_result(trial_id, result)

        def on_trial_complete(
            self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
        ) -> None:
            label = self.labels.pop(trial_id, None)
            if label is None:
                return  # a confirm trial
            if self.subs[label].on_trial_complete(trial_id, result, error):
                self.asks[label] += 1  # the retry (queued in the study) still has to run
            self.running[label] -= 1
            if not self.asks[label] and not self.running[label]:
                self.confirm_queue.extend([label] * self.confirm_seeds)

        def save(self, checkpoint_path: str) -> None:
            Path(checkpoint_path).write_bytes(b"")

        def restore(self, checkpoint_path: str) -> None:
            return None

    return CampaignSearch


def _label_of(trial: Any) -> str | None:
    return (trial.config or {}).get(LABEL_KEY)


class _OptimizerView:
    """The Tune controller as one optimizer's scheduler sees it: only that optimizer's trials.

    It also hides the searcher: PBT refuses to run beside one because the searcher does not
    know the configs PBT changes; here every trial PBT changes is recorded as not a
    full-budget result of its params (see the module docstring), so the two can work together.
    """

    def __init__(self, controller: Any, label: str) -> None:
        self._controller = controller
        self._label = label

    @property
    def search_alg(self) -> None:
        return None

    def get_trials(self) -> list[Any]:
        return [t for t in self._controller.get_trials() if _label_of(t) == self._label]

    def get_live_trials(self) -> set[Any]:
        return {t for t in self._controller.get_live_trials() if _label_of(t) == self._label}

    def __getattr__(self, name: str) -> Any:
        return getattr(self._controller, name)


def _scheduler_class() -> type:
    from ray.tune.schedulers import TrialScheduler

    class PerOptimizerScheduler(TrialScheduler):
        """One scheduler per optimizer (ASHA rungs, PBT populations): trials compete only
        with trials of the same optimizer, and PBT never copies one optimizer's state into
        another's trial."""

        def __init__(self, subs: dict[str, Any], stops: set[str]) -> None:
            from ray.tune.schedulers import FIFOScheduler

            super().__init__()
            self.subs = subs
            self.stops = stops  # trial ids this scheduler stopped (shared with the searcher)
            self.confirm = FIFOScheduler()  # confirm trials: one run each, never stopped
            self._metric = METRIC
            self._turn = 0

        def _sub(self, controller: Any, trial: Any) -> tuple[Any, Any]:
            label = _label_of(trial)
            if (trial.config or {}).get(PHASE_KEY) == "confirm":
                return self.confirm, controller
            return self.subs[label], _OptimizerView(controller, label)

        def set_search_properties(self, metric: Any, mode: Any, **spec: Any) -> bool:
            return True

        def on_trial_add(self, controller: Any, trial: Any) -> None:
            sub, view = self._sub(controller, trial)
            sub.on_trial_add(view, trial)

        def on_trial_error(self, controller: Any, trial: Any) -> None:
            sub, view = self._sub(controller, trial)
            sub.on_trial_error(view, trial)

        def on_trial_result(self, controller: Any, trial: Any, result: dict[str, Any]) -> str:
            sub, view = self._sub(controller, trial)
            decision = sub.on_trial_result(view, trial, result)
            if decision == TrialScheduler.STOP:
                self.stops.add(trial.trial_id)
            return decision

        def on_trial_complete(self, controller: Any, trial: Any, result: dict[str, Any]) -> None:
            sub, view = self._sub(controller, trial)
            sub.on_trial_complete(view, trial, result)

        def on_trial_remove(self, controller: Any, trial: Any) -> None:
            sub, view = self._sub(controller, trial)
            sub.on_trial_remove(view, trial)

        def choose_trial_to_run(self, controller: Any) -> Any:
            for trial in controller.get_trials():
                if trial.status == "PENDING" and (trial.config or {}).get(PHASE_KEY) == "confirm":
                    return trial
            labels = list(self.subs)
            for i in range(len(labels)):
                label = labels[(self._turn + i) % len(labels)]
                trial = self.subs[label].choose_trial_to_run(_OptimizerView(controller, label))
                if trial is not None:
                    self._turn = (self._turn + i + 1) % len(labels)
                    return trial
            return None

        def debug_string(self) -> str:
            return "one scheduler per optimizer: " + ", ".join(
                f"{label}: {type(sub).__name__}" for label, sub in self.subs.items()
            )

        def save(self, checkpoint_path: str) -> None:
            return None

        def restore(self, checkpoint_path: str) -> None:
            return None

    return PerOptimizerScheduler


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _finish_if_running(
    storage: str, run_id: int, *, status: str, reason: str, wall_time: float | None
) -> None:
    """End a run row that is still `running` (one a scheduler stopped, or a lost trial's)."""
    import sqlalchemy as sa

    from studies.results import _now

    db = ResultsDB(storage)

    def txn() -> None:
        with db.engine.begin() as conn:
            conn.execute(
                sa.update(RunRow)
                .where(RunRow.id == run_id, RunRow.status == "running")
                .values(status=status, reason=reason, wall_time=wall_time, finished_at=_now())
            )

    with_retries(txn)


# ---- the trial (in a Ray worker) ---------------------------------------------------------------


class RayTrialWorker(Worker):
    """The runner's worker, running single search trials for Ray Tune and confirm steps.

    Curves are written at every epoch, since a scheduler may end a trial at any report.
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        self.curve_flush_interval = 0.0

    def _own_trial(self, label: str, ray_trial_id: str) -> optuna.trial.FrozenTrial:
        study = self.studies[label]
        deadline = time.monotonic() + 30.0
        while True:
            for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
                if t.user_attrs.get("ray_trial_id") == ray_trial_id:
                    return t
            if time.monotonic() > deadline:
                raise RayError(f"no running Optuna trial for Ray trial {ray_trial_id}")
            time.sleep(0.2)

    def run_ray_trial(self, label: str, config: dict[str, Any], execution: Execution) -> None:
        """One search trial: the config Ray's searcher chose, reported epoch by epoch."""
        import torch
        from ray import tune

        import hvadam
        from studies.workloads import Diverged

        frozen = self._own_trial(label, tune.get_context().get_trial_id())
        trial_id, number = frozen._trial_id, frozen.number
        seed = int(frozen.user_attrs["seed"])
        space = self.spaces[label]
        params = dict(config)
        hp = space.to_hyperparameters(params)
        pbt = execution.scheduler == "pbt"
        max_epochs = self.workload.max_epochs
        maximize = self.workload.direction == "maximize"

        run_id, resume, lineage = None, None, list(frozen.user_attrs.get("pbt_lineage", []))
        checkpoint = tune.get_checkpoint()
        if checkpoint is not None:
            with checkpoint.as_directory() as folder:
                saved = torch.load(
                    Path(folder) / STATE_FILE, map_location="cpu", weights_only=False
                )
            resume = saved["state"]
            if saved["trial_number"] == number:
                run_id = saved["run_id"]  # the same trial resumed (paused, then run again)
            else:
                # PBT exploit: this trial continues from another trial's state, with new params.
                previous = frozen.user_attrs.get("run_id")
                step = {"epoch": int(saved["epoch"]), "from_trial": int(saved["trial_number"])}
                if previous is not None:
                    _finish_if_running(
                        self.config.storage,
                        int(previous),
                        status="stopped",
                        reason=(
                            f"pbt: replaced at epoch {step['epoch']} by the state of trial "
                            f"#{step['from_trial']} (exploit); not a full-budget result"
                        ),
                        wall_time=None,
                    )
                lineage.append(step)
                self.rdb.set_trial_user_attr(trial_id, "pbt_lineage", lineage)
                self.rdb.set_trial_user_attr(trial_id, "stopped_by", "pbt")
        if run_id is None:
            run_id = self.db.start_run(
                campaign=self.spec.name,
                study=self.spec.study_name(label),
                optimizer=label,
                trial_number=number,
                phase="search",
                seed=seed,
                device=self.device,
                hyperparameters=hvadam.resolve_hyperparameters(space.optimizer, **hp),
            )
            self.rdb.set_trial_user_attr(trial_id, "run_id", run_id)
        start = time.perf_counter()
        last = {"value": None}

        def on_report(rep: Any) -> None:
            if rep.epoch >= max_epochs or not math.isfinite(rep.value):
                return  # the last epoch is reported with the run's outcome, below
            last["value"] = rep.value
            metrics = {
                **{k: v for k, v in rep.metrics.items() if _finite(v)},
                METRIC: rep.value,
                "hvadam_epoch": rep.epoch,
                "hvadam_run_id": run_id,
                "hvadam_wall": time.perf_counter() - start,
            }
            if pbt and rep.state is not None:
                with tempfile.TemporaryDirectory(prefix="hvadam-ckpt-") as folder:
                    torch.save(
                        {
                            "trial_number": number,
                            "run_id": run_id,
                            "epoch": rep.epoch,
                            "state": rep.state(),
                        },
                        Path(folder) / STATE_FILE,
                    )
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)

        outcome = _Outcome()
        status, reason, value, text = "complete", None, None, None
        options = {"resume": resume} if resume is not None else None
        try:
            self._execute(space, hp, seed, run_id, on_report, outcome, run_options=options)
            value = float(outcome.result.value)
            if not math.isfinite(value):
                status, reason = "pruned", f"non-finite objective value {value}"
        except Diverged as exc:
            status, reason = "pruned", f"diverged at epoch {exc.epoch}: {exc.detail}"
        except Exception as exc:
            status, reason = "failed", mask_text(f"{type(exc).__name__}: {exc}")
            text = mask_text(tb_module.format_exc())
        result = outcome.result
        if status == "complete" and lineage:
            status = "stopped"
            reason = (
                "pbt: trained with a schedule of configs (copied state of trial "
                + ", #".join(f"#{s['from_trial']} at epoch {s['epoch']}" for s in lineage)
                + "); not a full-budget result of its params"
            )
        if status == "pruned":
            self.rdb.set_trial_user_attr(trial_id, "prune_reason", reason)
        elif status == "failed":
            self.rdb.set_trial_user_attr(trial_id, "fail_reason", reason)
            self.rdb.set_trial_user_attr(trial_id, "traceback", text[-TRACEBACK_ATTR_LIMIT:])
        elif status == "stopped":
            self.rdb.set_trial_user_attr(trial_id, "prune_reason", reason)
        extras = None if result is None else dict(result.extras or {})
        if extras is not None and lineage:
            extras["pbt_lineage"] = lineage
        self.db.finish_run(
            run_id,
            status=status,
            wall_time=outcome.wall_time,
            value=value if status in ("complete", "stopped") else None,
            reason=reason,
            traceback=text,
            metrics=None if result is None else result.metrics,
            extras=extras,
        )
        reported = value if _finite(value) else last["value"]
        if not _finite(reported):
            reported = -math.inf if maximize else math.inf
        tune.report(
            {
                METRIC: reported,
                "hvadam_status": status,
                "hvadam_epoch": max_epochs,
                "hvadam_run_id": run_id,
                "hvadam_wall": outcome.wall_time,
            }
        )


_WORKERS: dict[tuple[str, str, int | None, str | None], RayTrialWorker] = {}


def _worker(spec: CampaignSpec, config: RunnerConfig, execution: Execution) -> RayTrialWorker:
    # One worker per process: with actor reuse a Ray worker runs many trials, and the studies,
    # engines and workload data are opened once. Torch threads = the trial's CPUs.
    threads = max(1, int(execution.cpus))
    key = (spec.spec_hash, config.storage, threads, config.device)
    if key not in _WORKERS:
        _WORKERS[key] = RayTrialWorker(
            spec, RunnerConfig(storage=config.storage, threads=threads, device=config.device)
        )
    return _WORKERS[key]


def _trainable(
    config: dict[str, Any], *, spec: CampaignSpec, runner: RunnerConfig, execution: Execution
) -> None:
    _quiet_optuna()
    from ray import tune

    worker = _worker(spec, runner, execution)
    params = dict(config)
    label = params.pop(LABEL_KEY)
    if params.pop(PHASE_KEY, "search") == "confirm":
        ran = worker._confirm_step()  # the runner's confirm phase: one claimed run
        tune.report({METRIC: 0.0, "hvadam_status": "confirm", "hvadam_ran": int(ran)})
        return
    worker.run_ray_trial(label, params, execution)


def _confirm_task(spec: CampaignSpec, runner: RunnerConfig, execution: Execution) -> int:
    """Run confirm work items until none is left for this task; returns how many it ran."""
    _quiet_optuna()
    worker = _worker(spec, runner, execution)
    done = 0
    while worker._confirm_step():
        done += 1
    return done


# ---- the driver --------------------------------------------------------------------------------


def _scheduler(execution: Execution, space: Any, max_epochs: int, mode: str) -> Any:
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, PopulationBasedTraining

    if execution.scheduler == "asha":
        return ASHAScheduler(
            time_attr="training_iteration",
            metric=METRIC,
            mode=mode,
            # The last epoch arrives with the run's outcome; that report is never a rung.
            max_t=max(1, max_epochs),
            grace_period=min(execution.grace_period, max(1, max_epochs)),
            reduction_factor=execution.reduction_factor,
        )
    if execution.scheduler == "pbt":
        mutations, bounds = pbt_mutations(space)
        if not mutations:
            raise RayError(
                f"ray.scheduler pbt: the search space of {space.optimizer!r} has no "
                f"unconditional numeric parameter to perturb"
            )

        def clip(config: dict[str, Any]) -> dict[str, Any]:
            for name, (low, high, integer) in bounds.items():
                if name in config:
                    value = min(max(config[name], low), high)
                    config[name] = round(value) if integer else float(value)
            return config

        return PopulationBasedTraining(
            time_attr="training_iteration",
            metric=METRIC,
            mode=mode,
            perturbation_interval=execution.perturbation_interval,
            hyperparam_mutations=mutations,
            quantile_fraction=execution.quantile_fraction,
            custom_explore_fn=clip,
            log_config=False,
        )
    return FIFOScheduler()


def pbt_mutations(space: Any) -> tuple[dict[str, Any], dict[str, tuple[float, float, bool]]]:
    """PBT's mutations: the space's unconditional numeric parameters, with their bounds."""
    mutations, bounds = {}, {}
    for name, spec in space.params.items():
        if spec.conditional or spec.search_only or spec.kind not in ("float", "int"):
            continue
        mutations[name] = spec.ray_domain()
        bounds[name] = (spec.low, spec.high, spec.kind == "int")
    return mutations, bounds


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
        with_retries(lambda t=t: worker.rdb.set_trial_state_values(t._trial_id, TrialState.FAIL))
        worker._retry(study, worker.rdb.get_trial(t._trial_id))
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


def _poll_callback(poll: Callable[[], None] | None) -> Any:
    from ray.tune import Callback

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
    execution = execution or spec.execution or Execution()
    if workers > 1 and execution.max_concurrent is None:
        execution = execution.with_changes(max_concurrent=workers)
    prepare_campaign(spec, config.storage)
    _quiet_optuna()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
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
                counts = driver._counts(label)
                asks[label] = max(0, spec.trials - counts.used) + counts.waiting
                used[label] = counts.used - counts.waiting
            if sum(asks.values()) or not campaign_complete(spec, config.storage):
                _search(
                    spec,
                    config.storage,
                    execution,
                    asks=asks,
                    used=used,
                    workload=driver.workload,
                    device=config.device,
                    experiments=experiments,
                    poll=poll,
                )
            # Confirm runs left open (a confirm trial that failed): run them as Ray tasks.
            if not campaign_complete(spec, config.storage):
                _confirm(
                    spec,
                    RunnerConfig(storage=config.storage, device=config.device),
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
    storage: str,
    execution: Execution,
    *,
    asks: dict[str, int],
    used: dict[str, int],
    workload: Any,
    device: str | None,
    experiments: Path,
    poll: Callable[[], None] | None,
) -> None:
    """The search phase of every optimizer with budget left, in one Tune run."""
    from ray import tune

    mode = "max" if workload.direction == "maximize" else "min"
    study_search = _study_searcher_class()
    subs, schedulers = {}, {}
    stops: set[str] = set()
    for i, label in enumerate(spec.labels):
        subs[label] = study_search(
            spec=spec,
            label=label,
            storage=storage,
            scheduler=execution.scheduler,
            direction=workload.direction,
            sampler_seed=(spec.seed * 7919 + i * 104729) % 2**31,
            scheduler_stops=stops,
        )
        schedulers[label] = _scheduler(
            execution, subs[label].search_space, workload.max_epochs, mode
        )
    trainable = tune.with_resources(
        tune.with_parameters(
            _trainable,
            spec=spec,
            runner=RunnerConfig(storage=storage, device=device),
            execution=execution,
        ),
        {"cpu": execution.cpus, "gpu": execution.gpus},
    )
    tuner = tune.Tuner(
        trainable,
        tune_config=tune.TuneConfig(
            search_alg=_campaign_searcher_class()(subs, asks, used, spec.confirm_seeds),
            scheduler=_scheduler_class()(schedulers, stops),
            # The searcher ends the run; the extra room is for retried trials.
            num_samples=2 * sum(asks.values()) + len(spec.labels) * spec.confirm_seeds,
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


def _stop_on_outcome(trial_id: str, result: dict[str, Any]) -> bool:
    return bool(result.get("hvadam_status"))


def _confirm(
    spec: CampaignSpec, runner: RunnerConfig, execution: Execution, poll: Callable[[], None] | None
) -> None:
    import ray

    work = len(spec.labels) * spec.confirm_seeds
    if work == 0:
        return
    tasks = min(work, execution.max_concurrent or work)
    remote = ray.remote(_confirm_task).options(
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
    return lines[-1] if lines else type(exc).__name__
