"""The search-space file format: reading a YAML file and validating every parameter spec in it.

A file has the top-level keys ``optimizer`` (required), ``description``, ``params`` and
``fixed``. ``params`` maps a parameter name to a spec (a mapping); ``fixed`` maps an optimizer
keyword to a constant. See docs/search_spaces.md for the format with an example.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hvadam.yamlfile import DuplicateKeyError, load_yaml

__all__ = ["KINDS", "MISSING", "ParamSpec", "SpaceError", "read_yaml"]

KINDS = ("float", "int", "categorical")
TOP_LEVEL_KEYS = ("optimizer", "description", "params", "fixed")
SPEC_KEYS = {
    "float": (
        "kind",
        "low",
        "high",
        "log",
        "step",
        "default",
        "when",
        "search_only",
        "description",
    ),
    "int": ("kind", "low", "high", "log", "step", "default", "when", "search_only", "description"),
    "categorical": ("kind", "choices", "default", "when", "search_only", "description"),
}
# `betas.0` fills element 0 of the optimizer keyword `betas` (a tuple).
NAME_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[0-9]+)?\Z")
_REL_TOL = 1e-9


class SpaceError(ValueError):
    """A search-space file (or an override) is invalid; says which file, parameter and problem."""

    def __init__(self, source: str, param: str | None, problem: str) -> None:
        self.source = source
        self.param = param
        self.problem = problem
        where = f"{source}: parameter {param!r}" if param is not None else source
        super().__init__(f"{where}: {problem}")


class _Missing:
    """Marks a parameter that declares no default (only allowed where no default is needed)."""

    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


# --------------------------------------------------------------------------------------------
# YAML


def read_yaml(path: Path, source: str) -> Any:
    """Parse a YAML file with the search-space loader; errors become `SpaceError`."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpaceError(source, None, f"cannot read the file: {exc}") from exc
    try:
        return load_yaml(text)
    except DuplicateKeyError as exc:
        raise SpaceError(
            source, str(exc.key), f"duplicate name (line {exc.line}): each name may appear once"
        ) from None
    except yaml.YAMLError as exc:
        raise SpaceError(source, None, f"not valid YAML: {exc}") from exc


# --------------------------------------------------------------------------------------------
# Values


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def same_value(a: Any, b: Any) -> bool:
    """Equality that keeps `True` apart from `1` (YAML choices mix bools and numbers)."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if a is None or b is None:
        return a is b
    if isinstance(a, str) or isinstance(b, str):
        return isinstance(a, str) and isinstance(b, str) and a == b
    return a == b


def _is_multiple(value: float, step: float) -> bool:
    ratio = value / step
    return math.isclose(ratio, round(ratio), rel_tol=_REL_TOL, abs_tol=1e-9)


def check_name(source: str, name: Any, what: str = "parameter") -> str:
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise SpaceError(
            source,
            str(name),
            f"invalid {what} name: use an identifier, optionally with an index suffix "
            "like `betas.0`",
        )
    return name


# --------------------------------------------------------------------------------------------
# Parameter specs


@dataclass(frozen=True)
class ParamSpec:
    """One searched parameter: its distribution, its default and its condition.

    ``when`` maps an earlier parameter's name to the tuple of values for which this parameter
    exists (all entries must hold). ``search_only`` parameters steer the search (typically a
    switch that other parameters are conditional on) and are not optimizer keywords.
    """

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] | None = None
    default: Any = MISSING
    when: Mapping[str, tuple[Any, ...]] = field(default_factory=dict)
    search_only: bool = False
    description: str | None = None

    @property
    def conditional(self) -> bool:
        return bool(self.when)

    @property
    def has_default(self) -> bool:
        return self.default is not MISSING

    @property
    def keyword(self) -> str:
        """The optimizer keyword this parameter fills (`betas` for `betas.0`)."""
        return self.name.split(".", 1)[0]

    @property
    def index(self) -> int | None:
        """The tuple index for a dotted name (`0` for `betas.0`), else None."""
        parts = self.name.split(".", 1)
        return int(parts[1]) if len(parts) == 2 else None

    def contains(self, value: Any) -> bool:
        """Whether `value` is a value this parameter can take."""
        if self.kind == "categorical":
            assert self.choices is not None
            return any(same_value(value, c) for c in self.choices)
        if not is_number(value):
            return False
        if self.kind == "int" and not (isinstance(value, int) or float(value).is_integer()):
            return False
        assert self.low is not None and self.high is not None
        tol = _REL_TOL * max(abs(self.low), abs(self.high), 1e-300)
        if not (self.low - tol <= value <= self.high + tol):
            return False
        return self.step is None or _is_multiple(value - self.low, self.step)

    def bounds(self) -> tuple[float, float]:
        """`(low, high)` of a numeric parameter (the schema requires both)."""
        if self.low is None or self.high is None:
            raise SpaceError("ParamSpec", self.name, f"a {self.kind} parameter needs low and high")
        return self.low, self.high

    def distribution(self) -> Any:
        """The Optuna distribution of this parameter."""
        from optuna.distributions import (
            CategoricalDistribution,
            FloatDistribution,
            IntDistribution,
        )

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices or ()))
        low, high = self.bounds()
        if self.kind == "int":
            return IntDistribution(int(low), int(high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(low), float(high), log=self.log, step=self.step)

    def suggest(self, trial: Any) -> Any:
        """Ask `trial` (an optuna.Trial, or anything with its suggest_* methods) for a value."""
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices or ()))
        low, high = self.bounds()
        if self.kind == "int":
            return trial.suggest_int(
                self.name, int(low), int(high), step=int(self.step or 1), log=self.log
            )
        return trial.suggest_float(self.name, float(low), float(high), step=self.step, log=self.log)

    def ray_domain(self) -> Any:
        """The Ray Tune sampling object (`tune.loguniform`, `tune.quniform`, ...)."""
        from ray import tune

        if self.kind == "categorical":
            return tune.choice(list(self.choices or ()))
        bounds = self.bounds()
        if self.kind == "int":
            low, high = int(bounds[0]), int(bounds[1])
            if self.log:
                return tune.lograndint(low, high + 1)  # Ray's upper bound is exclusive here
            if self.step not in (None, 1):
                return tune.qrandint(low, high, int(self.step))  # inclusive upper bound
            return tune.randint(low, high + 1)
        if self.log:
            return tune.loguniform(float(bounds[0]), float(bounds[1]))
        if self.step is not None:
            return tune.quniform(float(bounds[0]), float(bounds[1]), self.step)
        return tune.uniform(float(bounds[0]), float(bounds[1]))


def parse_spec(source: str, name: str, raw: Any) -> ParamSpec:
    """Validate one raw spec mapping (conditions are checked later, against the whole space)."""
    if not isinstance(raw, Mapping):
        raise SpaceError(
            source, name, f"a parameter spec must be a mapping with a `kind`, got {raw!r}"
        )
    kind = raw.get("kind")
    if kind not in KINDS:
        raise SpaceError(
            source, name, f"unknown kind {kind!r}: allowed kinds are {', '.join(KINDS)}"
        )
    unknown = sorted(set(raw) - set(SPEC_KEYS[kind]), key=str)
    if unknown:
        raise SpaceError(
            source,
            name,
            f"unknown key(s) {', '.join(map(repr, unknown))} for kind {kind!r}: "
            f"allowed keys are {', '.join(SPEC_KEYS[kind])}",
        )
    search_only = raw.get("search_only", False)
    if not isinstance(search_only, bool):
        raise SpaceError(source, name, f"search_only must be true or false, got {search_only!r}")
    description = raw.get("description")
    if description is not None and not isinstance(description, str):
        raise SpaceError(source, name, "description must be a string")
    when = _parse_when(source, name, raw.get("when"))
    common = {
        "name": name,
        "kind": kind,
        "when": when,
        "search_only": search_only,
        "description": description,
    }
    spec = _parse_categorical(source, raw, common) if kind == "categorical" else None
    if spec is None:
        spec = _parse_numeric(source, raw, common)
    if spec.has_default and not spec.contains(spec.default):
        raise SpaceError(
            source, name, f"default {spec.default!r} is outside the space ({describe(spec)})"
        )
    return spec


def _parse_categorical(source: str, raw: Mapping, common: dict) -> ParamSpec:
    name = common["name"]
    choices = raw.get("choices")
    if not isinstance(choices, list) or not choices:
        raise SpaceError(source, name, "categorical needs `choices`: a non-empty list")
    for c in choices:
        if not (c is None or isinstance(c, (str, int, float, bool))):
            raise SpaceError(source, name, f"choice {c!r} is not a str, int, float, bool or null")
    for i, c in enumerate(choices):
        if any(same_value(c, d) for d in choices[:i]):
            raise SpaceError(source, name, f"choice {c!r} is listed twice")
    return ParamSpec(**common, choices=tuple(choices), default=raw.get("default", MISSING))


def _parse_numeric(source: str, raw: Mapping, common: dict) -> ParamSpec:
    name, kind = common["name"], common["kind"]
    bounds = {}
    for key in ("low", "high"):
        value = raw.get(key)
        if value is None:
            raise SpaceError(source, name, f"{kind} needs `{key}`")
        if not is_number(value) or (kind == "int" and not isinstance(value, int)):
            want = "an integer" if kind == "int" else "a number"
            raise SpaceError(source, name, f"{key} must be {want}, got {value!r}")
        if not math.isfinite(value):
            raise SpaceError(source, name, f"{key} must be finite, got {value!r}")
        bounds[key] = value
    low, high = bounds["low"], bounds["high"]
    if low >= high:
        raise SpaceError(
            source, name, f"low ({low!r}) must be below high ({high!r}); fix a value under `fixed`"
        )
    log = raw.get("log", False)
    if not isinstance(log, bool):
        raise SpaceError(source, name, f"log must be true or false, got {log!r}")
    if log and low <= 0:
        raise SpaceError(source, name, f"log scale needs low > 0, got low={low!r}")
    step = raw.get("step")
    if step is not None:
        if not is_number(step) or step <= 0 or (kind == "int" and not isinstance(step, int)):
            raise SpaceError(source, name, f"step must be a positive {kind}, got {step!r}")
        if log and step != 1:
            raise SpaceError(
                source,
                name,
                "a log-scale parameter cannot have a step (Optuna does not support it)",
            )
        if kind == "float" or step != 1:
            if not _is_multiple(high - low, step):
                raise SpaceError(
                    source, name, f"step {step!r} does not divide the range [{low!r}, {high!r}]"
                )
            if not _is_multiple(low, step):
                # Ray Tune quantises to multiples of step, Optuna to low + k*step: they agree
                # only when low is a multiple of step.
                raise SpaceError(
                    source, name, f"low ({low!r}) must be a multiple of step ({step!r})"
                )
        if kind == "int" and step == 1:
            step = None
    default = raw.get("default", MISSING)
    if default is not MISSING and (
        not is_number(default) or (kind == "int" and not isinstance(default, int))
    ):
        raise SpaceError(source, name, f"default must be a number of kind {kind}, got {default!r}")
    return ParamSpec(**common, low=low, high=high, log=log, step=step, default=default)


def _parse_when(source: str, name: str, raw: Any) -> dict[str, tuple[Any, ...]]:
    if raw is None:
        return {}
    if not isinstance(raw, Mapping) or not raw:
        raise SpaceError(
            source,
            name,
            "`when` must be a mapping {parameter: value} or {parameter: [allowed values]}",
        )
    when: dict[str, tuple[Any, ...]] = {}
    for other, allowed in raw.items():
        if not isinstance(other, str):
            raise SpaceError(source, name, f"`when` names a parameter by string, got {other!r}")
        values = tuple(allowed) if isinstance(allowed, list) else (allowed,)
        if not values:
            raise SpaceError(source, name, f"`when: {{{other}: []}}` allows no value")
        when[other] = values
    return when


def describe(spec: ParamSpec) -> str:
    if spec.kind == "categorical":
        return f"choices {list(spec.choices or ())!r}"
    text = f"[{spec.low!r}, {spec.high!r}]"
    if spec.log:
        text += " log"
    if spec.step is not None:
        text += f" step {spec.step!r}"
    return f"{spec.kind} in {text}"
