"""The `schedule:` block: a learning-rate schedule searched jointly with an optimizer's space.

A campaign spec's ``schedule:`` (or an optimizer entry's) is ``true`` / ``search`` (the default
block below), ``false`` (none), or a mapping that narrows the default block::

    schedule: {kinds: [cosine], warmup: [0, 0.05]}       # search warm-up and min_lr_ratio
    schedule: {kind: cosine, warmup: 0.05}               # fix kind and warm-up

Each field is a range ``[low, high]`` searched uniformly, or a number that fixes it; ``kind``
fixes the kind, ``kinds`` lists the kinds searched. Searched fields become parameters of the
optimizer's `SearchSpace` named ``schedule.<field>`` (``min_lr_ratio`` only when the kind is
``cosine``, ``gamma`` and ``every`` only when it is ``step``); they are `search_only`, so
`SearchSpace.to_hyperparameters` leaves them out and `SearchSpace.to_schedule` assembles them.
See docs/schedules.md.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping
from typing import Any

from hvadam.schedules import DEFAULTS, KINDS, ScheduleError, check_schedule
from search_spaces.schema import ParamSpec, SpaceError, is_number
from search_spaces.space import SearchSpace

__all__ = [
    "DEFAULT_BLOCK",
    "PREFIX",
    "parse_block",
    "schedule_params",
    "spec_block",
    "with_schedule",
]

PREFIX = "schedule."
# What `schedule: true` searches.
DEFAULT_BLOCK: dict[str, Any] = {
    "kinds": list(KINDS),
    "warmup": [0.0, 0.1],
    "min_lr_ratio": [0.0, 0.2],
    "gamma": [0.1, 0.5],
    "every": [0.2, 0.5],
}
_FIELDS = ("warmup", "min_lr_ratio", "gamma", "every")
_KIND_OF = {"min_lr_ratio": "cosine", "gamma": "step", "every": "step"}
_KEYS = ("kind", "kinds", *_FIELDS)


def _fail(source: str, key: str, problem: str) -> SpaceError:
    return SpaceError(source, f"{PREFIX}{key}" if key else "schedule", problem)


def parse_block(value: Any, *, source: str = "schedule") -> dict[str, Any] | None:
    """A `schedule:` value as a complete block (``kinds`` and every field of those kinds, each a
    number or a ``[low, high]`` range), or None for ``false``/null. Errors name the key."""
    if value is None or value is False:
        return None
    if value is True or value == "search":
        return parse_block({}, source=source)
    if not isinstance(value, Mapping):
        raise _fail(
            source,
            "",
            f"must be true, search, false, or a mapping with keys {', '.join(_KEYS)}; "
            f"got {value!r}",
        )
    unknown = sorted(str(k) for k in value if k not in _KEYS)
    if unknown:
        raise _fail(source, unknown[0], f"unknown key; allowed: {', '.join(_KEYS)}")
    if "kind" in value and "kinds" in value:
        raise _fail(source, "kind", "give `kind` (one kind) or `kinds` (a list), not both")
    kinds = [value["kind"]] if "kind" in value else value.get("kinds", DEFAULT_BLOCK["kinds"])
    key = "kind" if "kind" in value else "kinds"
    if not isinstance(kinds, list) or not kinds:
        raise _fail(source, key, f"must be a non-empty list of {', '.join(KINDS)}; got {kinds!r}")
    for kind in kinds:
        if kind not in KINDS:
            raise _fail(source, key, f"must be one of {', '.join(KINDS)}, got {kind!r}")
    if len(set(kinds)) != len(kinds):
        raise _fail(source, key, f"lists a kind twice: {kinds!r}")
    block: dict[str, Any] = {"kinds": list(kinds)}
    for field in _FIELDS:
        owner = _KIND_OF.get(field)
        if owner is not None and owner not in kinds:
            if field in value:
                raise _fail(
                    source,
                    field,
                    f"only for {owner!r} schedules, and the kinds searched are {', '.join(kinds)}",
                )
            continue
        block[field] = _field(source, field, value.get(field, DEFAULT_BLOCK[field]))
    return block


def spec_block(body: Mapping[str, Any], key: str, fail: Callable[[str, str], Exception]) -> Any:
    """A campaign spec's `schedule:` value in `body` as written (null as false), checked; None
    when not given. A problem raises ``fail("<key>.<field>", problem)``."""
    if "schedule" not in body:
        return None
    value = copy.deepcopy(body["schedule"])
    try:
        parse_block(value)
    except SpaceError as exc:
        raise fail(f"{key}{str(exc.param).removeprefix('schedule')}", exc.problem) from None
    return False if value is None else value


def _field(source: str, field: str, raw: Any) -> Any:
    def check(number: Any) -> float:
        try:
            check_schedule(
                {"kind": _KIND_OF.get(field, "constant"), field: number}, source="schedule"
            )
        except ScheduleError as exc:
            raise _fail(source, field, str(exc).split(": ", 1)[1]) from None
        return float(number)

    if is_number(raw):
        return check(raw)
    if isinstance(raw, list) and len(raw) == 2 and all(is_number(v) for v in raw):
        low, high = check(raw[0]), check(raw[1])
        if low > high:
            raise _fail(source, field, f"the range [{low!r}, {high!r}] has low above high")
        return low if low == high else [low, high]
    raise _fail(source, field, f"must be a number or a range [low, high], got {raw!r}")


def schedule_params(block: Mapping[str, Any]) -> tuple[list[ParamSpec], dict[str, Any]]:
    """The searched parameters (``schedule.<field>``) and the fixed schedule values of a block
    from `parse_block`."""
    kinds = list(block["kinds"])
    specs: list[ParamSpec] = []
    fixed: dict[str, Any] = {}
    if len(kinds) == 1:
        fixed["kind"] = kinds[0]
    else:
        default = "constant" if "constant" in kinds else kinds[0]
        specs.append(
            ParamSpec(
                name=f"{PREFIX}kind",
                kind="categorical",
                choices=tuple(kinds),
                default=default,
                search_only=True,
                description="learning-rate schedule",
            )
        )
    for field in _FIELDS:
        if field not in block:
            continue
        value = block[field]
        if not isinstance(value, list):
            fixed[field] = value
            continue
        low, high = value
        owner = _KIND_OF.get(field)
        when = {f"{PREFIX}kind": (owner,)} if owner is not None and len(kinds) > 1 else {}
        preferred = DEFAULTS.get(owner or "", {}).get(field, 0.0)
        specs.append(
            ParamSpec(
                name=f"{PREFIX}{field}",
                kind="float",
                low=low,
                high=high,
                default=preferred if low <= preferred <= high else low,
                when=when,
                search_only=True,
                description=f"schedule {field}",
            )
        )
    return specs, fixed


def with_schedule(space: SearchSpace, value: Any, *, source: str | None = None) -> SearchSpace:
    """`space` with the schedule block `value` (a `schedule:` value) added; `space` itself when
    `value` is false/None."""
    block = parse_block(value, source=source or space.source)
    if block is None:
        return space
    clash = [name for name in space.params if name.startswith(PREFIX)]
    if clash:
        raise _fail(source or space.source, clash[0][len(PREFIX) :], "already in the space")
    specs, fixed = schedule_params(block)
    return SearchSpace(
        optimizer=space.optimizer,
        params=[*space.params.values(), *specs],
        fixed=space.fixed,
        source=space.source,
        description=space.description,
        schedule=fixed,
    )
