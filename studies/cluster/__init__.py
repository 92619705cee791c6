"""Cluster launch: job scripts for running a campaign on many nodes (shipped as package data).

- `slurm-workers.sbatch`: a SLURM array job, one `hvadam worker` per task, one GPU each, all on
  one PostgreSQL database (`render_slurm_workers`, `hvadam cluster slurm`).
- `ray-cluster.sbatch`: one SLURM job that starts a Ray cluster (`ray start` head and workers)
  and runs `hvadam tune --backend ray --address auto` on it (`render_ray_cluster`,
  `hvadam cluster ray`).
- `ray-cluster.sh`: the same Ray recipe by hand, for machines without SLURM (copied as it is).

The storage URL is never written into a script: the scripts read `HVADAM_STORAGE` from the
environment (sbatch passes the submitting shell's environment on), and carry the URL only
masked, in a comment. SLURM stores batch scripts (accounting, `scontrol write batch_script`)
where other users and administrators can read them; a password there would leak.
"""

from __future__ import annotations

import re
import shlex
from importlib import resources
from pathlib import Path
from typing import Any

from studies.storage import check_storage_url, mask_url

__all__ = [
    "ClusterError",
    "available_templates",
    "render_ray_cluster",
    "render_slurm_workers",
    "template_text",
]

_PLACEHOLDER = re.compile(r"@([A-Z_]+)@")
_TIME = re.compile(r"^(\d+-)?\d{1,3}(:\d{2}){0,2}\Z")
_NAME = re.compile(r"^[A-Za-z0-9._-]+\Z")


class ClusterError(ValueError):
    """Options that cannot make a job script; the message names the option and what is allowed."""


def available_templates() -> list[str]:
    """The job-script templates shipped with the project."""
    folder = resources.files("studies") / "cluster"
    return sorted(p.name for p in folder.iterdir() if p.name.endswith((".sbatch", ".sh")))


def template_text(name: str) -> str:
    """The text of a shipped template (with its `@PLACEHOLDERS@`)."""
    if name not in available_templates():
        raise ClusterError(
            f"no cluster template {name!r}; shipped: {', '.join(available_templates())}"
        )
    return (resources.files("studies") / "cluster" / name).read_text()


def _fill(template: str, values: dict[str, str]) -> str:
    def sub(match: re.Match[str]) -> str:
        key = match.group(1)
        if key not in values:
            raise AssertionError(f"template placeholder @{key}@ has no value")
        return values[key]

    text = _PLACEHOLDER.sub(sub, template)
    # Optional #SBATCH lines left empty are dropped, not left as blank lines.
    return re.sub(r"\n(?:[ \t]*\n)+(?=set -euo)", "\n", text)


def _check_common(
    *, spec: Any, storage: str, time: str, partition: str | None, cpus: int, script: str
) -> dict[str, str]:
    parsed = check_storage_url(storage)
    if parsed.get_backend_name() == "sqlite":
        raise ClusterError(
            f"--storage {mask_url(storage)!r} is a SQLite file; jobs on several nodes need a "
            f"database server, e.g. postgresql+psycopg://USER:PASSWORD@HOST:5432/DBNAME"
        )
    if not _TIME.match(time):
        raise ClusterError(
            f"--time {time!r} is not a SLURM time; use MINUTES, HH:MM:SS or DAYS-HH:MM:SS"
        )
    if partition is not None and not _NAME.match(partition):
        raise ClusterError(f"--partition {partition!r} must be a plain partition name")
    if cpus < 1:
        raise ClusterError(f"--cpus must be >= 1, got {cpus}")
    return {
        "CAMPAIGN": spec.name,
        "WORKLOAD": spec.workload,
        "SPEC": shlex.quote(str(spec.source)),
        "STORAGE_MASKED": mask_url(storage),
        "TIME": time,
        "CPUS": str(cpus),
        "PARTITION_LINE": f"#SBATCH --partition={partition}" if partition else "",
        "SCRIPT": script,
    }


def _extra_lines(extra: list[str] | None) -> str:
    lines = []
    for option in extra or []:
        if not option.startswith("--") or "\n" in option:
            raise ClusterError(f"--sbatch {option!r} must be one sbatch option like --mem=32G")
        lines.append(f"#SBATCH {option}")
    return "\n".join(lines)


def render_slurm_workers(
    *,
    spec: Any,
    storage: str,
    workers: int,
    partition: str | None = None,
    time: str = "24:00:00",
    gpus_per_task: int = 1,
    cpus: int = 4,
    log_dir: str = ".",
    setup: str = "",
    sbatch: list[str] | None = None,
    script: str = "hvadam-workers.sbatch",
) -> str:
    """The SLURM array-job script of `workers` `hvadam worker` tasks on one campaign.

    `spec` is a loaded `CampaignSpec` (its source path goes into the script, so every node
    must see that file); `storage` only decides the masked comment and is checked to be a
    server database. `setup`: shell lines run before the worker (activating an environment).
    """
    if workers < 1:
        raise ClusterError(f"--workers must be >= 1, got {workers}")
    if gpus_per_task < 0:
        raise ClusterError(f"--gpus-per-task must be >= 0, got {gpus_per_task}")
    values = _check_common(
        spec=spec, storage=storage, time=time, partition=partition, cpus=cpus, script=script
    )
    values.update(
        LAST_TASK=str(workers - 1),
        LOG_DIR=log_dir,
        GPU_LINE=f"#SBATCH --gres=gpu:{gpus_per_task}" if gpus_per_task else "",
        DEVICE="cuda" if gpus_per_task else "cpu",
        SETUP=setup.strip(),
        EXTRA_LINES=_extra_lines(sbatch),
    )
    return _fill(template_text("slurm-workers.sbatch"), values)


def render_ray_cluster(
    *,
    spec: Any,
    storage: str,
    nodes: int,
    partition: str | None = None,
    time: str = "24:00:00",
    gpus_per_node: int = 1,
    cpus: int = 8,
    port: int = 6379,
    log_dir: str = ".",
    setup: str = "",
    sbatch: list[str] | None = None,
    script: str = "hvadam-ray.sbatch",
) -> str:
    """The SLURM script that starts a Ray cluster on `nodes` nodes and runs the campaign on it."""
    if nodes < 1:
        raise ClusterError(f"--nodes must be >= 1, got {nodes}")
    if gpus_per_node < 0:
        raise ClusterError(f"--gpus-per-node must be >= 0, got {gpus_per_node}")
    if not 1024 <= port <= 65535:
        raise ClusterError(f"--port must be in [1024, 65535], got {port}")
    values = _check_common(
        spec=spec, storage=storage, time=time, partition=partition, cpus=cpus, script=script
    )
    values.update(
        NODES=str(nodes),
        LOG_DIR=log_dir,
        GPU_LINE=f"#SBATCH --gres=gpu:{gpus_per_node}" if gpus_per_node else "",
        GPUS=str(gpus_per_node),
        PORT=str(port),
        SETUP=setup.strip(),
        EXTRA_LINES=_extra_lines(sbatch),
    )
    return _fill(template_text("ray-cluster.sbatch"), values)


def write_script(text: str, path: str | Path) -> Path:
    """Write a job script, executable by its owner only (it names the database host)."""
    path = Path(path)
    path.write_text(text)
    path.chmod(0o700)
    return path
