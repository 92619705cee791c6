"""Values as the results tables store them: strict JSON data, finite floats or nothing."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any, TypeGuard

__all__ = ["finite_or_none", "is_finite_number", "jsonable"]


def jsonable(value: Any) -> Any:
    """`value` as strict JSON data: tuples as lists, numpy scalars as Python, NaN/inf as None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if hasattr(value, "tolist"):  # numpy / torch scalars and arrays (`item` fails on arrays)
        return jsonable(value.tolist())
    if hasattr(value, "item"):
        return jsonable(value.item())
    return str(value)


def finite_or_none(value: float | None) -> float | None:
    """`value` as a float when it is a finite number, else None (what a nullable column stores)."""
    if value is None:
        return None
    value = float(value)
    return value if math.isfinite(value) else None


def is_finite_number(value: Any) -> TypeGuard[int | float]:
    """Whether `value` is a finite int or float (not a bool, None, string or array)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
