"""Learning-rate schedules: constant, step and cosine, each with an optional linear warm-up.

A schedule is a small mapping (the ``schedule:`` key of an ``hvadam-config/1`` file)::

    schedule: {kind: cosine, warmup: 0.05, min_lr_ratio: 0.1}

Lengths are fractions of the run's total optimizer steps, so one config transfers between runs
of different lengths. With ``T`` total steps and ``W = round(warmup * T)`` warm-up steps, the
multiplier of the base learning rate at step ``s`` (0-based; the learning rate used by the
``s``-th optimizer step) is:

- warm-up, ``s < W``: ``(s + 1) / W`` (linear, reaching 1 at the last warm-up step);
- after it, with progress ``p = (s - W) / (T - W)`` in ``[0, 1)``:
  - ``constant``: ``1``;
  - ``step``: ``gamma ** floor(p / every)`` (decay by ``gamma`` each ``every`` of progress);
  - ``cosine``: ``r + (1 - r) * (1 + cos(pi * p)) / 2`` with ``r = min_lr_ratio``.

Steps past ``T`` keep the last step's multiplier. `load_schedule` builds the
`torch.optim.lr_scheduler.LambdaLR` of a config, to be stepped once after each optimizer step.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

__all__ = [
    "DEFAULTS",
    "KINDS",
    "ScheduleError",
    "check_schedule",
    "load_schedule",
    "lr_lambda",
    "warmup_steps",
]

KINDS = ("constant", "step", "cosine")
# The fields of each kind (besides `kind` and `warmup`) and their defaults.
DEFAULTS: dict[str, dict[str, float]] = {
    "constant": {},
    "step": {"gamma": 0.1, "every": 0.5},
    "cosine": {"min_lr_ratio": 0.0},
}
_RANGES = {
    "warmup": (0.0, 1.0, "a fraction of the total steps in [0, 1)"),
    "gamma": (0.0, 1.0, "a number in (0, 1]"),
    "every": (0.0, 1.0, "a fraction of the steps after warm-up in (0, 1]"),
    "min_lr_ratio": (0.0, 1.0, "a number in [0, 1]"),
}


class ScheduleError(ValueError):
    """An invalid schedule; the message names the field and what is allowed."""


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _in_range(field: str, value: float) -> bool:
    low, high, _ = _RANGES[field]
    if field == "warmup":
        return low <= value < high
    if field in ("gamma", "every"):
        return low < value <= high
    return low <= value <= high


def check_schedule(schedule: Any, *, source: str = "schedule") -> dict[str, Any]:
    """Validate a schedule mapping; returns it complete (`kind`, `warmup` and the kind's fields,
    defaults filled in). Raises `ScheduleError` naming ``<source>.<field>`` and what is allowed."""
    if not isinstance(schedule, Mapping):
        raise ScheduleError(
            f"{source}: must be a mapping like {{kind: cosine, warmup: 0.05}}, got {schedule!r}"
        )
    kind = schedule.get("kind", "constant")
    if kind not in KINDS:
        raise ScheduleError(f"{source}.kind: must be one of {', '.join(KINDS)}, got {kind!r}")
    allowed = ("kind", "warmup", *DEFAULTS[kind])
    unknown = sorted(str(k) for k in schedule if k not in allowed)
    if unknown:
        raise ScheduleError(
            f"{source}.{unknown[0]}: not a field of a {kind!r} schedule; "
            f"allowed: {', '.join(allowed)}"
        )
    out: dict[str, Any] = {"kind": kind, "warmup": 0.0, **DEFAULTS[kind]}
    for field in allowed[1:]:
        if field not in schedule:
            continue
        value = schedule[field]
        if not _number(value) or not _in_range(field, float(value)):
            raise ScheduleError(f"{source}.{field}: must be {_RANGES[field][2]}, got {value!r}")
        out[field] = float(value)
    return out


def warmup_steps(schedule: Mapping[str, Any], total_steps: int) -> int:
    """The warm-up's length in steps: ``round(warmup * total_steps)``."""
    return round(float(schedule.get("warmup", 0.0)) * total_steps)


def lr_lambda(schedule: Mapping[str, Any], total_steps: int) -> Callable[[int], float]:
    """The multiplier of the base learning rate by step (0-based), for `LambdaLR`.

    `schedule` is validated (`ScheduleError` naming the field); `total_steps` is the run's
    number of optimizer steps (an integer >= 1).
    """
    if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
        raise ScheduleError(f"total_steps: must be an integer >= 1, got {total_steps!r}")
    config = check_schedule(schedule)
    kind = config["kind"]
    warm = warmup_steps(config, total_steps)
    rest = max(1, total_steps - warm)

    def factor(step: int) -> float:
        step = min(int(step), total_steps - 1)
        if step < warm:
            return (step + 1) / warm
        progress = (step - warm) / rest
        if kind == "step":
            # The small slack keeps a decay at progress == k * every from being lost to rounding.
            return float(config["gamma"] ** math.floor(progress / config["every"] + 1e-9))
        if kind == "cosine":
            floor = config["min_lr_ratio"]
            return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
        return 1.0

    return factor


def load_schedule(
    optimizer: torch.optim.Optimizer,
    config: str | Path | Mapping[str, Any],
    total_steps: int,
) -> torch.optim.lr_scheduler.LambdaLR:
    """The learning-rate schedule a config describes, over `optimizer`, for `total_steps` steps.

    `config` is an ``hvadam-config/1`` mapping or file path (as for `hvadam.load_optimizer`);
    its ``schedule:`` key gives the schedule, and a config without one gives a constant
    schedule. Call ``scheduler.step()`` once after each ``optimizer.step()``.
    """
    import torch

    from hvadam.config import load_config

    validated = load_config(config)
    schedule = validated.get("schedule") or {"kind": "constant"}
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lr_lambda(schedule, total_steps))
