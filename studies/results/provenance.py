"""Where a run's numbers come from: library versions, the git revision, the machine and worker."""

from __future__ import annotations

import contextlib
import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = ["git_revision", "library_versions", "worker_name"]


@functools.cache
def library_versions() -> dict[str, str]:
    """Versions of Python and the libraries a run's numbers depend on."""
    versions = {"python": platform.python_version()}
    for dist in ("hvadam", "torch", "optuna", "numpy", "pytorch-optimizer", "sqlalchemy"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            versions[dist] = metadata.version(dist)
    if "hvadam" not in versions:
        import hvadam

        versions["hvadam"] = hvadam.__version__
    return versions


@functools.cache
def git_revision() -> str | None:
    """The commit of the checkout the code runs from (with `+dirty` for local changes), or None."""
    here = Path(__file__).resolve().parent
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=here, capture_output=True, text=True, timeout=10
        )
        if rev.returncode != 0:
            return None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=here,
            capture_output=True,
            text=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    revision = rev.stdout.strip()
    if dirty.returncode == 0 and dirty.stdout.strip():
        revision += "+dirty"
    return revision or None


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"
