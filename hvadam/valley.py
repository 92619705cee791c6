"""The paper's 2-D demonstration: a narrow diagonal valley, f(x, y) = 4|x - y| + |x + y|.

The minimum is at the origin; from (8, 7.5) the gradient points mostly across the valley, so an
optimizer has to find the direction along it. HVAdam's hidden vector is meant to do that.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import torch

__all__ = ["ValleyRun", "run_valley", "valley"]


def valley(point: torch.Tensor) -> torch.Tensor:
    """f(x, y) = 4|x - y| + |x + y| at `point` = (x, y)."""
    x, y = point[0], point[1]
    return 4.0 * torch.abs(x - y) + torch.abs(x + y)


@dataclass(frozen=True)
class ValleyRun:
    """One optimisation of the valley: the points visited and f along the way."""

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
    start: tuple[float, float] = (8.0, 7.5),
    lr: float = 1e-2,
    dtype: torch.dtype = torch.float64,
) -> ValleyRun:
    """Minimise the valley from `start` for `steps` steps with `optimizer_factory(params, lr)`."""
    if steps < 0:
        raise ValueError(f"steps must be >= 0, got {steps}")
    point = torch.tensor(start, dtype=dtype, requires_grad=True)
    optimizer = optimizer_factory([point], lr)
    trajectory = [tuple(float(c) for c in point.detach())]
    values = [float(valley(point.detach()))]
    for _ in range(steps):
        optimizer.zero_grad()
        valley(point).backward()
        optimizer.step()
        trajectory.append(tuple(float(c) for c in point.detach()))
        values.append(float(valley(point.detach())))
    return ValleyRun(trajectory=trajectory, values=values)  # type: ignore[arg-type]
