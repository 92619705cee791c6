"""Workloads: what a trial trains and measures, found by name.

    >>> from studies.workloads import get_workload
    >>> w = get_workload("digits-mlp", epochs=5)
    >>> result = w.run(lambda params: torch.optim.Adam(params, lr=1e-3), seed=0, device="cpu")

A new workload is one module plus one line in `_REGISTRY` below: the name, the module, the
class, and the options fixed by the name (for example the model of `cifar10-resnet34`).
Modules are imported on first use, so listing workloads never imports torchvision.
"""

from __future__ import annotations

import importlib
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
    "available_workloads",
    "get_workload",
    "workload_class",
]

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
}  # fmt: skip


def available_workloads() -> list[str]:
    """The registered workload names, sorted."""
    return sorted(_REGISTRY)


def workload_class(name: str) -> type[Workload]:
    """The class behind a registered name (without building a workload)."""
    module, cls, _ = _lookup(name)
    return getattr(importlib.import_module(module), cls)


def get_workload(name: str, **options: Any) -> Workload:
    """Build the workload registered as `name` with `options` (validated; see its `OPTIONS`).

    Raises `ValueError` for an unknown name (listing the known ones) and `OptionError`
    (a `ValueError`) for an unknown or invalid option, or one that the name already fixes.
    """
    module, cls, fixed = _lookup(name)
    clash = sorted(set(fixed) & set(options))
    if clash:
        raise OptionError(
            f"option(s) {', '.join(map(repr, clash))} are fixed by the workload name {name!r} "
            f"({', '.join(f'{k}={v!r}' for k, v in fixed.items())})"
        )
    klass = getattr(importlib.import_module(module), cls)
    return klass(name, **fixed, **options)


def _lookup(name: str) -> tuple[str, str, dict[str, Any]]:
    if not isinstance(name, str) or name not in _REGISTRY:
        raise ValueError(f"unknown workload {name!r}; known: {', '.join(available_workloads())}")
    return _REGISTRY[name]
