"""User workloads written as one training function, the way Optuna users write objectives.

    def train(make_optimizer, *, seed, device, options, report):
        model = ...
        opt = make_optimizer(model.parameters())  # or a list of param-group dicts
        for epoch in range(options["epochs"]):
            ...
            report(epoch + 1, val_loss, train_loss=t)  # may raise to prune the trial
        return val_loss

named in a spec as `workload: {name: "my_tasks:train", metric: {name: val_loss, direction:
minimize}, options: {epochs: 3}}`. `FunctionWorkload` adapts such a function to the
`Workload` contract; `function_workload_class` checks the signature and makes the class.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

from studies.workloads._base import (
    Diverged,
    MakeOptimizer,
    OnEpoch,
    Option,
    OptionError,
    RunResult,
    Workload,
    report,
    resolve_device,
    seed_everything,
)

__all__ = [
    "FUNCTION_PARAMETERS",
    "FunctionWorkload",
    "WorkloadLoadError",
    "function_workload_class",
]

FUNCTION_PARAMETERS = ("seed", "device", "options", "report")
DIRECTIONS = ("minimize", "maximize")


class WorkloadLoadError(ValueError):
    """A workload name that does not resolve: unknown, not importable, or of the wrong shape."""


def _check_signature(name: str, fn: Callable[..., Any]) -> None:
    usage = "(make_optimizer, *, seed, device, options, report)"
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return  # a builtin or C function: trust it
    params = list(sig.parameters.values())
    kinds = inspect.Parameter
    if any(p.kind is kinds.VAR_KEYWORD for p in params):
        named = set(FUNCTION_PARAMETERS)
    else:
        named = {
            p.name for p in params if p.kind in (kinds.KEYWORD_ONLY, kinds.POSITIONAL_OR_KEYWORD)
        }
    missing = [p for p in FUNCTION_PARAMETERS if p not in named]
    positional = [
        p for p in params if p.kind in (kinds.POSITIONAL_ONLY, kinds.POSITIONAL_OR_KEYWORD)
    ]
    takes_first = bool(positional) or any(p.kind is kinds.VAR_POSITIONAL for p in params)
    first = positional[0] if positional else None
    extra = [
        p.name
        for p in params
        if p is not first
        and p.default is p.empty
        and p.kind not in (kinds.VAR_POSITIONAL, kinds.VAR_KEYWORD)
        and p.name not in FUNCTION_PARAMETERS
    ]
    problems = []
    if not takes_first:
        problems.append("no positional parameter for make_optimizer")
    if missing:
        problems.append(f"missing keyword parameter(s) {', '.join(missing)}")
    if extra:
        problems.append(f"required parameter(s) the runner does not pass: {', '.join(extra)}")
    if problems:
        raise WorkloadLoadError(
            f"workload {name!r}: the function must have the signature {usage}; "
            + "; ".join(problems)
        )


def function_workload_class(name: str, fn: Callable[..., Any]) -> type[FunctionWorkload]:
    """A `FunctionWorkload` subclass that runs `fn` (its signature checked first)."""
    _check_signature(name, fn)
    return type(
        f"FunctionWorkload[{name}]",
        (FunctionWorkload,),
        {"function": staticmethod(fn), "__module__": __name__},
    )


class FunctionWorkload(Workload):
    """A user's training function as a workload.

    `options` pass through to the function as a dict; `epochs` among them is the number of
    times the function calls `report` (the pruners' and schedulers' length; `budget.max_epochs`
    sets it). The metric's name and direction come from the spec (`workload.metric`).
    """

    function: ClassVar[Callable[..., Any]]
    unit = "epoch"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "epochs": Option(None, "int", "how many times the function calls report", low=1),
    }

    def __init__(
        self, name: str, *, metric: Mapping[str, Any] | None = None, **options: Any
    ) -> None:
        self.name = name
        # The class declares metric and direction per workload; a function workload's come from
        # its spec, so each instance carries its own.
        self.metric, self.direction = _parse_metric(name, metric)  # type: ignore[misc]
        if "epochs" not in options:
            raise OptionError(
                f"option 'epochs' is missing: a function workload ({name!r}) needs the number "
                "of times it calls report (workload.options.epochs, or budget.max_epochs)"
            )
        resolved = dict(options)
        resolved["epochs"] = self.OPTIONS["epochs"].check("epochs", options["epochs"])
        self.options = resolved
        self.max_epochs = resolved["epochs"]

    def describe(self) -> dict[str, Any]:
        return {**super().describe(), "function": self.name}

    def run(
        self,
        make_optimizer: MakeOptimizer,
        *,
        seed: int,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
    ) -> RunResult:
        seed_everything(seed)
        resolve_device(device)
        reported: dict[str, Any] = {}

        def report_fn(epoch: int, value: float, **metrics: float) -> None:
            if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
                raise ValueError(
                    f"report(epoch, value, ...): epoch must be an integer >= 1, got {epoch!r}"
                )
            value = float(value)
            if not math.isfinite(value):
                raise Diverged(epoch, f"{self.metric} is {value}")
            named = {str(k): float(v) for k, v in metrics.items()}
            for key, v in named.items():
                if not math.isfinite(v):
                    raise Diverged(epoch, f"{key} is {v}")
            named[self.metric] = value
            reported.update(epoch=epoch, value=value, metrics=named)
            report(on_epoch, epoch, value, named)

        out = type(self).function(
            make_optimizer,
            seed=seed,
            device=device,
            options=dict(self.options),
            report=report_fn,
        )
        return self._result(out, reported)

    def _result(self, out: Any, reported: Mapping[str, Any]) -> RunResult:
        if isinstance(out, RunResult):
            return out
        if out is None:
            if not reported:
                raise ValueError(
                    f"workload {self.name!r} returned None and never called report: return the "
                    f"final {self.metric}"
                )
            return RunResult(value=reported["value"], metrics=dict(reported["metrics"]))
        if isinstance(out, Mapping):
            if self.metric not in out:
                raise ValueError(
                    f"workload {self.name!r} returned a mapping without its metric "
                    f"{self.metric!r} (keys: {', '.join(map(str, out))})"
                )
            metrics = {str(k): float(v) for k, v in out.items()}
            return RunResult(value=metrics[self.metric], metrics=metrics)
        try:
            value = float(out)
        except (TypeError, ValueError):
            raise ValueError(
                f"workload {self.name!r} returned {type(out).__name__}; return the final "
                f"{self.metric} as a number (or a dict holding it, or a RunResult)"
            ) from None
        return RunResult(value=value, metrics={self.metric: value})


def _parse_metric(name: str, metric: Any) -> tuple[str, str]:
    usage = "{name: val_loss, direction: minimize}"
    if metric is None:
        raise WorkloadLoadError(
            f"workload {name!r} is a function: 'metric' is required, like {usage}"
        )
    if isinstance(metric, str):
        raise WorkloadLoadError(f"'metric' must be a mapping like {usage}, got {metric!r}")
    if not isinstance(metric, Mapping):
        raise WorkloadLoadError(f"'metric' must be a mapping like {usage}, got {metric!r}")
    unknown = sorted(set(map(str, metric)) - {"name", "direction"})
    if unknown:
        raise WorkloadLoadError(
            f"'metric' has unknown key(s) {', '.join(unknown)}; allowed: name, direction"
        )
    metric_name = metric.get("name")
    if not isinstance(metric_name, str) or not metric_name:
        raise WorkloadLoadError(f"'metric.name' must be a non-empty string, got {metric_name!r}")
    direction = metric.get("direction")
    if direction not in DIRECTIONS:
        raise WorkloadLoadError(
            f"'metric.direction' must be one of {', '.join(DIRECTIONS)}, got {direction!r}"
        )
    return metric_name, direction
