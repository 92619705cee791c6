"""Campaign specs: the YAML that says what to tune (workload x optimizers x equal budget).

    name: digits                        # campaign name; studies are named <name>/<optimizer>
    workload: {name: digits-mlp, options: {epochs: 4}}   # or just `workload: digits-mlp`
    # or your own: {name: "my_tasks:train", metric: {name: val_loss, direction: minimize}}
    optimizers: [hvadam, anon, adam]    # or a mapping: name -> search-space overrides
    budget: {trials: 8, max_epochs: 4}  # trials per optimizer; max_epochs optional; or
                                        # {seconds: 600}: search seconds per optimizer, or both
                                        # (whichever runs out first; docs/budgets.md)
    sampler: tpe                        # tpe | random | cmaes | gp | grid | qmc, or e.g.
                                        # {name: grid, points: 5} (studies/samplers.py)
    pruner: median                      # hyperband | median | none
    confirm: {seeds: 3}                 # the best config of each optimizer on K fresh seeds
    seed: 0
    device: auto                        # optional: auto | cpu | cuda | cuda:N
    notes_interval: 60                  # optional: seconds between live-note refreshes
    artifacts: {checkpoints: false}     # optional: keep each confirm run's final state
    schedule: true                      # optional: search a learning-rate schedule too
                                        # (docs/schedules.md); an optimizer entry may give its own
    sweep: {optimizer: hvadam, param: adaptivity, values: [0, 0.5, 1], seeds: 3}  # optional,
                                        # or a list of them (studies/sweep.py)
    target: {value: 0.1}                # optional: time-to-target in compare and the report

Shipped specs live in `studies/specs/` (`available_specs()`); `load_spec` takes a shipped name or
a path. Every problem raises `SpecError` naming the key and what is allowed, before any trial.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from hvadam.yamlfile import DuplicateKeyError, load_yaml
from search_spaces.schedule import spec_block
from studies.samplers import PRUNERS as _PRUNER_TABLE
from studies.samplers import SAMPLERS as _SAMPLER_TABLE
from studies.samplers import parse_pruner, parse_sampler
from studies.spec_keys import MAX_CONFIRM_SEEDS, parse_budget, parse_confirm, parse_target

__all__ = [
    "MAX_CONFIRM_SEEDS",
    "MAX_LABEL_LENGTH",
    "MAX_NAME_LENGTH",
    "PRUNERS",
    "SAMPLERS",
    "CampaignSpec",
    "OptimizerEntry",
    "SpecError",
    "available_specs",
    "load_spec",
    "parse_spec",
    "spec_path",
]

# The names a spec may use: the keys of the one table in studies/samplers.py.
SAMPLERS = tuple(_SAMPLER_TABLE)
PRUNERS = tuple(_PRUNER_TABLE)
TOP_KEYS = (
    "name",
    "description",
    "workload",
    "optimizers",
    "budget",
    "sampler",
    "pruner",
    "confirm",
    "seed",
    "device",
    "schedule",
    "sweep",
    "target",
    # execution settings (studies/execution.py): not part of the spec hash
    "resources",
    "max_concurrent",
    "ray",
    # reporting settings (studies/live.py): not part of the spec hash either
    "notes_interval",
    "artifacts",
)
REQUIRED = ("name", "workload", "optimizers", "budget")
# Matched whole (`fullmatch`: a `$` would let a final newline through).
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
DEVICE_RE = re.compile(r"auto|cpu|cuda|cuda:\d{1,4}|mps")
# A study is named `<campaign>/<optimizer>` (Optuna's column holds 512 characters); the results
# tables hold a campaign name in 255 and an optimizer label in 64.
MAX_NAME_LENGTH = 255
MAX_LABEL_LENGTH = 64
_ENV_RE = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


class SpecError(ValueError):
    """A malformed campaign spec; the message names the spec, the key and what is allowed."""


@dataclass(frozen=True)
class OptimizerEntry:
    """One optimizer of a campaign: its label (the study suffix), space file and overrides."""

    label: str
    space: str  # a shipped space name or a path, as written in the spec
    overrides: dict[str, Any] = field(default_factory=dict)
    space_file: str | None = None  # `space` resolved against the spec's directory
    schedule: Any = None  # this entry's own `schedule:` block as written (None: not given)
    spec_schedule: Any = None  # the spec's top-level `schedule:`, used when it has none

    def load_space(self) -> Any:
        """The `SearchSpace` of this entry (shipped or user file, with the overrides applied,
        and the learning-rate schedule block searched with it, if any)."""
        from search_spaces import load_space
        from search_spaces.schedule import with_schedule

        space = load_space(self.space_file or self.space, overrides=self.overrides or None)
        block = self.spec_schedule if self.schedule is None else self.schedule
        return with_schedule(space, block, source=f"{space.source} (schedule)")


@dataclass(frozen=True)
class CampaignSpec:
    name: str
    workload: str
    workload_options: dict[str, Any]
    optimizers: tuple[OptimizerEntry, ...]
    trials: int | None  # None: only a seconds budget
    max_epochs: int | None
    sampler: str
    pruner: str
    confirm_seeds: int
    seed: int
    device: str
    description: str = ""
    source: str = "<dict>"
    # Resources per trial, concurrency, Ray scheduler (studies/execution.py); not hashed.
    execution: Any = None
    # A function workload's metric ({name, direction}); hashed when given.
    workload_metric: dict[str, Any] | None = None
    # The spec file's directory: user workload modules are imported from it first; not hashed.
    base_dir: str | None = None
    # The sampler's options that differ from its defaults (studies/samplers.py).
    sampler_options: dict[str, Any] = field(default_factory=dict)
    # Live notes and checkpoints (studies/live.py `LiveSettings`); not hashed.
    live: Any = None
    # The top-level `schedule:` block as written (docs/schedules.md); hashed when given.
    schedule: Any = None
    # Controlled sweeps (studies/sweep.py `Sweep`); hashed when given.
    sweeps: tuple[Any, ...] = ()
    # `target: {value: V}`: the value compare and the report measure time-to-target against.
    target: float | None = None
    # Search seconds per optimizer (studies/budget.py); hashed when given.
    seconds: float | None = None

    def normalized(self) -> dict[str, Any]:
        """The spec with every default filled in, in one canonical form (what the hash covers)."""
        return {
            "name": self.name,
            "workload": {
                "name": self.workload,
                "options": copy.deepcopy(self.workload_options),
                **({"metric": dict(self.workload_metric)} if self.workload_metric else {}),
            },
            "optimizers": {
                e.label: {
                    **({"space": e.space} if e.space != e.label else {}),
                    **copy.deepcopy(e.overrides),
                    **({"schedule": copy.deepcopy(e.schedule)} if e.schedule is not None else {}),
                }
                for e in self.optimizers
            },
            "budget": {
                "trials": self.trials,
                "max_epochs": self.max_epochs,
                **({"seconds": self.seconds} if self.seconds is not None else {}),
            },
            "sampler": (
                {"name": self.sampler, **self.sampler_options}
                if self.sampler_options
                else self.sampler
            ),
            "pruner": self.pruner,
            "confirm": {"seeds": self.confirm_seeds},
            "seed": self.seed,
            "device": self.device,
            **({"schedule": copy.deepcopy(self.schedule)} if self.schedule is not None else {}),
            **({"sweep": [s.normalized() for s in self.sweeps]} if self.sweeps else {}),
            **({"target": {"value": self.target}} if self.target is not None else {}),
        }

    @property
    def spec_hash(self) -> str:
        """SHA-256 (first 16 hex digits) of the normalised spec; the description is not part of it."""
        text = json.dumps(self.normalized(), sort_keys=True, separators=(",", ":"), default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def labels(self) -> list[str]:
        return [e.label for e in self.optimizers]

    def study_name(self, label: str) -> str:
        return f"{self.name}/{label}"

    def entry(self, label: str) -> OptimizerEntry:
        for e in self.optimizers:
            if e.label == label:
                return e
        raise KeyError(label)

    def resolved_workload_options(self) -> dict[str, Any]:
        """Workload options with `${ENV}` references expanded and `budget.max_epochs` applied.

        (`${ENV}` stays unexpanded in the hash, so nodes with other mount points agree on it.)
        """
        options = {
            k: _expand(self, f"workload.options.{k}", v) for k, v in self.workload_options.items()
        }
        if self.max_epochs is not None:
            known = self.workload_class().OPTIONS
            if "epochs" in known:
                options["epochs"] = self.max_epochs
            elif "steps" in known and "report_every" in known:
                every = options.get("report_every", known["report_every"].default)
                options["steps"] = self.max_epochs * int(every)
            else:
                raise SpecError(
                    f"spec {self.source}: budget.max_epochs: workload {self.workload!r} has no "
                    f"'epochs' (or 'steps' and 'report_every') option to limit"
                )
        return options

    def workload_class(self) -> Any:
        """The class behind `workload.name` (a user module is imported here, once)."""
        from studies.workloads import workload_class

        try:
            return workload_class(self.workload, base_dir=self.base_dir)
        except ValueError as exc:
            raise SpecError(f"spec {self.source}: workload.name: {exc}") from None

    def build_workload(self) -> Any:
        """The campaign's workload object; problems become `SpecError` naming the key."""
        from studies.workloads import FunctionWorkload, OptionError, load_workload

        klass = self.workload_class()
        is_function = issubclass(klass, FunctionWorkload)
        if is_function and not self.workload_metric:
            raise SpecError(
                f"spec {self.source}: workload.metric: missing; {self.workload!r} is a function, "
                "so the spec names its metric, like {name: val_loss, direction: minimize}"
            )
        if not is_function and self.workload_metric:
            raise SpecError(
                f"spec {self.source}: workload.metric: only for a function workload; "
                f"{self.workload!r} defines its own ({klass.metric}, {klass.direction})"
            )
        options = self.resolved_workload_options()
        try:
            return load_workload(
                self.workload, options, metric=self.workload_metric, base_dir=self.base_dir
            )
        except OptionError as exc:
            raise SpecError(f"spec {self.source}: workload.options: {exc}") from None
        except ValueError as exc:
            key = "workload.metric" if "'metric" in str(exc) else "workload"
            raise SpecError(f"spec {self.source}: {key}: {exc}") from None

    def load_spaces(self) -> dict[str, Any]:
        """label -> `SearchSpace`, each checked; problems become `SpecError` naming the key."""
        import hvadam

        spaces = {}
        for e in self.optimizers:
            try:
                space = e.load_space()
            except ValueError as exc:
                raise SpecError(f"spec {self.source}: optimizers.{e.label}: {exc}") from None
            if space.optimizer not in hvadam.available_optimizers():
                raise SpecError(
                    f"spec {self.source}: optimizers.{e.label}: the space is for "
                    f"{space.optimizer!r}, which is not a known optimizer "
                    f"(known: {', '.join(hvadam.available_optimizers())})"
                )
            spaces[e.label] = space
        return spaces

    def check(self) -> None:
        """Everything that can be checked before a trial runs: spaces (every value against the
        optimizer's own validation) and workload options."""
        from studies.space_check import check_space_values
        from studies.sweep import check_sweeps

        spaces = self.load_spaces()
        for label, space in spaces.items():
            check_space_values(self.source, label, space)
        check_sweeps(self, spaces)
        self.build_workload()


def _expand(spec: CampaignSpec, key: str, value: Any) -> Any:
    if not isinstance(value, str):
        return value

    def sub(match: re.Match[str]) -> str:
        var = match.group(1)
        if var not in os.environ:
            raise SpecError(
                f"spec {spec.source}: {key} uses ${{{var}}}, which is not set; set the "
                f"environment variable {var} (for data, `hvadam tune --data-dir DIR` sets "
                f"HVADAM_DATA_DIR)"
            )
        return os.environ[var]

    return _ENV_RE.sub(sub, value)


# ---- loading -----------------------------------------------------------------------------------


def _specs_dir() -> Any:
    return resources.files("studies") / "specs"


def available_specs() -> list[str]:
    """Names of the specs shipped with the project."""
    return sorted(
        p.name.removesuffix(".yaml") for p in _specs_dir().iterdir() if p.name.endswith(".yaml")
    )


def spec_path(name_or_path: str | os.PathLike[str]) -> Path:
    """The file behind a shipped spec name or a path; `SpecError` when there is none."""
    path = Path(name_or_path).expanduser()
    if path.is_file():
        return path
    name = str(name_or_path)
    if name in available_specs():
        return Path(str(_specs_dir() / f"{name}.yaml"))
    raise SpecError(
        f"no campaign spec {name!r}: not a file, and not a shipped spec "
        f"(shipped: {', '.join(available_specs())})"
    )


def load_spec(name_or_path: str | os.PathLike[str], *, check: bool = True) -> CampaignSpec:
    """Read and validate a campaign spec (a shipped name or a YAML path).

    With `check`, the search spaces are loaded and the workload is built too, so every problem
    surfaces here; without it only the spec's own structure and names are checked.
    """
    path = spec_path(name_or_path)
    try:
        data = load_yaml(path.read_text(encoding="utf-8"))
    except DuplicateKeyError as exc:
        raise SpecError(f"spec {path}: {exc}") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"spec {path}: not valid YAML: {exc}") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"spec {path}: cannot read the file: {exc}") from None
    spec = parse_spec(data, source=str(path), base_dir=path.parent)
    if check:
        spec.check()
    return spec


def parse_spec(
    data: Any, *, source: str = "<dict>", base_dir: str | os.PathLike[str] | None = None
) -> CampaignSpec:
    """Validate spec data (as loaded from YAML) and return the `CampaignSpec`."""

    def fail(key: str, problem: str) -> SpecError:
        return SpecError(f"spec {source}: {key}: {problem}")

    if not isinstance(data, Mapping):
        raise SpecError(
            f"spec {source}: must be a mapping with keys {', '.join(REQUIRED)} "
            f"(got {type(data).__name__})"
        )
    unknown = sorted(set(map(str, data)) - set(TOP_KEYS))
    if unknown:
        raise fail(
            ", ".join(unknown),
            f"unknown key{'s' if len(unknown) > 1 else ''}; allowed: {', '.join(TOP_KEYS)}",
        )
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise fail(", ".join(missing), "missing (required: " + ", ".join(REQUIRED) + ")")

    name = data["name"]
    if not isinstance(name, str) or not NAME_RE.fullmatch(name):
        raise fail(
            "name",
            f"must be a string of letters, digits, '.', '_' or '-' (no '/'), got {name!r}",
        )
    if len(name) > MAX_NAME_LENGTH:
        raise fail("name", f"must be at most {MAX_NAME_LENGTH} characters, got {len(name)}")
    description = data.get("description", "")
    if not isinstance(description, str):
        raise fail("description", f"must be a string, got {description!r}")

    workload, options, metric = _parse_workload(data["workload"], fail)
    optimizers = _parse_optimizers(data["optimizers"], fail, base_dir)
    schedule = spec_block(data, "schedule", fail)
    if schedule is not None:
        optimizers = tuple(replace(e, spec_schedule=schedule) for e in optimizers)

    trials, seconds, max_epochs = parse_budget(data["budget"], fail)

    sampler, sampler_options = parse_sampler(data.get("sampler", "tpe"), fail)
    pruner = parse_pruner(data.get("pruner", "median"), fail)

    seeds = parse_confirm(data.get("confirm", {"seeds": 3}), fail)

    seed = data.get("seed", 0)
    if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**31:
        raise fail("seed", f"must be an integer in [0, 2**31), got {seed!r}")
    device = data.get("device", "auto")
    if not isinstance(device, str) or not DEVICE_RE.fullmatch(device):
        raise fail("device", f"must be one of auto, cpu, cuda, cuda:N, mps; got {device!r}")

    target = parse_target(data, fail)
    from studies.execution import parse_execution

    execution = parse_execution(data, fail)
    from studies.live import parse_live

    live = parse_live(data, fail)
    if live.checkpoints:
        from studies.workloads import workload_class

        if not workload_class(workload).supports_checkpoints:
            raise fail(
                "artifacts.checkpoints",
                f"workload {workload!r} cannot save its training state; checkpoints need a "
                f"workload that supports them (e.g. digits-mlp)",
            )
    from studies.sweep import parse_sweeps

    sweeps = parse_sweeps(data.get("sweep"), fail, [e.label for e in optimizers])
    return CampaignSpec(
        sweeps=sweeps,
        execution=execution,
        live=live,
        name=name,
        workload=workload,
        workload_options=options,
        optimizers=optimizers,
        trials=trials,
        seconds=seconds,
        max_epochs=max_epochs,
        sampler=sampler,
        sampler_options=sampler_options,
        pruner=pruner,
        confirm_seeds=seeds,
        seed=seed,
        device=device,
        description=description,
        source=source,
        workload_metric=metric,
        base_dir=None if base_dir is None else str(Path(base_dir).resolve()),
        schedule=schedule,
        target=target,
    )


def _parse_workload(value: Any, fail: Any) -> tuple[str, dict[str, Any], dict[str, Any] | None]:
    from studies.workloads import available_workloads, is_user_workload

    metric = None
    if isinstance(value, str):
        name, options = value, {}
    elif isinstance(value, Mapping):
        if "name" not in value:
            raise fail("workload.name", "missing (the workload's registered name)")
        name = value["name"]
        metric = value.get("metric")
        if metric is not None:
            if not isinstance(metric, Mapping):
                raise fail(
                    "workload.metric",
                    f"must be a mapping like {{name: val_loss, direction: minimize}}, got {metric!r}",
                )
            metric = {str(k): v for k, v in metric.items()}
        options = {str(k): v for k, v in value.items() if k not in ("name", "options", "metric")}
        nested = value.get("options") or {}
        if not isinstance(nested, Mapping):
            raise fail("workload.options", f"must be a mapping, got {nested!r}")
        clash = sorted(set(options) & set(map(str, nested)))
        if clash:
            raise fail(f"workload.{clash[0]}", "given both directly and under workload.options")
        options.update({str(k): v for k, v in nested.items()})
    else:
        raise fail(
            "workload",
            f"must be a workload name or a mapping with 'name' and options, got {value!r}",
        )
    if is_user_workload(name):
        return name, options, metric
    known = available_workloads()
    if name not in known:
        raise fail(
            "workload.name",
            f"unknown workload {name!r}; known: {', '.join(known)} "
            "(or 'module:function' / 'module:Class' for your own)",
        )
    return name, options, metric


def _parse_optimizers(
    value: Any, fail: Any, base_dir: str | os.PathLike[str] | None
) -> tuple[OptimizerEntry, ...]:
    import hvadam

    known = hvadam.available_optimizers()
    if isinstance(value, str):
        value = [value]
    if isinstance(value, (list, tuple)):
        if not all(isinstance(v, str) for v in value):
            raise fail("optimizers", f"a list must hold optimizer names, got {value!r}")
        if len(set(value)) != len(value):
            raise fail("optimizers", f"lists an optimizer twice: {value!r}")
        value = {v: {} for v in value}
    if not isinstance(value, Mapping) or not value:
        raise fail(
            "optimizers",
            "must be a non-empty list of optimizer names or a mapping name -> space overrides "
            f"(known optimizers: {', '.join(known)})",
        )
    entries = []
    for label, body in value.items():
        key = f"optimizers.{label}"
        if not isinstance(label, str) or not NAME_RE.fullmatch(label):
            raise fail(key, "an optimizer label must be letters, digits, '.', '_' or '-'")
        if len(label) > MAX_LABEL_LENGTH:
            raise fail(key, f"an optimizer label must be at most {MAX_LABEL_LENGTH} characters")
        body = {} if body is None else body
        if not isinstance(body, Mapping):
            raise fail(key, f"must be a mapping of search-space overrides, got {body!r}")
        body = {str(k): copy.deepcopy(v) for k, v in body.items()}
        schedule = spec_block(body, f"{key}.schedule", fail)
        body.pop("schedule", None)
        space = body.pop("space", None)
        if space is None:
            if label not in known:
                raise fail(
                    key,
                    f"unknown optimizer {label!r}; known: {', '.join(known)} "
                    f"(or give 'space: path/to/space.yaml' for your own)",
                )
            space = label
        elif not isinstance(space, str):
            raise fail(f"{key}.space", f"must be a space name or a path, got {space!r}")
        space_file = None
        if isinstance(space, str) and space.endswith((".yaml", ".yml")):
            candidate = Path(space).expanduser()
            if not candidate.is_absolute() and base_dir is not None:
                candidate = Path(base_dir) / candidate
            if not candidate.is_file():
                raise fail(f"{key}.space", f"space file {str(candidate)!r} does not exist")
            space_file = str(candidate)
        entries.append(
            OptimizerEntry(
                label=label,
                space=space,
                overrides=body,
                space_file=space_file,
                schedule=schedule,
            )
        )
    return tuple(entries)
