"""Workloads: what a trial trains and measures, found by name.

    >>> from studies.workloads import get_workload
    >>> w = get_workload("digits-mlp", epochs=5)
    >>> result = w.run(lambda params: torch.optim.Adam(params, lr=1e-3), seed=0, device="cpu")

A new shipped workload is one module plus one line in `_REGISTRY` below: the name, the module,
the class, and the options fixed by the name (for example the model of `cifar10-resnet34`).
Modules are imported on first use, so listing workloads never imports torchvision.

User workloads need no change here (see docs/workloads.md): a name `module:function` or
`module:Class` (a `Workload` subclass) is imported from the spec file's directory first, then
from `sys.path`; installed packages register names under the entry-point group
`hvadam.workloads`. `resolve_workload` is the one lookup behind every name.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import re
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from studies.workloads._base import (
    DataNotFoundError,
    Diverged,
    EpochReport,
    MakeOptimizer,
    OnEpoch,
    Option,
    OptionError,
    RunResult,
    Workload,
)
from studies.workloads._schedule import LrSchedule, OptimizerFactory, lr_schedule
from studies.workloads.user import FunctionWorkload, WorkloadLoadError, function_workload_class

__all__ = [
    "ENTRY_POINT_GROUP",
    "DataNotFoundError",
    "Diverged",
    "EpochReport",
    "FunctionWorkload",
    "LrSchedule",
    "MakeOptimizer",
    "OnEpoch",
    "OptimizerFactory",
    "Option",
    "OptionError",
    "RunResult",
    "Workload",
    "WorkloadLoadError",
    "available_workloads",
    "get_workload",
    "is_user_workload",
    "load_workload",
    "lr_schedule",
    "resolve_workload",
    "workload_class",
]

ENTRY_POINT_GROUP = "hvadam.workloads"

# name -> (module, class, options fixed by the name)
_REGISTRY: dict[str, tuple[str, str, dict[str, Any]]] = {
    "valley2d": ("studies.workloads.valley2d", "Valley2D", {}),
    "noisy-quadratic": ("studies.workloads.noisy_quadratic", "NoisyQuadratic", {}),
    "digits-mlp": ("studies.workloads.digits", "Digits", {"model": "mlp"}),
    "digits-cnn": ("studies.workloads.digits", "Digits", {"model": "cnn"}),
    "cifar10-vgg11": ("studies.workloads.cifar", "Cifar", {"dataset": "cifar10", "model": "vgg11"}),
    "cifar10-resnet34": ("studies.workloads.cifar", "Cifar", {"dataset": "cifar10", "model": "resnet34"}),
    "cifar10-densenet121": ("studies.workloads.cifar", "Cifar", {"dataset": "cifar10", "model": "densenet121"}),
    "cifar100-vgg11": ("studies.workloads.cifar", "Cifar", {"dataset": "cifar100", "model": "vgg11"}),
    "cifar100-resnet34": ("studies.workloads.cifar", "Cifar", {"dataset": "cifar100", "model": "resnet34"}),
    "cifar100-densenet121": ("studies.workloads.cifar", "Cifar", {"dataset": "cifar100", "model": "densenet121"}),
    "ptb-lstm1": ("studies.workloads.ptb", "PennTreebank", {"layers": 1}),
    "ptb-lstm2": ("studies.workloads.ptb", "PennTreebank", {"layers": 2}),
    "ptb-lstm3": ("studies.workloads.ptb", "PennTreebank", {"layers": 3}),
    "gpt-text": ("studies.workloads.gpt_text", "GPTText", {}),
    "ddpm-digits": ("studies.workloads.ddpm", "DDPM", {"dataset": "digits"}),
    "ddpm-cifar10": ("studies.workloads.ddpm", "DDPM", {"dataset": "cifar10"}),
    "gan-digits": ("studies.workloads.gan", "GAN", {"dataset": "digits"}),
    "gan-cifar10": ("studies.workloads.gan", "GAN", {"dataset": "cifar10"}),
}  # fmt: skip

_USER_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$")


def is_user_workload(name: str) -> bool:
    """Whether `name` has the `module:attribute` form of a user workload."""
    return isinstance(name, str) and bool(_USER_RE.match(name))


def _entry_points() -> dict[str, Any]:
    return {ep.name: ep for ep in importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)}


def available_workloads() -> list[str]:
    """The shipped workload names and those installed packages register, sorted."""
    return sorted(set(_REGISTRY) | set(_entry_points()))


def resolve_workload(
    name: str, *, base_dir: str | Path | None = None
) -> tuple[type[Workload], dict[str, Any]]:
    """The one lookup behind every workload name: (the class to build, options the name fixes).

    `name` is a shipped name, an entry-point name (group `hvadam.workloads`) or
    `module:attribute`, imported from `base_dir` (the spec file's directory) first, then from
    `sys.path`. A user function becomes a `FunctionWorkload` subclass around it. Raises
    `WorkloadLoadError` (a `ValueError`) with one line saying what is wrong.
    """
    if isinstance(name, str) and name in _REGISTRY:
        module, cls, fixed = _REGISTRY[name]
        return getattr(importlib.import_module(module), cls), dict(fixed)
    if is_user_workload(name):
        module, _, attr = name.partition(":")
        return _as_class(name, getattr_or_fail(name, _import(module, base_dir), attr)), {}
    points = _entry_points() if isinstance(name, str) else {}
    if name in points:
        try:
            obj = points[name].load()
        except Exception as exc:
            raise WorkloadLoadError(
                f"workload {name!r} (entry point {points[name].value!r} of group "
                f"{ENTRY_POINT_GROUP}) does not load: {type(exc).__name__}: {exc}"
            ) from None
        return _as_class(name, obj), {}
    raise WorkloadLoadError(
        f"unknown workload {name!r}; known: {', '.join(available_workloads())} "
        "(or 'module:function' / 'module:Class' for your own)"
    )


def getattr_or_fail(name: str, module: Any, attr: str) -> Any:
    try:
        return getattr(module, attr)
    except AttributeError:
        raise WorkloadLoadError(
            f"workload {name!r}: module {module.__name__!r} ({getattr(module, '__file__', '?')}) "
            f"has no attribute {attr!r}"
        ) from None


def _import(module: str, base_dir: str | Path | None) -> Any:
    top = module.split(".")[0]
    where = ""
    if base_dir is not None:
        root = Path(base_dir).resolve()
        where = f" (looked in {root}, then sys.path)"
        if (root / f"{top}.py").is_file() or (root / top / "__init__.py").is_file():
            loaded = sys.modules.get(top)
            origin = getattr(loaded, "__file__", None) or ""
            if loaded is not None and not Path(origin).resolve().is_relative_to(root):
                # Another spec's module of the same name: this spec's directory comes first.
                for key in [k for k in sys.modules if k == top or k.startswith(top + ".")]:
                    del sys.modules[key]
            sys.path.insert(0, str(root))
            try:
                return _import_module(module, where)
            finally:
                sys.path.remove(str(root))
    return _import_module(module, where)


def _import_module(module: str, where: str) -> Any:
    try:
        return importlib.import_module(module)
    except Exception as exc:
        raise WorkloadLoadError(
            f"cannot import module {module!r}{where}: {type(exc).__name__}: {exc}"
        ) from None


def _as_class(name: str, obj: Any) -> type[Workload]:
    if isinstance(obj, type):
        if issubclass(obj, Workload):
            return obj
        raise WorkloadLoadError(
            f"workload {name!r} is a class but not a subclass of studies.workloads.Workload"
        )
    if callable(obj):
        return function_workload_class(name, obj)
    raise WorkloadLoadError(
        f"workload {name!r} is of type {type(obj).__name__}, not a function or a Workload subclass"
    )


def workload_class(name: str, *, base_dir: str | Path | None = None) -> type[Workload]:
    """The class behind a workload name (without building a workload)."""
    return resolve_workload(name, base_dir=base_dir)[0]


def load_workload(
    name: str,
    options: Mapping[str, Any] | None = None,
    *,
    metric: Mapping[str, Any] | None = None,
    base_dir: str | Path | None = None,
) -> Workload:
    """Build the workload `name` with `options`; `metric` ({name, direction}) is a function
    workload's (required there, refused for a class, which defines its own).

    Raises `WorkloadLoadError` for a name that does not resolve, `OptionError` for a bad
    option or one the name already fixes; both are `ValueError`s.
    """
    klass, fixed = resolve_workload(name, base_dir=base_dir)
    options = dict(options or {})
    clash = sorted(set(fixed) & set(options))
    if clash:
        raise OptionError(
            f"option(s) {', '.join(map(repr, clash))} are fixed by the workload name {name!r} "
            f"({', '.join(f'{k}={v!r}' for k, v in fixed.items())})"
        )
    if issubclass(klass, FunctionWorkload):
        return klass(name, metric=metric, **options)
    if metric is not None:
        raise WorkloadLoadError(
            f"workload {name!r} defines its metric ({klass.metric}, {klass.direction}); "
            "'metric' is only for function workloads"
        )
    return klass(name, **fixed, **options)


def get_workload(name: str, **options: Any) -> Workload:
    """Build the workload registered as `name` with `options` (validated; see its `OPTIONS`).

    Raises `ValueError` for an unknown name (listing the known ones) and `OptionError`
    (a `ValueError`) for an unknown or invalid option, or one that the name already fixes.
    """
    return load_workload(name, options)
