"""The workload contract: `Workload`, `EpochReport`, `RunResult`, `Diverged`, and option checking.

A workload is model + data + loss + metric + schedule. Subclasses declare their options as a
class-level `OPTIONS` table; the constructor validates what the caller passes against it and
keeps the fully resolved options (defaults included) in `self.options`, so a run record can
store exactly what was trained.
"""

from __future__ import annotations

import math
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np
import torch

__all__ = [
    "DataNotFoundError",
    "Diverged",
    "EpochReport",
    "MakeOptimizer",
    "OnEpoch",
    "Option",
    "OptionError",
    "RunResult",
    "Workload",
    "restore_optimizer",
]


class OptionError(ValueError):
    """An unknown or invalid workload option; the message names the option and what is allowed."""


class DataNotFoundError(FileNotFoundError, ValueError):
    """A workload's data directory or one of its files is missing (names both)."""


class Diverged(RuntimeError):
    """Training produced a non-finite loss (or iterate): the run cannot continue."""

    def __init__(self, epoch: int, detail: str) -> None:
        super().__init__(f"diverged at epoch {epoch}: {detail}")
        self.epoch = epoch
        self.detail = detail

    def __reduce__(self) -> tuple[Any, ...]:
        # Keeps the exception picklable across worker processes (Ray, multiprocessing).
        return (type(self), (self.epoch, self.detail))


@dataclass(frozen=True)
class EpochReport:
    """What a workload hands to `on_epoch` after each epoch (or chunk of steps).

    `epoch` counts from 1 (the number of epochs or chunks completed); `value` is the workload's
    metric at that point; `metrics` holds named floats (`train_loss`, the metric, `lr`,
    `step_time`, the optimizer's internals, ...).
    """

    epoch: int
    value: float
    metrics: dict[str, float]
    # Workloads with `supports_checkpoints`: the training state after this epoch (model,
    # optimizer, random generators, progress), built only when called, during `on_epoch`.
    state: Callable[[], dict[str, Any]] | None = field(default=None, compare=False, repr=False)


@dataclass
class RunResult:
    """The outcome of one run: the objective `value`, final named `metrics`, JSON-able `extras`."""

    value: float
    metrics: dict[str, float]
    extras: dict[str, Any] = field(default_factory=dict)


# Takes parameters, or a list of param-group dicts, as torch.optim optimizers do.
MakeOptimizer = Callable[
    [Iterable[torch.nn.Parameter] | Iterable[dict[str, Any]]], torch.optim.Optimizer
]
OnEpoch = Callable[[EpochReport], None]

_MISSING = object()


@dataclass(frozen=True)
class Option:
    """One workload option: its default, its type and the values allowed.

    `kind` is one of "int", "float", "str", "bool", "float_list", "int_list".
    `low`/`high` bound numbers (inclusive); `choices` lists allowed strings; `nullable` allows None.
    """

    default: Any
    kind: str
    help: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] | None = None
    nullable: bool = False

    def check(self, name: str, value: Any) -> Any:
        if value is None:
            if self.nullable:
                return None
            raise OptionError(f"option {name!r} must not be None ({self.describe()})")
        if self.kind in ("int_list", "float_list"):
            if isinstance(value, str):
                value = [v for v in value.replace(",", " ").split() if v]
            if not isinstance(value, Sequence):
                raise OptionError(
                    f"option {name!r} must be a list ({self.describe()}), got {value!r}"
                )
            scalar = Option(None, self.kind.removesuffix("_list"), self.help, self.low, self.high)
            return [scalar.check(name, v) for v in value]
        value = self._coerce(name, value)
        if self.kind in ("int", "float"):
            if self.kind == "float" and not math.isfinite(value):
                raise OptionError(f"option {name!r} must be finite, got {value!r}")
            if (self.low is not None and value < self.low) or (
                self.high is not None and value > self.high
            ):
                raise OptionError(
                    f"option {name!r} = {value!r} is out of range ({self.describe()})"
                )
        if self.choices is not None and value not in self.choices:
            raise OptionError(f"option {name!r} = {value!r} is not allowed ({self.describe()})")
        return value

    def _coerce(self, name: str, value: Any) -> Any:
        # Strings are accepted so that command-line `key=value` options work unchanged.
        bad = OptionError(f"option {name!r} must be {self.describe()}, got {value!r}")
        if self.kind == "bool":
            if isinstance(value, bool):
                return value
            if isinstance(value, str) and value.lower() in ("true", "false", "1", "0", "yes", "no"):
                return value.lower() in ("true", "1", "yes")
            raise bad
        if self.kind == "int":
            if isinstance(value, bool):
                raise bad
            if isinstance(value, (int, np.integer)):
                return int(value)
            if isinstance(value, float) and value.is_integer():
                return int(value)
            if isinstance(value, str):
                try:
                    return int(value)
                except ValueError:
                    raise bad from None
            raise bad
        if self.kind == "float":
            if isinstance(value, bool):
                raise bad
            if isinstance(value, (int, float, np.integer, np.floating)):
                return float(value)
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    raise bad from None
            raise bad
        if self.kind == "str":
            if not isinstance(value, str):
                raise bad
            return value
        raise AssertionError(f"unknown option kind {self.kind!r}")

    def describe(self) -> str:
        kind = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true/false"}
        text = kind.get(self.kind, f"a list ({self.kind.removesuffix('_list')}s)")
        if self.choices is not None:
            text = "one of " + ", ".join(repr(c) for c in self.choices)
        if self.low is not None and self.high is not None:
            text += f" in [{self.low}, {self.high}]"
        elif self.low is not None:
            text += f" >= {self.low}"
        elif self.high is not None:
            text += f" <= {self.high}"
        if self.nullable:
            text += " or null"
        return text


class Workload:
    """Base class of every workload (see docs/architecture.md for the contract).

    Subclasses set `metric`, `direction`, `unit` and `OPTIONS`, compute `max_epochs` from their
    options in `_configure`, and implement `run`.
    """

    name: str
    metric: ClassVar[str]
    direction: ClassVar[str]  # "minimize" | "maximize"
    unit: ClassVar[str] = "epoch"  # "epoch" | "step"
    # Optional checkpoint hook (used by Population Based Training): such a workload passes
    # `EpochReport.state` and accepts `run(..., resume=state)`, continuing after the saved
    # epoch with the optimizer the caller built (see `restore_optimizer`).
    supports_checkpoints: ClassVar[bool] = False
    OPTIONS: ClassVar[dict[str, Option]] = {}
    max_epochs: int
    options: dict[str, Any]

    def __init__(self, name: str, **options: Any) -> None:
        self.name = name
        unknown = sorted(set(options) - set(self.OPTIONS))
        if unknown:
            allowed = ", ".join(sorted(self.OPTIONS)) or "none"
            raise OptionError(
                f"unknown option(s) {', '.join(map(repr, unknown))} for workload {name!r} "
                f"(allowed: {allowed})"
            )
        resolved = {}
        for key, spec in self.OPTIONS.items():
            value = options.get(key, _MISSING)
            resolved[key] = spec.default if value is _MISSING else spec.check(key, value)
        self.options = resolved
        self._configure()

    def _configure(self) -> None:
        """Derive `max_epochs` (and cross-check options); overridden by subclasses."""
        self.max_epochs = int(self.options["epochs"])

    def prepare(self) -> None:
        """Load what every run reads (a dataset held in memory) once in this process.

        Optional: `run` must work without it. The runner calls it before it forks CPU worker
        processes, so that they share the loaded data instead of each loading it again.
        """

    def run(
        self,
        make_optimizer: MakeOptimizer,
        *,
        seed: int,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
    ) -> RunResult:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """The workload's identity as JSON-able data (what a run record stores)."""
        return {
            "name": self.name,
            "metric": self.metric,
            "direction": self.direction,
            "unit": self.unit,
            "max_epochs": self.max_epochs,
            "options": dict(self.options),
        }

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v!r}" for k, v in self.options.items())
        return f"{type(self).__name__}({self.name!r}, {opts})"


# ---- helpers shared by the workload modules ---------------------------------------------------


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) from one integer."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise OptionError(f"seed must be an integer, got {seed!r}")
    random.seed(int(seed))
    np.random.seed(int(seed) % 2**32)
    torch.manual_seed(int(seed))


def resolve_device(device: str | torch.device) -> torch.device:
    """Turn a device string into a torch.device, with a clear error for an unusable one."""
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise OptionError(f"device {device!r} is not a valid torch device: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise OptionError(f"device {device!r} requested but CUDA is not available")
    return dev


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def optimizer_internals(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The optimizer's own diagnostics (`internals()`), or {} for optimizers without them."""
    internals = getattr(optimizer, "internals", None)
    if internals is None:
        return {}
    return {str(k): float(v) for k, v in internals().items()}


def current_lr(optimizer: torch.optim.Optimizer) -> float:
    lr = optimizer.param_groups[0]["lr"]
    return float(lr.item() if isinstance(lr, torch.Tensor) else lr)


def epoch_metrics(
    optimizer: torch.optim.Optimizer,
    *,
    train_loss: float,
    step_time: float,
    **named: float,
) -> dict[str, float]:
    """The per-epoch metrics every workload reports, in a fixed order."""
    metrics = {"train_loss": float(train_loss)}
    metrics.update({k: float(v) for k, v in named.items()})
    metrics["lr"] = current_lr(optimizer)
    metrics["step_time"] = float(step_time)
    metrics.update(optimizer_internals(optimizer))
    return metrics


def check_finite(value: float, *, epoch: int, what: str) -> None:
    """Raise `Diverged` when a training quantity is NaN or infinite."""
    if not math.isfinite(value):
        raise Diverged(epoch, f"{what} is {value}")


class Stopwatch:
    """Accumulates wall time of device work (synchronising CUDA at both ends)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.total = 0.0
        self._start = 0.0

    def __enter__(self) -> Stopwatch:
        synchronize(self.device)
        self._start = time.perf_counter()
        return self

    def __exit__(self, *exc: object) -> None:
        synchronize(self.device)
        self.total += time.perf_counter() - self._start


def report(
    on_epoch: OnEpoch | None,
    epoch: int,
    value: float,
    metrics: Mapping[str, float],
    state: Callable[[], dict[str, Any]] | None = None,
) -> None:
    if on_epoch is not None:
        on_epoch(EpochReport(epoch=epoch, value=float(value), metrics=dict(metrics), state=state))


def restore_optimizer(optimizer: torch.optim.Optimizer, state: Mapping[str, Any]) -> None:
    """Load a saved optimizer state but keep the hyperparameters `optimizer` was built with.

    `load_state_dict` also restores the saved param-group hyperparameters; a resumed run that
    was given new ones (Population Based Training's explore step) must train with those.
    """
    current = [{k: v for k, v in g.items() if k != "params"} for g in optimizer.param_groups]
    optimizer.load_state_dict(dict(state))
    for group, hyperparameters in zip(optimizer.param_groups, current, strict=True):
        group.update(hyperparameters)
