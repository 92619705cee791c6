"""The small keys of a campaign spec: `budget`, `confirm` and `target` (studies/spec.py parses
the rest). Each parser takes the key's value and `fail(key, problem)`, which builds the
`SpecError` naming the key."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = [
    "BUDGET_KEYS",
    "CONFIRM_KEYS",
    "MAX_CONFIRM_SEEDS",
    "parse_budget",
    "parse_confirm",
    "parse_target",
]

BUDGET_KEYS = ("trials", "seconds", "max_epochs")
CONFIRM_KEYS = ("seeds",)
# Confirm runs per optimizer: each is a full training run; a thousand is far beyond any use.
MAX_CONFIRM_SEEDS = 1000


def parse_budget(budget: Any, fail: Any) -> tuple[int | None, float | None, int | None]:
    """`budget: {trials, seconds, max_epochs}` -> (trials, seconds, max_epochs); at least one of
    trials and seconds (studies/budget.py)."""
    if not isinstance(budget, Mapping):
        raise fail("budget", f"must be a mapping like {{trials: 20}}, got {budget!r}")
    extra = sorted(set(map(str, budget)) - set(BUDGET_KEYS))
    if extra:
        raise fail(f"budget.{extra[0]}", f"unknown key; allowed: {', '.join(BUDGET_KEYS)}")
    if "trials" not in budget and "seconds" not in budget:
        raise fail(
            "budget.trials",
            "missing: give budget.trials (trials per optimizer), budget.seconds (search seconds "
            "per optimizer) or both",
        )
    trials = _positive_int(budget["trials"], "budget.trials", fail) if "trials" in budget else None
    seconds = _positive_seconds(budget["seconds"], fail) if "seconds" in budget else None
    max_epochs = budget.get("max_epochs")
    if max_epochs is not None:
        max_epochs = _positive_int(max_epochs, "budget.max_epochs", fail)
    return trials, seconds, max_epochs


def parse_confirm(confirm: Any, fail: Any) -> int:
    """`confirm: {seeds: K}` -> K, in [0, MAX_CONFIRM_SEEDS]."""
    if not isinstance(confirm, Mapping):
        raise fail("confirm", f"must be a mapping like {{seeds: 3}}, got {confirm!r}")
    extra = sorted(set(map(str, confirm)) - set(CONFIRM_KEYS))
    if extra:
        raise fail(f"confirm.{extra[0]}", f"unknown key; allowed: {', '.join(CONFIRM_KEYS)}")
    seeds = confirm.get("seeds", 3)
    if isinstance(seeds, bool) or not isinstance(seeds, int) or not 0 <= seeds <= MAX_CONFIRM_SEEDS:
        raise fail(
            "confirm.seeds", f"must be an integer in [0, {MAX_CONFIRM_SEEDS}], got {seeds!r}"
        )
    return seeds


def _positive_int(value: Any, key: str, fail: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise fail(key, f"must be an integer >= 1, got {value!r}")
    return value


def parse_target(data: Mapping[str, Any], fail: Any) -> float | None:
    """The spec's `target: {value: V}` -> V (None without the key)."""
    if "target" not in data:
        return None
    target = data["target"]
    if not isinstance(target, Mapping):
        raise fail("target", f"must be a mapping like {{value: 0.1}}, got {target!r}")
    extra = sorted(set(map(str, target)) - {"value"})
    if extra:
        raise fail(f"target.{extra[0]}", "unknown key; allowed: value")
    if "value" not in target:
        raise fail("target.value", "missing (the metric value to reach)")
    value = target["value"]
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise fail("target.value", f"must be a finite number, got {value!r}")
    return float(value)


def _positive_seconds(value: Any, fail: Any) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value <= 0:
        raise fail("budget.seconds", f"must be a number of seconds > 0, got {value!r}")
    return float(value)
