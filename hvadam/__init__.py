"""HVAdam and Anon optimizers, the optimizer registry, and optimizer config files.

A training script needs only this package::

    import hvadam
    opt = hvadam.load_optimizer(model.parameters(), "best.yaml")
    schedule = hvadam.load_schedule(opt, "best.yaml", total_steps)  # step() after each step
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# Public names re-exported from private modules, imported on first use so that
# `import hvadam` stays cheap (the registry pulls in pytorch-optimizer).
_EXPORTS = {
    "HVAdam": "hvadam._hvadam",
    "Anon": "hvadam._anon",
    "create_optimizer": "hvadam.registry",
    "available_optimizers": "hvadam.registry",
    "optimizer_defaults": "hvadam.registry",
    "resolve_hyperparameters": "hvadam.registry",
    "load_optimizer": "hvadam.config",
    "load_config": "hvadam.config",
    "dump_config": "hvadam.config",
    "load_schedule": "hvadam.schedules",
    "lr_lambda": "hvadam.schedules",
}

__all__ = [*_EXPORTS, "__version__"]


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'hvadam' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(__all__)
