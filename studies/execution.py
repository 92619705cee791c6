"""How a campaign's trials are placed: resources per trial, concurrency, and Ray Tune's scheduler.

Optional spec keys, read by the Ray backend (`hvadam tune --backend ray`)::

    resources: {cpus: 1, gpus: 0.5}   # per trial; fractions of a GPU share one device
    max_concurrent: 4                 # at most this many trials at once (default: as resources allow)
    ray:
      scheduler: asha                 # asha | pbt | fifo (default: asha; fifo with `pruner: none`)
      grace_period: 1                 # asha: epochs every trial runs before it can be stopped
      reduction_factor: 3             # asha: keep the best 1/reduction_factor at each rung
      perturbation_interval: 2        # pbt: epochs between exploit/explore steps
      quantile_fraction: 0.25         # pbt: bottom share that copies the top share

These say where and how trials run, not what is measured, so (like `--workers`) they are not
part of the spec hash: a campaign can be continued with other resources.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

__all__ = ["EXECUTION_KEYS", "RAY_KEYS", "SCHEDULERS", "Execution", "parse_execution"]

EXECUTION_KEYS = ("resources", "max_concurrent", "ray")
RESOURCE_KEYS = ("cpus", "gpus")
RAY_KEYS = (
    "scheduler",
    "grace_period",
    "reduction_factor",
    "perturbation_interval",
    "quantile_fraction",
)
SCHEDULERS = ("asha", "pbt", "fifo")


@dataclass(frozen=True)
class Execution:
    """Resources per trial, the concurrency limit and the Ray Tune scheduler of a campaign."""

    cpus: float = 1.0
    gpus: float = 0.0
    max_concurrent: int | None = None
    scheduler: str | None = None  # None: chosen by the spec's pruner (see `for_pruner`)
    grace_period: int = 1
    reduction_factor: int = 3
    perturbation_interval: int = 2
    quantile_fraction: float = 0.25

    def with_changes(self, **changes: Any) -> Execution:
        """A copy with the given fields replaced (command-line overrides); None keeps a field."""
        values = {**self.__dict__, **{k: v for k, v in changes.items() if v is not None}}
        return parse_execution(
            {
                "resources": {"cpus": values["cpus"], "gpus": values["gpus"]},
                "max_concurrent": values["max_concurrent"],
                "ray": {k: values[k] for k in RAY_KEYS if values[k] is not None},
            }
        )

    def for_pruner(self, pruner: str) -> Execution:
        """This execution with its scheduler chosen: the one the spec or the command line
        named, else ASHA, or FIFO (no early stopping) when the spec's pruner is `none`."""
        if self.scheduler is not None:
            return self
        return replace(self, scheduler="fifo" if pruner == "none" else "asha")


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def parse_execution(
    data: Mapping[str, Any], fail: Callable[[str, str], Exception] | None = None
) -> Execution:
    """Validate the execution keys of a spec (`resources`, `max_concurrent`, `ray`).

    `fail(key, problem)` builds the exception to raise (the spec parser's, naming the spec);
    by default a `ValueError` naming the key.
    """
    if fail is None:

        def fail(key: str, problem: str) -> Exception:
            return ValueError(f"{key}: {problem}")

    out: dict[str, Any] = {}
    resources = data.get("resources")
    if resources is not None:
        if not isinstance(resources, Mapping):
            raise fail(
                "resources", f"must be a mapping like {{cpus: 1, gpus: 0.5}}, got {resources!r}"
            )
        extra = sorted(set(map(str, resources)) - set(RESOURCE_KEYS))
        if extra:
            raise fail(f"resources.{extra[0]}", f"unknown key; allowed: {', '.join(RESOURCE_KEYS)}")
        if "cpus" in resources:
            cpus = resources["cpus"]
            if not _number(cpus) or cpus <= 0:
                raise fail("resources.cpus", f"must be a number > 0 (CPUs per trial), got {cpus!r}")
            out["cpus"] = float(cpus)
        if "gpus" in resources:
            gpus = resources["gpus"]
            if not _number(gpus) or gpus < 0 or (gpus > 1 and not float(gpus).is_integer()):
                raise fail(
                    "resources.gpus",
                    "must be 0, a fraction in (0, 1] (trials share a GPU) or a whole number of "
                    f"GPUs per trial, got {gpus!r}",
                )
            out["gpus"] = float(gpus)
    limit = data.get("max_concurrent")
    if limit is not None:
        if isinstance(limit, bool) or not isinstance(limit, int) or limit < 1:
            raise fail("max_concurrent", f"must be an integer >= 1, got {limit!r}")
        out["max_concurrent"] = limit
    ray = data.get("ray")
    if ray is not None:
        if not isinstance(ray, Mapping):
            raise fail("ray", f"must be a mapping like {{scheduler: asha}}, got {ray!r}")
        extra = sorted(set(map(str, ray)) - set(RAY_KEYS))
        if extra:
            raise fail(f"ray.{extra[0]}", f"unknown key; allowed: {', '.join(RAY_KEYS)}")
        if "scheduler" in ray:
            scheduler = ray["scheduler"]
            if scheduler not in SCHEDULERS:
                raise fail(
                    "ray.scheduler",
                    f"unknown scheduler {scheduler!r}; allowed: {', '.join(SCHEDULERS)}",
                )
            out["scheduler"] = scheduler
        for key, low in (
            ("grace_period", 1),
            ("reduction_factor", 2),
            ("perturbation_interval", 1),
        ):
            if key in ray:
                value = ray[key]
                if isinstance(value, bool) or not isinstance(value, int) or value < low:
                    raise fail(f"ray.{key}", f"must be an integer >= {low}, got {value!r}")
                out[key] = value
        if "quantile_fraction" in ray:
            q = ray["quantile_fraction"]
            if not _number(q) or not 0 < q <= 0.5:
                raise fail("ray.quantile_fraction", f"must be a number in (0, 0.5], got {q!r}")
            out["quantile_fraction"] = float(q)
    return Execution(**out)
