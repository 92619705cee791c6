"""What several test modules need: the repository root, spec files, a subprocess environment,
a free port, and skipping (or, in CI, failing) when a real component is missing.

Fixtures live in conftest.py; plain functions live here and are imported by name.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
REQUIRE_SERVICES = os.environ.get("HVADAM_REQUIRE_SERVICES") == "1"


def missing_component(what: str) -> None:
    """Skip the test, or fail it when CI requires every component to be present."""
    if REQUIRE_SERVICES:
        pytest.fail(f"{what} (HVADAM_REQUIRE_SERVICES=1: required in CI)", pytrace=False)
    pytest.skip(what)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_spec(folder: Path, data: Mapping[str, Any], **changes: Any) -> Path:
    """`data` with `changes` applied, written as `<folder>/<name>.yaml`."""
    spec = {**data, **changes}
    path = folder / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def subprocess_env(**extra: str) -> dict[str, str]:
    """The environment of a child process running this checkout's code (`python -m
    studies.cli`, a script): PYTHONPATH at the repository root, HVADAM_DEBUG unset (so that
    errors print as users see them), then `extra`."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    env.pop("HVADAM_DEBUG", None)
    env.update(extra)
    return env
