"""What runs in a Ray worker: one search trial reported to Tune, or confirm and sweep runs.

A search trial is the shared trial path (`studies.trial`: start its run row, run, classify,
record) with Ray's side added: every epoch's report goes to Tune (with a checkpoint under PBT),
and the outcome is Tune's last report. A PBT trial that continued from another trial's state is
recorded as `stopped`: its value belongs to a schedule of configs, not to its params. Curves are
written at every epoch, since a scheduler may end a trial at any report.
"""

from __future__ import annotations

import math
import tempfile
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

import optuna
from optuna.trial import TrialState

from studies.budget import warm_up
from studies.campaign import quiet_optuna
from studies.execution import Execution
from studies.ray_backend.session import LABEL_KEY, METRIC, PHASE_KEY, STATE_FILE, RayError
from studies.results import is_finite_number
from studies.spec import CampaignSpec
from studies.sweep import sweep_step
from studies.trial import record, trial_user_attrs
from studies.worker import RunnerConfig, Worker

if TYPE_CHECKING:
    from studies.workloads import EpochReport


__all__ = ["RayTrialWorker", "confirm_task", "load_checkpoint", "save_checkpoint", "trainable"]


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    """Write a PBT checkpoint: trial number, run id, epoch and the workload's state."""
    import torch

    torch.save(state, Path(path))


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """Read a PBT checkpoint without running code from it.

    Checkpoints live in a directory other machines write (PBT on a cluster shares it), so they
    are read with `weights_only=True`: tensors, numbers, strings and containers of them, which
    is all a checkpoint holds. A file that asks to import or call anything is refused.
    """
    import torch

    try:
        saved = torch.load(Path(path), map_location="cpu", weights_only=True)
    except Exception as exc:
        first = next((line for line in str(exc).splitlines() if line.strip()), type(exc).__name__)
        raise RayError(f"PBT checkpoint {str(path)!r} refused: {first.strip()}") from None
    if not isinstance(saved, dict) or not {"trial_number", "run_id", "epoch", "state"} <= set(
        saved
    ):
        raise RayError(f"PBT checkpoint {str(path)!r} is not one this project wrote")
    return saved


class RayTrialWorker(Worker):
    """The runner's worker, running single search trials for Ray Tune and confirm steps."""

    def __post_init__(self) -> None:
        super().__post_init__()
        self.curve_flush_interval = 0.0
        warm_up(self.spaces)  # as `Worker.run` does: no trial's time pays for torch's imports

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

    def _resume(
        self, frozen: optuna.trial.FrozenTrial, lineage: list[dict[str, int]]
    ) -> tuple[int | None, Any]:
        """A checkpoint to resume from: (the run id if it is this trial's own, the state)."""
        from ray import tune

        checkpoint = tune.get_checkpoint()
        if checkpoint is None:
            return None, None
        with checkpoint.as_directory() as folder:
            saved = load_checkpoint(Path(folder) / STATE_FILE)
        if saved["trial_number"] == frozen.number:
            return saved["run_id"], saved["state"]  # the same trial resumed (paused, then run)
        # PBT exploit: this trial continues from another trial's state, with new params.
        previous = frozen.user_attrs.get("run_id")
        step = {"epoch": int(saved["epoch"]), "from_trial": int(saved["trial_number"])}
        if previous is not None:
            self.db.finish_if_running(
                int(previous),
                status="stopped",
                reason=(
                    f"pbt: replaced at epoch {step['epoch']} by the state of trial "
                    f"#{step['from_trial']} (exploit); not a full-budget result"
                ),
            )
        lineage.append(step)
        self.rdb.set_trial_user_attr(frozen._trial_id, "pbt_lineage", lineage)
        self.rdb.set_trial_user_attr(frozen._trial_id, "stopped_by", "pbt")
        return None, saved["state"]

    def run_ray_trial(self, label: str, config: dict[str, Any], execution: Execution) -> None:
        """One search trial: the config Ray's searcher chose, reported epoch by epoch."""
        from ray import tune

        frozen = self._own_trial(label, tune.get_context().get_trial_id())
        trial_id, number = frozen._trial_id, frozen.number
        seed = int(frozen.user_attrs["seed"])
        params = dict(config)
        pbt = execution.scheduler == "pbt"
        max_epochs = self.workload.max_epochs
        maximize = self.workload.direction == "maximize"

        lineage: list[dict[str, int]] = list(frozen.user_attrs.get("pbt_lineage", []))
        run_id, resume = self._resume(frozen, lineage)
        if run_id is None:
            run_id = self._start(label, params, number, "search", seed)
            self.rdb.set_trial_user_attr(trial_id, "run_id", run_id)
        start = time.perf_counter()
        last: dict[str, float | None] = {"value": None}

        def on_report(rep: EpochReport) -> None:
            if rep.epoch >= max_epochs or not math.isfinite(rep.value):
                return  # the last epoch is reported with the run's outcome, below
            last["value"] = rep.value
            metrics = {
                **{k: v for k, v in rep.metrics.items() if is_finite_number(v)},
                METRIC: rep.value,
                "hvadam_epoch": rep.epoch,
                "hvadam_run_id": run_id,
                "hvadam_wall": time.perf_counter() - start,
            }
            if pbt and rep.state is not None:
                with tempfile.TemporaryDirectory(prefix="hvadam-ckpt-") as folder:
                    state = {
                        "trial_number": number,
                        "run_id": run_id,
                        "epoch": rep.epoch,
                        "state": rep.state(),
                    }
                    save_checkpoint(Path(folder) / STATE_FILE, state)
                    tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(folder))
            else:
                tune.report(metrics)

        options = {"resume": resume} if resume is not None else None
        outcome = self._run(label, params, run_id, seed, on_report=on_report, run_options=options)
        if outcome.status == "complete" and lineage:
            outcome = outcome.stopped(
                "pbt: trained with a schedule of configs (copied state of trial "
                + ", #".join(f"#{s['from_trial']} at epoch {s['epoch']}" for s in lineage)
                + "); not a full-budget result of its params"
            )
        for key, value in trial_user_attrs(outcome).items():
            self.rdb.set_trial_user_attr(trial_id, key, value)
        record(self.db, run_id, outcome, extras={"pbt_lineage": lineage} if lineage else None)
        self.live.run_finished("search", label)
        # Tune's side of the outcome: its last report, which ends the trial.
        reported = outcome.value if is_finite_number(outcome.value) else last["value"]
        if not is_finite_number(reported):
            reported = -math.inf if maximize else math.inf
        tune.report(
            {
                METRIC: reported,
                "hvadam_status": outcome.status,
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
            spec,
            RunnerConfig(
                storage=config.storage,
                threads=threads,
                device=config.device,
                artifacts=config.artifacts,
            ),
        )
    return _WORKERS[key]


def trainable(
    config: dict[str, Any], *, spec: CampaignSpec, runner: RunnerConfig, execution: Execution
) -> None:
    """Tune's function trainable: a search trial, or one claimed confirm run."""
    quiet_optuna()
    from ray import tune

    worker = _worker(spec, runner, execution)
    params = dict(config)
    label = params.pop(LABEL_KEY)
    if params.pop(PHASE_KEY, "search") == "confirm":
        ran = worker.confirm_step()  # the runner's confirm phase: one claimed run
        tune.report({METRIC: 0.0, "hvadam_status": "confirm", "hvadam_ran": int(ran)})
        return
    worker.run_ray_trial(label, params, execution)


def confirm_task(spec: CampaignSpec, runner: RunnerConfig, execution: Execution) -> int:
    """Run confirm, then sweep, work items until none is left for this task; returns how many
    it ran."""
    quiet_optuna()
    worker = _worker(spec, runner, execution)
    done = 0
    while worker.confirm_step() or sweep_step(worker):
        done += 1
    return done
