"""The Tune scheduler of a Ray run: one scheduler per optimizer (ASHA, PBT or FIFO).

Trials compete only with trials of the same optimizer, PBT never copies one optimizer's state
into another's trial, and confirm trials run first-in first-out, never stopped.
"""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import (
    ASHAScheduler,
    FIFOScheduler,
    PopulationBasedTraining,
    TrialScheduler,
)

from search_spaces import SearchSpace
from studies.execution import Execution
from studies.ray_backend.session import LABEL_KEY, METRIC, PHASE_KEY, RayError

__all__ = ["PerOptimizerScheduler", "make_scheduler", "pbt_mutations"]


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


class PerOptimizerScheduler(TrialScheduler):
    """One scheduler per optimizer (ASHA rungs, PBT populations): trials compete only
    with trials of the same optimizer, and PBT never copies one optimizer's state into
    another's trial."""

    def __init__(self, subs: dict[str, Any], stops: set[str]) -> None:
        super().__init__()
        self.subs = subs
        self.stops = stops  # trial ids this scheduler stopped (shared with the searcher)
        self.confirm = FIFOScheduler()  # confirm trials: one run each, never stopped
        self._metric = METRIC
        self._turn = 0

    def _sub(self, controller: Any, trial: Any) -> tuple[Any, Any]:
        label = _label_of(trial)
        if (trial.config or {}).get(PHASE_KEY) == "confirm" or label is None:
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


def make_scheduler(
    execution: Execution, space: SearchSpace, max_epochs: int, mode: str
) -> TrialScheduler:
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


def pbt_mutations(
    space: SearchSpace,
) -> tuple[dict[str, Any], dict[str, tuple[float, float, bool]]]:
    """PBT's mutations: the space's unconditional numeric parameters, with their bounds."""
    mutations, bounds = {}, {}
    for name, spec in space.params.items():
        if spec.conditional or spec.search_only or spec.kind not in ("float", "int"):
            continue
        assert spec.low is not None and spec.high is not None  # numeric: bounds required
        mutations[name] = spec.ray_domain()
        bounds[name] = (spec.low, spec.high, spec.kind == "int")
    return mutations, bounds
