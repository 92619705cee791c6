"""Hyperparameter checks shared by the project's optimizers: one message form for every range."""

from __future__ import annotations

import math
from typing import Any

from torch import Tensor


def real(owner: str, name: str, value: Any) -> float:
    """`value` as a float; a ValueError naming `owner.name` unless it is a real number."""
    if isinstance(value, Tensor) and value.numel() == 1:
        value = value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"{owner}: {name} must be a real number, got {value!r}")
    return float(value)


def in_range(owner: str, name: str, value: Any, low: float, high: float) -> float:
    """`value` in [low, high) (NaN never is); a ValueError naming the field and the range."""
    number = real(owner, name, value)
    if not low <= number < high:
        raise ValueError(f"{owner}: {name} must be in [{low:g}, {high:g}), got {number}")
    return number


def check_common(owner: str, hp: dict[str, Any], flags: tuple[str, ...]) -> None:
    """The checks every optimizer of the project makes: lr, betas, eps, adaptivity, weight
    decay, the boolean `flags` and `foreach`."""
    in_range(owner, "lr", hp["lr"], 0.0, math.inf)
    betas = hp["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{owner}: betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        in_range(owner, f"betas[{i}]", beta, 0.0, 1.0)
    in_range(owner, "eps", hp["eps"], 0.0, math.inf)
    adaptivity = real(owner, "adaptivity", hp["adaptivity"])
    if not math.isfinite(adaptivity):
        raise ValueError(f"{owner}: adaptivity must be a finite real number, got {adaptivity}")
    in_range(owner, "weight_decay", hp["weight_decay"], 0.0, math.inf)
    for name in flags:
        if not isinstance(hp[name], bool):
            raise ValueError(f"{owner}: {name} must be True or False, got {hp[name]!r}")
    if hp["foreach"] not in (None, True, False):
        raise ValueError(f"{owner}: foreach must be None, True or False, got {hp['foreach']!r}")
