"""Where a run's numbers come from: library, CUDA and cuDNN versions, the GPU, the git revision,
the machine and worker."""

from __future__ import annotations

import functools
import os
import platform
import socket
import subprocess
from importlib import metadata
from pathlib import Path

__all__ = [
    "LIBRARIES",
    "cudnn_version",
    "git_revision",
    "gpu_name",
    "library_versions",
    "run_provenance",
    "worker_name",
]


# The distributions whose versions a run records (None when one is not installed).
LIBRARIES = (
    "hvadam",
    "torch",
    "torchvision",
    "optuna",
    "ray",
    "numpy",
    "pytorch-optimizer",
    "sqlalchemy",
)


@functools.cache
def library_versions() -> dict[str, str | None]:
    """Versions of Python, the libraries a run's numbers depend on, and the CUDA and cuDNN
    that torch was built with (None where absent: a CPU build, a library not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for dist in LIBRARIES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = None
    if versions["hvadam"] is None:
        import hvadam

        versions["hvadam"] = hvadam.__version__
    import torch

    versions["cuda"] = torch.version.cuda
    versions["cudnn"] = cudnn_version(
        torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    )
    return versions


def cudnn_version(number: int | None) -> str | None:
    """cuDNN's version number as `major.minor.patch` (its CUDNN_VERSION encoding: major * 1000
    before cuDNN 9, major * 10000 from 9 on)."""
    if number is None:
        return None
    major, rest = divmod(number, 10000) if number >= 90000 else divmod(number, 1000)
    return f"{major}.{rest // 100}.{rest % 100}"


@functools.cache
def gpu_name(device: str) -> str | None:
    """The name of the GPU a run on `device` uses (`cuda`, `cuda:1`), None for other devices.

    CPU runs never initialise CUDA here (a forked worker could not use it afterwards)."""
    if not device.startswith("cuda"):
        return None
    import torch

    if not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_name(torch.device(device))


def run_provenance(device: str) -> dict[str, str | None]:
    """What a run records in its `versions` column: `library_versions()` and the GPU name."""
    return {**library_versions(), "gpu": gpu_name(device)}


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
