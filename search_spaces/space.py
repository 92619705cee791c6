"""`SearchSpace`: one optimizer's validated search space, as Optuna and Ray Tune spaces.

`load_space` reads a shipped space by name (``search_spaces/spaces/<name>.yaml``) or a user's
YAML file by path, applies overrides and validates the result. Optuna and Ray are imported only
when a method needs them, so importing this module stays cheap.
"""

from __future__ import annotations

import copy
import importlib.resources
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any

from search_spaces.schema import (
    MISSING,
    ParamSpec,
    SpaceError,
    check_name,
    describe,
    is_number,
    parse_spec,
    read_yaml,
    same_value,
)

__all__ = ["SearchSpace", "available_spaces", "load_space"]

_PACKAGE_DIR = "spaces"
_OPTIMIZER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*\Z")
_RAY_CONDITIONAL_MODES = ("sample_from", "flatten")


class SearchSpace:
    """The hyperparameters searched for one optimizer, their ranges, conditions and defaults.

    ``params`` (ordered: a condition refers only to earlier parameters) holds the searched
    parameters, ``fixed`` the constant optimizer keywords. Parameter names use the optimizer's
    keyword names; ``betas.0`` is element 0 of the tuple ``betas``.
    """

    def __init__(
        self,
        *,
        optimizer: str,
        params: Iterable[ParamSpec],
        fixed: Mapping[str, Any],
        source: str,
        description: str | None = None,
        schedule: Mapping[str, Any] | None = None,
    ) -> None:
        self.optimizer = optimizer
        # Plain dicts behind read-only views, so that a space pickles (Ray ships it to workers).
        self._params = {p.name: p for p in params}
        self._fixed = dict(fixed)
        self.source = source
        self.description = description
        # The learning-rate schedule's fixed fields (search_spaces/schedule.py); None: no
        # schedule block, so `to_schedule` gives None.
        self._schedule = None if schedule is None else dict(schedule)

    def __repr__(self) -> str:
        return (
            f"SearchSpace(optimizer={self.optimizer!r}, params={list(self.params)}, "
            f"fixed={dict(self.fixed)!r}, source={self.source!r})"
        )

    @property
    def params(self) -> Mapping[str, ParamSpec]:
        """The searched parameters, in order."""
        return MappingProxyType(self._params)

    @property
    def fixed(self) -> Mapping[str, Any]:
        """The constant optimizer keywords."""
        return MappingProxyType(self._fixed)

    # -- structure -------------------------------------------------------------------------

    @property
    def conditional(self) -> frozenset[str]:
        """Names of the parameters that exist only when a condition holds."""
        return frozenset(name for name, spec in self.params.items() if spec.conditional)

    def hyperparameter_names(self) -> frozenset[str]:
        """Every optimizer keyword that `to_hyperparameters` can produce."""
        names = {spec.keyword for spec in self.params.values() if not spec.search_only}
        names.update(name.split(".", 1)[0] for name in self.fixed)
        return frozenset(names)

    def active(self, params: Mapping[str, Any]) -> list[str]:
        """The parameters that exist under `params` (conditions evaluated in order)."""
        names: list[str] = []
        for spec in self.params.values():
            if _holds(spec, params, names):
                names.append(spec.name)
        return names

    # -- Optuna ----------------------------------------------------------------------------

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample a configuration define-by-run; a conditional parameter is asked only when active.

        `trial` is an `optuna.Trial`, or the trial Ray Tune's `OptunaSearch(space=callable)`
        passes to a define-by-run function (this method can be that callable).
        """
        values: dict[str, Any] = {}
        for spec in self.params.values():
            if _holds(spec, values, values):
                values[spec.name] = spec.suggest(trial)
        return values

    def distributions(self, *, include_conditional: bool = True) -> dict[str, Any]:
        """Optuna distributions by parameter name, conditions ignored.

        Conditional parameters (listed in `conditional`) are included unless
        `include_conditional=False`; a study that samples them all (for example with a fixed
        search space) still gets the right optimizer keywords from `to_hyperparameters`,
        which drops the inactive ones.
        """
        return {
            name: spec.distribution()
            for name, spec in self.params.items()
            if include_conditional or not spec.conditional
        }

    # -- Ray Tune --------------------------------------------------------------------------

    def ray_param_space(
        self, *, conditional: str = "sample_from", prefix: Sequence[str] = ()
    ) -> dict[str, Any]:
        """A Ray Tune `param_space` dict: `tune.loguniform`, `tune.quniform`, `tune.choice`, ...

        Conditional parameters:
        - ``"sample_from"`` (default): a `tune.sample_from` that samples the parameter when its
          condition holds in the trial's config and gives None otherwise. Exact for Ray's
          default random/grid search (BasicVariantGenerator); these values come from NumPy's
          global generator, not from the searcher's seed.
        - ``"flatten"``: a plain sampling object like any other parameter, for searchers that
          accept only those (for example `OptunaSearch(param_space)`); `to_hyperparameters`
          drops the inactive ones. With Optuna, prefer `OptunaSearch(space=space.suggest)`.

        `prefix`: the keys under which the caller nests this dict in the Tune config (only the
        conditional samplers need it, to find the values they depend on).
        """
        if conditional not in _RAY_CONDITIONAL_MODES:
            raise ValueError(
                f"conditional must be one of {', '.join(_RAY_CONDITIONAL_MODES)}, "
                f"got {conditional!r}"
            )
        out: dict[str, Any] = {}
        for name, spec in self.params.items():
            if spec.conditional and conditional == "sample_from":
                from ray import tune

                out[name] = tune.sample_from(_ConditionalSample(spec, tuple(prefix)))
            else:
                out[name] = spec.ray_domain()
        return out

    # -- optimizer keywords ----------------------------------------------------------------

    def to_hyperparameters(self, params: Mapping[str, Any]) -> dict[str, Any]:
        """Sampled params plus fixed values as optimizer keyword arguments.

        Inactive conditional parameters and `search_only` parameters are dropped; dotted names
        are assembled into tuples (`betas.0`, `betas.1` -> `betas`).
        """
        unknown = [name for name in params if name not in self.params]
        if unknown:
            fixed = [n for n in unknown if n in self.fixed]
            hint = f" ({', '.join(fixed)} fixed in this space)" if fixed else ""
            raise SpaceError(
                self.source,
                unknown[0],
                f"not a parameter of this space{hint}; parameters: {', '.join(self.params)}",
            )
        active = self.active(params)
        missing = [name for name in active if name not in params]
        if missing:
            raise SpaceError(
                self.source, missing[0], "missing: the parameter is active but has no value"
            )
        flat: dict[str, Any] = {}
        for name in active:
            if not self.params[name].search_only:
                flat[name] = _plain(params[name])
        flat.update(self.fixed)
        return _assemble(flat)

    def to_schedule(self, params: Mapping[str, Any]) -> dict[str, Any] | None:
        """The learning-rate schedule of sampled params (`hvadam.schedules`, complete with its
        defaults), or None when the space has no schedule block. Only the active
        ``schedule.<field>`` params are read; `to_hyperparameters` never includes them."""
        if self._schedule is None:
            return None
        from hvadam.schedules import check_schedule

        values = dict(self._schedule)
        for name in self.active(params):
            if name.startswith("schedule.") and name in params:
                values[name.removeprefix("schedule.")] = _plain(params[name])
        return check_schedule(values, source=f"{self.source}: schedule")

    def default_params(self) -> dict[str, Any]:
        """The optimizer's defaults as params of this space (a study's first, enqueued trial)."""
        values: dict[str, Any] = {}
        for spec in self.params.values():
            if _holds(spec, values, values):
                values[spec.name] = spec.default
        return values

    def summary(self) -> str:
        """A readable, one-line-per-parameter description (for listings)."""
        lines = [f"{self.optimizer} ({self.source})"]
        for spec in self.params.values():
            text = f"  {spec.name}: {describe(spec)}"
            if spec.has_default:
                text += f", default {spec.default!r}"
            if spec.when:
                cond = ", ".join(f"{k} in {list(v)!r}" for k, v in spec.when.items())
                text += f", when {cond}"
            if spec.search_only:
                text += " (search only)"
            lines.append(text)
        for name, value in self.fixed.items():
            lines.append(f"  {name} = {value!r} (fixed)")
        for name, value in (self._schedule or {}).items():
            lines.append(f"  schedule.{name} = {value!r} (fixed)")
        return "\n".join(lines)


def _holds(spec: ParamSpec, values: Mapping[str, Any], active: Iterable[str]) -> bool:
    active_set = active if isinstance(active, (set, frozenset, dict)) else set(active)
    for other, allowed in spec.when.items():
        if other not in active_set or other not in values:
            return False
        if not any(same_value(values[other], a) for a in allowed):
            return False
    return True


def _plain(value: Any) -> Any:
    """NumPy scalars (from Ray's samplers) as Python numbers."""
    item = getattr(value, "item", None)
    if item is not None and not isinstance(value, (list, tuple, str)):
        try:
            return item()
        except (TypeError, ValueError):
            return value
    return value


def _assemble(flat: Mapping[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    tuples: dict[str, dict[int, Any]] = {}
    for name, value in flat.items():
        keyword, _, index = name.partition(".")
        if index:
            tuples.setdefault(keyword, {})[int(index)] = value
            out.setdefault(keyword, None)  # keeps the keyword's position
        else:
            out[name] = value
    for keyword, elements in tuples.items():
        out[keyword] = tuple(elements[i] for i in range(len(elements)))
    return out


class _ConditionalSample:
    """The function behind `tune.sample_from` for a conditional parameter."""

    def __init__(self, spec: ParamSpec, prefix: tuple[str, ...]) -> None:
        self.spec = spec
        self.prefix = prefix
        self.domain = spec.ray_domain()

    def __repr__(self) -> str:
        return f"conditional({self.spec.name}, when={dict(self.spec.when)!r})"

    def _config(self, arg: Any) -> Mapping[str, Any]:
        # Ray hands either the config or the whole experiment spec ({"config": ...}).
        node = arg
        for _ in range(3):
            found = _walk(node, self.prefix)
            if found is not None and all(k in found for k in self.spec.when):
                return found
            inner = node.get("config") if isinstance(node, Mapping) else None
            if not isinstance(inner, Mapping):
                break
            node = inner
        raise ValueError(
            f"search space {self.spec.name!r}: its condition needs "
            f"{', '.join(self.spec.when)} in the Tune config; pass prefix=... to "
            "ray_param_space() when the space is nested"
        )

    def __call__(self, config: Any) -> Any:
        from ray.tune.search.sample import Domain
        from ray.tune.search.variant_generator import RecursiveDependencyError

        values = self._config(config)
        for other, allowed in self.spec.when.items():
            value = dict.get(values, other) if isinstance(values, dict) else values[other]
            if isinstance(value, Domain):
                raise RecursiveDependencyError(f"{self.spec.name} depends on {other}")
            if not any(same_value(_plain(value), a) for a in allowed):
                return None
        return self.domain.sample()


def _walk(node: Any, path: tuple[str, ...]) -> Mapping[str, Any] | None:
    for key in path:
        if not isinstance(node, Mapping) or key not in node:
            return None
        node = dict.get(node, key) if isinstance(node, dict) else node[key]
    return node if isinstance(node, Mapping) else None


# --------------------------------------------------------------------------------------------
# Loading


def available_spaces() -> list[str]:
    """Names of the search spaces shipped with the package."""
    root = importlib.resources.files("search_spaces") / _PACKAGE_DIR
    return sorted(
        entry.name[: -len(".yaml")] for entry in root.iterdir() if entry.name.endswith(".yaml")
    )


def _shipped_path(name: str) -> Path:
    return Path(str(importlib.resources.files("search_spaces") / _PACKAGE_DIR / f"{name}.yaml"))


def load_space(
    name_or_path: str | os.PathLike[str],
    overrides: Mapping[str, Any] | None = None,
) -> SearchSpace:
    """Load a shipped search space by name, or a user's YAML file by path, and validate it.

    `overrides` maps a parameter name to a partial spec (merged into the file's spec, e.g.
    ``{"lr": {"low": 1e-4, "high": 1e-1}}``; a spec with a different ``kind`` replaces it; a
    new name needs a full spec) or to a plain value, which fixes that keyword (``{"gamma": 0.0}``).
    """
    text = os.fspath(name_or_path)
    is_path = (
        isinstance(name_or_path, os.PathLike)
        or os.sep in text
        or "/" in text
        or text.endswith((".yaml", ".yml"))
    )
    if is_path:
        path = Path(text)
        source = str(path)
        if not path.is_file():
            raise SpaceError(source, None, "no such file")
    else:
        shipped = available_spaces()
        if text not in shipped:
            raise SpaceError(
                text,
                None,
                f"unknown search space; shipped spaces: {', '.join(shipped)} "
                "(or give the path to a YAML file)",
            )
        path = _shipped_path(text)
        source = f"{text}.yaml"
    doc = read_yaml(path, source)
    space = build_space(doc, source=source)
    if overrides:
        merged, switches = apply_overrides(doc, overrides, source=source)
        space = build_space(
            merged, source=f"{source} (with overrides)", prune=True, switches=switches
        )
    return space


def apply_overrides(
    doc: Any, overrides: Mapping[str, Any], *, source: str
) -> tuple[dict[str, Any], dict[str, Any]]:
    """The raw document with `overrides` applied (validated afterwards by `build_space`), and
    the values that fix `search_only` switches (they decide conditions, not keywords)."""
    if not isinstance(overrides, Mapping):
        raise SpaceError(
            source, None, f"overrides must be a mapping, got {type(overrides).__name__}"
        )
    merged = copy.deepcopy(dict(doc))
    params = dict(merged.get("params") or {})
    fixed = dict(merged.get("fixed") or {})
    label = f"{source} (overrides)"
    switches: dict[str, Any] = {}
    for name, value in overrides.items():
        check_name(label, name)
        if isinstance(value, Mapping):
            old = params.get(name)
            if isinstance(old, Mapping) and value.get("kind", old.get("kind")) == old.get("kind"):
                params[name] = {**old, **value}  # same kind: a partial spec, merged in place
            else:
                params[name] = dict(value)  # new name or new kind: a full spec
            fixed.pop(name, None)
        else:
            old = params.pop(name, None)
            if isinstance(old, Mapping) and old.get("search_only"):
                switches[name] = value
            else:
                fixed[name] = value
    merged["params"] = params
    merged["fixed"] = fixed
    return merged, switches


def build_space(
    doc: Any, *, source: str, prune: bool = False, switches: Mapping[str, Any] | None = None
) -> SearchSpace:
    """Validate a parsed document and build the `SearchSpace`.

    `prune=True` (after overrides) removes what the overrides made pointless: a parameter
    whose condition a fixed value rules out, and a `search_only` switch nothing depends on.
    """
    if not isinstance(doc, Mapping):
        raise SpaceError(source, None, "a search-space file must be a mapping at top level")
    allowed = ("optimizer", "description", "params", "fixed")
    unknown = [k for k in doc if k not in allowed]
    if unknown:
        raise SpaceError(
            source,
            None,
            f"unknown top-level key {unknown[0]!r}: allowed keys are {', '.join(allowed)}",
        )
    optimizer = doc.get("optimizer")
    if not isinstance(optimizer, str) or not _OPTIMIZER_RE.match(optimizer):
        raise SpaceError(source, None, f"`optimizer` must name an optimizer, got {optimizer!r}")
    description = doc.get("description")
    if description is not None and not isinstance(description, str):
        raise SpaceError(source, None, "`description` must be a string")
    raw_params = doc.get("params") or {}
    raw_fixed = doc.get("fixed") or {}
    if not isinstance(raw_params, Mapping):
        raise SpaceError(source, None, "`params` must be a mapping of name -> spec")
    if not isinstance(raw_fixed, Mapping):
        raise SpaceError(source, None, "`fixed` must be a mapping of name -> value")

    fixed: dict[str, Any] = {}
    for name, value in raw_fixed.items():
        check_name(source, name, "fixed")
        fixed[name] = _fixed_value(source, name, value)
    specs: list[ParamSpec] = []
    for name, raw in raw_params.items():
        check_name(source, name)
        if name in fixed:
            raise SpaceError(source, name, "listed both under `params` and under `fixed`")
        specs.append(parse_spec(source, name, raw))

    specs = _resolve_conditions(source, specs, {**fixed, **(switches or {})}, prune=prune)
    if prune:
        specs = _prune_unused_switches(specs)
    elif unused := _unused_switches(specs):
        raise SpaceError(
            source, unused[0].name, "search_only parameter that no `when` condition refers to"
        )
    _check_tuples(source, specs, fixed)
    _check_defaults(source, specs)
    return SearchSpace(
        optimizer=optimizer, params=specs, fixed=fixed, source=source, description=description
    )


def _fixed_value(source: str, name: str, value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_fixed_value(source, name, v) for v in value)
    if value is None or isinstance(value, (str, bool)) or is_number(value):
        return value
    raise SpaceError(
        source, name, f"a fixed value must be a number, string, bool, null or list, got {value!r}"
    )


def _resolve_conditions(
    source: str, specs: list[ParamSpec], fixed: Mapping[str, Any], *, prune: bool
) -> list[ParamSpec]:
    known = {spec.name: spec for spec in specs}
    position = {spec.name: i for i, spec in enumerate(specs)}
    kept: dict[str, ParamSpec] = {}
    dropped: set[str] = set()
    for i, spec in enumerate(specs):
        when: dict[str, tuple[Any, ...]] = {}
        never = False
        for other, allowed in spec.when.items():
            if other == spec.name:
                raise SpaceError(source, spec.name, "condition on the parameter itself")
            if other in fixed:
                # A fixed value (often an override) decides the condition once and for all.
                if not any(same_value(fixed[other], a) for a in allowed):
                    never = True
                continue
            if other in dropped:
                never = True
                continue
            target = known.get(other)
            if target is None:
                raise SpaceError(
                    source,
                    spec.name,
                    f"condition on unknown parameter {other!r}; parameters: {', '.join(known)}",
                )
            if position[other] > i:
                raise SpaceError(
                    source,
                    spec.name,
                    f"condition on later parameter {other!r}: list {other!r} before {spec.name!r}",
                )
            if target.kind == "float":
                raise SpaceError(
                    source,
                    spec.name,
                    f"condition on float parameter {other!r}: conditions need a categorical or "
                    "int parameter",
                )
            for value in allowed:
                if not target.contains(value):
                    raise SpaceError(
                        source,
                        spec.name,
                        f"condition value {value!r} is not a value of {other!r} ({describe(target)})",
                    )
            when[other] = allowed
        if never:
            if not prune:
                raise SpaceError(
                    source, spec.name, "its condition can never hold under the fixed values"
                )
            dropped.add(spec.name)
            continue
        kept[spec.name] = _replace_when(spec, when)
    return list(kept.values())


def _replace_when(spec: ParamSpec, when: dict[str, tuple[Any, ...]]) -> ParamSpec:
    from dataclasses import replace

    return replace(spec, when=when)


def _unused_switches(specs: list[ParamSpec]) -> list[ParamSpec]:
    used = {other for spec in specs for other in spec.when}
    return [spec for spec in specs if spec.search_only and spec.name not in used]


def _prune_unused_switches(specs: list[ParamSpec]) -> list[ParamSpec]:
    while unused := {spec.name for spec in _unused_switches(specs)}:
        specs = [spec for spec in specs if spec.name not in unused]
    return specs


def _check_tuples(source: str, specs: list[ParamSpec], fixed: Mapping[str, Any]) -> None:
    groups: dict[str, dict[int, ParamSpec | None]] = {}
    plain: set[str] = set()
    for spec in specs:
        if spec.search_only:
            continue
        if spec.index is None:
            plain.add(spec.name)
        else:
            groups.setdefault(spec.keyword, {})[spec.index] = spec
    for name in fixed:
        keyword, _, index = name.partition(".")
        if index:
            groups.setdefault(keyword, {})[int(index)] = None
        else:
            plain.add(name)
    for keyword, elements in groups.items():
        first = f"{keyword}.{min(elements)}"
        if keyword in plain:
            raise SpaceError(
                source, first, f"{keyword!r} is also given whole; give one or the other"
            )
        missing = [i for i in range(max(elements) + 1) if i not in elements]
        if missing:
            raise SpaceError(
                source,
                first,
                f"tuple {keyword!r} has no element {missing[0]} ({keyword}.{missing[0]})",
            )
        conditions = {
            tuple((k, v) for k, v in spec.when.items()) if spec is not None else ()
            for spec in elements.values()
        }
        if len(conditions) > 1:
            raise SpaceError(
                source,
                first,
                f"the elements of tuple {keyword!r} must share one condition "
                "(and none may be fixed when they are conditional)",
            )
    for spec in specs:
        if spec.search_only and (spec.keyword in plain or spec.keyword in groups):
            raise SpaceError(
                source, spec.name, "search_only parameter named like an optimizer keyword"
            )


def _check_defaults(source: str, specs: list[ParamSpec]) -> None:
    values: dict[str, Any] = {}
    for spec in specs:
        if _holds(spec, values, values):
            if spec.default is MISSING:
                raise SpaceError(
                    source,
                    spec.name,
                    "needs a `default` inside its range: it is active in the default configuration",
                )
            values[spec.name] = spec.default
