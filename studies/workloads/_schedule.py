"""The searched learning-rate schedule, applied by a workload through one helper: `lr_schedule`.

A trial hands the workload a `make_optimizer` (an `OptimizerFactory`) that carries the schedule
sampled with the optimizer's hyperparameters, or None when the campaign searches none. A workload
calls, once it knows its total number of optimizer steps::

    optimizer = make_optimizer(model.parameters())
    schedule = lr_schedule(make_optimizer, optimizer, total_steps)
    builtin = None if schedule.active else MultiStepLR(optimizer, ...)  # the workload's own
    for ...:
        optimizer.step()
        schedule.step()                                                 # after every step

Without a searched schedule `schedule` does nothing and the workload keeps its own; with one,
the searched schedule replaces it. A run whose campaign searches a schedule fails when the
workload never calls `lr_schedule` (studies/trial.py checks `schedule_applied`), so a schedule
is never silently ignored. See docs/schedules.md.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

__all__ = ["LrSchedule", "OptimizerFactory", "lr_schedule"]


class OptimizerFactory:
    """`make_optimizer` as a trial passes it: builds the optimizer and carries the searched
    learning-rate schedule (`schedule`, or None) and whether the workload applied it."""

    def __init__(
        self,
        build: Callable[[Any], torch.optim.Optimizer],
        schedule: Mapping[str, Any] | None = None,
    ) -> None:
        self._build = build
        self.schedule = None if schedule is None else dict(schedule)
        self.schedule_applied = False

    def __call__(
        self, params: Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]
    ) -> torch.optim.Optimizer:
        return self._build(params)


class LrSchedule:
    """What `lr_schedule` returns: `step()` after each optimizer step; a no-op when inactive."""

    def __init__(self, scheduler: torch.optim.lr_scheduler.LambdaLR | None) -> None:
        self.scheduler = scheduler

    @property
    def active(self) -> bool:
        """Whether a searched schedule drives the learning rate (then the workload's own must not)."""
        return self.scheduler is not None

    def step(self) -> None:
        if self.scheduler is not None:
            self.scheduler.step()


def lr_schedule(
    make_optimizer: Callable[..., Any],
    optimizer: torch.optim.Optimizer,
    total_steps: int,
    *,
    start_step: int = 0,
) -> LrSchedule:
    """The run's searched learning-rate schedule over `optimizer`, `total_steps` steps long.

    `make_optimizer` is what the workload was given (a plain function means no schedule).
    `start_step`: the optimizer steps already taken (a run resumed from a checkpoint); the
    learning rate is set for the next one. The schedule multiplies the learning rate each
    param group has now (the sampled one), as `hvadam.load_schedule` does.
    """
    from hvadam.schedules import lr_lambda

    schedule = getattr(make_optimizer, "schedule", None)
    if schedule is None:
        return LrSchedule(None)
    factor = lr_lambda(schedule, int(total_steps))
    for group in optimizer.param_groups:
        lr = group["lr"]  # a resumed state may carry an older `initial_lr`
        group["initial_lr"] = lr.clone() if isinstance(lr, torch.Tensor) else lr
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, factor, last_epoch=start_step - 1)
    if isinstance(make_optimizer, OptimizerFactory):
        make_optimizer.schedule_applied = True
    return LrSchedule(scheduler)
