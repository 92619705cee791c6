"""The optimizer registry: HVAdam, Anon and the baselines, found by name, with their defaults.

Each optimizer is one :class:`OptimizerEntry` line below. Its hyperparameters and their defaults
are read from the constructor's signature, so they are never copied by hand; an entry may fix
some of them (``amsgrad`` is ``torch.optim.Adam`` with ``amsgrad=True``). Implementation flags
(``foreach``, ``fused``, ...) are not hyperparameters: they are neither listed nor accepted, so the
library picks its fastest implementation. Classes are imported only when first used.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported with the optimizer classes, not with the registry
    import torch

__all__ = [
    "IMPLEMENTATION_FLAGS",
    "OptimizerEntry",
    "available_optimizers",
    "create_optimizer",
    "optimizer_class",
    "optimizer_defaults",
    "resolve_hyperparameters",
]

# Constructor arguments that choose how, not what, an optimizer computes.
IMPLEMENTATION_FLAGS = frozenset({"foreach", "fused", "capturable", "differentiable"})


@dataclass(frozen=True)
class OptimizerEntry:
    """One registered optimizer: its name, the class (``"module:Class"``) and fixed settings."""

    name: str
    target: str
    fixed: Mapping[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        object.__setattr__(self, "fixed", MappingProxyType(dict(self.fixed)))


_ENTRIES = [
    OptimizerEntry("hvadam", "hvadam._hvadam:HVAdam"),
    OptimizerEntry("anon", "hvadam._anon:Anon"),
    OptimizerEntry("sgd", "torch.optim:SGD"),
    OptimizerEntry("adam", "torch.optim:Adam"),
    OptimizerEntry("adamw", "torch.optim:AdamW"),
    OptimizerEntry("amsgrad", "torch.optim:Adam", fixed={"amsgrad": True}),
    OptimizerEntry("radam", "torch.optim:RAdam"),
    OptimizerEntry("nadam", "torch.optim:NAdam"),
    OptimizerEntry("adamax", "torch.optim:Adamax"),
    OptimizerEntry("adagrad", "torch.optim:Adagrad"),
    OptimizerEntry("rmsprop", "torch.optim:RMSprop"),
    OptimizerEntry("adabelief", "pytorch_optimizer:AdaBelief"),
    OptimizerEntry("lion", "pytorch_optimizer:Lion"),
    OptimizerEntry("yogi", "pytorch_optimizer:Yogi"),
    OptimizerEntry("adabound", "pytorch_optimizer:AdaBound"),
]
_REGISTRY = {entry.name: entry for entry in _ENTRIES}


def available_optimizers() -> list[str]:
    """The registered names (lower case): HVAdam and Anon first, then the baselines."""
    return list(_REGISTRY)


def _entry(name: str) -> OptimizerEntry:
    if not isinstance(name, str):
        raise ValueError(f"optimizer name must be a string, got {name!r}")
    entry = _REGISTRY.get(name.strip().lower())
    if entry is None:
        known = ", ".join(available_optimizers())
        raise ValueError(f"unknown optimizer {name!r}; known optimizers: {known}")
    return entry


def optimizer_class(name: str) -> type[torch.optim.Optimizer]:
    """The optimizer class registered as ``name`` (imported on first use)."""
    module_name, _, class_name = _entry(name).target.partition(":")
    return getattr(importlib.import_module(module_name), class_name)


def optimizer_defaults(name: str) -> dict[str, Any]:
    """Every hyperparameter ``name`` accepts, with its default (fixed settings applied)."""
    entry = _entry(name)
    defaults: dict[str, Any] = {}
    for parameter in inspect.signature(optimizer_class(name)).parameters.values():
        if parameter.name == "params" or parameter.name in IMPLEMENTATION_FLAGS:
            continue
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        if parameter.default is parameter.empty:
            raise TypeError(f"{entry.target}: hyperparameter {parameter.name!r} has no default")
        defaults[parameter.name] = _normalise(parameter.default)
    defaults.update(entry.fixed)
    return defaults


def resolve_hyperparameters(name: str, **hyperparameters: Any) -> dict[str, Any]:
    """The defaults of ``name`` overlaid with ``hyperparameters``: the full resolved set.

    Lists are accepted where the optimizer wants tuples (YAML and JSON have no tuples).
    """
    entry = _entry(name)
    resolved = optimizer_defaults(name)
    unknown = sorted(set(hyperparameters) - set(resolved))
    if unknown:
        accepted = ", ".join(resolved)
        raise ValueError(
            f"unknown hyperparameter(s) {', '.join(map(repr, unknown))} for optimizer "
            f"{entry.name!r}; it accepts: {accepted}"
        )
    for key, value in hyperparameters.items():
        value = _normalise(value)
        if key in entry.fixed and value != entry.fixed[key]:
            raise ValueError(
                f"optimizer {entry.name!r} fixes {key}={entry.fixed[key]!r}; got {key}={value!r}"
            )
        resolved[key] = value
    return resolved


def create_optimizer(
    name: str, params: Iterable[Any], **hyperparameters: Any
) -> torch.optim.Optimizer:
    """Build the optimizer registered as ``name`` over ``params`` (tensors or param groups).

    ``hyperparameters`` override the defaults; unknown names raise ``ValueError``.
    """
    resolved = resolve_hyperparameters(name, **hyperparameters)
    return optimizer_class(name)(params, **resolved)


def _normalise(value: Any) -> Any:
    """Lists become tuples (recursively): optimizers take ``betas`` and ranges as tuples."""
    if isinstance(value, (list, tuple)):
        return tuple(_normalise(item) for item in value)
    return value
