"""2-D test functions (the HVAdam paper's valley, Rosenbrock, Rastrigin, Beale) with trajectories.

The optimizer moves one point (x, y) for `steps` steps; every `report_every` steps is one report.
The run records the path, the start, the minimum and a plotting window in `extras`, so a report
can draw the trajectory over a contour plot of the function.

`run_valley` is the same problem without a campaign around it: f at every step of one
optimizer, for the optimizer tests (the paper's demonstration).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from studies.workloads._base import (
    MakeOptimizer,
    OnEpoch,
    Option,
    OptionError,
    RunResult,
    Workload,
    check_finite,
    current_lr,
    epoch_metrics,
    report,
    resolve_device,
    seed_everything,
)
from studies.workloads._schedule import lr_schedule


@dataclass(frozen=True)
class TestFunction:
    fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    start: tuple[float, float]
    minima: tuple[tuple[float, float], ...]
    minimum_value: float
    window: tuple[tuple[float, float], tuple[float, float]]  # (x range, y range) for plots
    formula: str


def _valley(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return 4 * (x - y).abs() + (x + y).abs()


def _rosenbrock(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1 - x) ** 2 + 100 * (y - x**2) ** 2


def _rastrigin(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    tau = 2 * math.pi
    return 20 + x**2 - 10 * torch.cos(tau * x) + y**2 - 10 * torch.cos(tau * y)


def _beale(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return (1.5 - x + x * y) ** 2 + (2.25 - x + x * y**2) ** 2 + (2.625 - x + x * y**3) ** 2


FUNCTIONS: dict[str, TestFunction] = {
    # The HVAdam paper's non-smooth valley: the minimum lies at the bottom of a narrow ridge.
    "valley": TestFunction(
        _valley, (8.0, 7.5), ((0.0, 0.0),), 0.0, ((-10.0, 10.0), (-10.0, 10.0)),
        "4|x-y| + |x+y|",
    ),
    "rosenbrock": TestFunction(
        _rosenbrock, (-1.2, 1.0), ((1.0, 1.0),), 0.0, ((-2.0, 2.0), (-1.0, 3.0)),
        "(1-x)^2 + 100 (y-x^2)^2",
    ),
    "rastrigin": TestFunction(
        _rastrigin, (-2.0, 3.5), ((0.0, 0.0),), 0.0, ((-4.5, 4.5), (-4.5, 4.5)),
        "20 + x^2 - 10 cos(2 pi x) + y^2 - 10 cos(2 pi y)",
    ),
    "beale": TestFunction(
        _beale, (1.0, 1.5), ((3.0, 0.5),), 0.0, ((-4.5, 4.5), (-4.5, 4.5)),
        "(1.5-x+xy)^2 + (2.25-x+xy^2)^2 + (2.625-x+xy^3)^2",
    ),
}  # fmt: skip


class Valley2D(Workload):
    """Minimise a 2-D test function from its usual start; the metric is the final f(x, y).

    The point lives in float64 (these are precise, tiny problems). `step_time` is the mean
    seconds per step (forward, backward and optimizer step).
    """

    metric = "function_value"
    direction = "minimize"
    unit = "step"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "function": Option("valley", "str", "which test function", choices=tuple(FUNCTIONS)),
        "steps": Option(3000, "int", "optimizer steps", low=1),
        "report_every": Option(100, "int", "steps per report (one 'epoch')", low=1),
        "start": Option(None, "float_list", "start point [x, y]; null: the function's usual one", nullable=True),
        "trajectory_points": Option(1000, "int", "at most this many recorded points (subsampled)", low=2),
    }  # fmt: skip

    def _configure(self) -> None:
        start = self.options["start"]
        if start is not None and len(start) != 2:
            raise OptionError(f"option 'start' must have two numbers [x, y], got {start!r}")
        if start is None:
            self.options["start"] = list(FUNCTIONS[self.options["function"]].start)
        self.max_epochs = math.ceil(self.options["steps"] / self.options["report_every"])

    def run(
        self,
        make_optimizer: MakeOptimizer,
        *,
        seed: int,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
    ) -> RunResult:
        seed_everything(seed)  # the problem is deterministic; seeded for stochastic optimizers
        dev = resolve_device(device)
        func = FUNCTIONS[self.options["function"]]
        steps, every = self.options["steps"], self.options["report_every"]
        stride = max(1, math.ceil(steps / (self.options["trajectory_points"] - 1)))

        point = torch.nn.Parameter(
            torch.tensor(self.options["start"], dtype=torch.float64, device=dev)
        )
        optimizer = make_optimizer([point])
        schedule = lr_schedule(make_optimizer, optimizer, steps)
        path: list[list[float]] = [[float(v) for v in point.detach().cpu()]]
        path_steps = [0]
        with torch.no_grad():
            value = float(func.fn(point[0], point[1]))

        for chunk in range(1, self.max_epochs + 1):
            first, last = (chunk - 1) * every + 1, min(chunk * every, steps)
            losses, elapsed = 0.0, 0.0
            lr_used = current_lr(optimizer)
            for step in range(first, last + 1):
                t0 = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                loss = func.fn(point[0], point[1])
                loss.backward()
                optimizer.step()
                schedule.step()
                elapsed += time.perf_counter() - t0
                loss_value = float(loss.detach())
                check_finite(loss_value, epoch=chunk, what=f"f(x, y) at step {step}")
                losses += loss_value
                if step % stride == 0 or step == steps:
                    xy = [float(v) for v in point.detach().cpu()]
                    if not all(math.isfinite(v) for v in xy):
                        check_finite(math.nan, epoch=chunk, what=f"(x, y) at step {step}")
                    path.append(xy)
                    path_steps.append(step)
            with torch.no_grad():
                value = float(func.fn(point[0], point[1]))
            check_finite(value, epoch=chunk, what=f"f(x, y) after step {last}")
            metrics = epoch_metrics(
                optimizer,
                train_loss=losses / (last - first + 1),
                step_time=elapsed / (last - first + 1),
                function_value=value,
                distance=self._distance(point, func),
                step=last,
            )
            metrics["lr"] = lr_used
            report(on_epoch, chunk, value, metrics)

        final = {
            "function_value": value,
            "distance": self._distance(point, func),
            "gap": value - func.minimum_value,
        }
        extras: dict[str, Any] = {
            "function": self.options["function"],
            "formula": func.formula,
            "start": list(self.options["start"]),
            "minimum": [list(m) for m in func.minima],
            "minimum_value": func.minimum_value,
            "window": [list(func.window[0]), list(func.window[1])],
            "trajectory": path,
            "trajectory_steps": path_steps,
        }
        return RunResult(value=value, metrics=final, extras=extras)

    @staticmethod
    def _distance(point: torch.Tensor, func: TestFunction) -> float:
        xy = point.detach().cpu()
        return min(math.dist((float(xy[0]), float(xy[1])), m) for m in func.minima)


@dataclass(frozen=True)
class ValleyRun:
    """One optimisation of a test function: the points visited and f along the way."""

    trajectory: list[tuple[float, float]]  # the start, then the point after every step
    values: list[float]  # f at each point of `trajectory`

    @property
    def final(self) -> float:
        return self.values[-1]

    @property
    def best(self) -> float:
        return min(self.values)


def run_valley(
    optimizer_factory: Callable[[Iterable[torch.Tensor], float], torch.optim.Optimizer],
    steps: int,
    *,
    function: str = "valley",
    start: tuple[float, float] | None = None,
    lr: float = 1e-2,
    dtype: torch.dtype = torch.float64,
) -> ValleyRun:
    """Minimise `function` (the paper's valley, f = 4|x - y| + |x + y|, by default) from `start`
    (the function's usual one: (8, 7.5) for the valley) for `steps` steps with
    `optimizer_factory(params, lr)`, recording every point and f there."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    if function not in FUNCTIONS:
        raise ValueError(f"function must be one of {', '.join(FUNCTIONS)}, got {function!r}")
    func = FUNCTIONS[function]
    point = torch.tensor(start or func.start, dtype=dtype, requires_grad=True)
    optimizer = optimizer_factory([point], lr)

    def here() -> tuple[tuple[float, float], float]:
        x, y = point.detach()
        return (float(x), float(y)), float(func.fn(x, y))

    xy, value = here()
    trajectory, values = [xy], [value]
    for _ in range(steps):
        optimizer.zero_grad()
        func.fn(point[0], point[1]).backward()
        optimizer.step()
        xy, value = here()
        trajectory.append(xy)
        values.append(value)
    return ValleyRun(trajectory=trajectory, values=values)
