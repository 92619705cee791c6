"""Command-line parts of the Ray backend and the cluster launch (used by `studies.cli`).

`hvadam tune SPEC --backend ray [--address auto|HOST:PORT] [--max-concurrent N]
[--scheduler asha|pbt|fifo] [--cpus-per-trial C] [--gpus-per-trial G]`, and
`hvadam cluster slurm|ray SPEC ...` (job scripts; see `studies.cluster`).
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable
from typing import Any

__all__ = [
    "add_backend_options",
    "add_cluster_parser",
    "backend_runner",
    "cmd_cluster",
    "ray_run_options",
]


def add_backend_options(p: argparse.ArgumentParser) -> None:
    """`hvadam tune`'s backend options."""
    from studies.execution import SCHEDULERS

    g = p.add_argument_group("backend")
    g.add_argument(
        "--backend",
        choices=("optuna", "ray"),
        default="optuna",
        help="optuna: worker processes (default); ray: Ray Tune schedules the trials",
    )
    g.add_argument(
        "--address",
        metavar="ADDR",
        help="ray: join this Ray cluster (auto, or HOST:PORT); default: start a local Ray",
    )
    g.add_argument(
        "--max-concurrent",
        type=int,
        metavar="N",
        help="ray: at most N trials at once (default: the spec's max_concurrent, else --workers "
        "when > 1, else as resources allow)",
    )
    g.add_argument(
        "--scheduler",
        choices=SCHEDULERS,
        help="ray: trial scheduler (default: the spec's ray.scheduler, else asha; fifo when "
        "the spec's pruner is none)",
    )
    g.add_argument("--cpus-per-trial", type=float, metavar="C", help="ray: CPUs per trial")
    g.add_argument(
        "--gpus-per-trial", type=float, metavar="G", help="ray: GPUs per trial (fractions share)"
    )


def backend_runner(
    args: argparse.Namespace, spec: Any, default: Callable[..., None]
) -> tuple[Callable[..., None], dict[str, Any]]:
    """The function that runs the campaign (`default`: the Optuna runner's) and its extra
    keyword arguments, from `--backend` and the Ray options."""
    if getattr(args, "backend", "optuna") != "ray":
        if hasattr(args, "backend"):
            check_backend_args(args)
        return default, {}
    from studies.ray_backend import run_campaign_ray

    return run_campaign_ray, ray_run_options(args, spec)


def ray_run_options(args: argparse.Namespace, spec: Any) -> dict[str, Any]:
    """Keyword arguments for `run_campaign_ray` from the parsed `hvadam tune` options."""
    from studies.execution import Execution

    base = spec.execution or Execution()
    execution = base.with_changes(
        max_concurrent=args.max_concurrent,
        scheduler=args.scheduler,
        cpus=args.cpus_per_trial,
        gpus=args.gpus_per_trial,
    )
    return {"address": args.address, "execution": execution}


def check_backend_args(args: argparse.Namespace) -> None:
    """Options that only make sense with the Ray backend are refused with the Optuna one."""
    if getattr(args, "backend", "optuna") == "ray":
        return
    given = [
        flag
        for flag, value in (
            ("--address", args.address),
            ("--max-concurrent", args.max_concurrent),
            ("--scheduler", args.scheduler),
            ("--cpus-per-trial", args.cpus_per_trial),
            ("--gpus-per-trial", args.gpus_per_trial),
        )
        if value is not None
    ]
    if given:
        raise ValueError(f"{', '.join(given)}: only with --backend ray")


# ---- hvadam cluster ----------------------------------------------------------------------------


def add_cluster_parser(sub: Any) -> None:
    p = sub.add_parser(
        "cluster",
        help="write a job script that runs a campaign on a cluster (SLURM, Ray)",
        description="Write a job script for a campaign. The storage URL is not written into "
        "the script: the script reads HVADAM_STORAGE from the environment at run time.",
    )
    kinds = p.add_subparsers(dest="kind", required=True, metavar="KIND")
    for kind, help_text in (
        ("slurm", "a SLURM array job: one `hvadam worker` per task, one GPU each"),
        ("ray", "a SLURM job that starts a Ray cluster and runs `hvadam tune --backend ray`"),
    ):
        k = kinds.add_parser(kind, help=help_text)
        k.add_argument("spec", help="a shipped spec name or a YAML path (seen by every node)")
        k.add_argument(
            "--storage",
            metavar="URL",
            help="the campaign database (PostgreSQL; default: $HVADAM_STORAGE); only its "
            "masked form goes into the script",
        )
        if kind == "slurm":
            k.add_argument("--workers", type=int, required=True, help="array tasks (workers)")
            k.add_argument("--gpus-per-task", type=int, default=1, help="default 1; 0: CPU")
            k.add_argument("--cpus", type=int, default=4, help="CPUs per task (default 4)")
        else:
            k.add_argument("--nodes", type=int, required=True, help="nodes of the Ray cluster")
            k.add_argument("--gpus-per-node", type=int, default=1, help="default 1")
            k.add_argument("--cpus", type=int, default=8, help="CPUs per node (default 8)")
            k.add_argument("--port", type=int, default=6379, help="Ray head port (default 6379)")
        k.add_argument("--partition", help="SLURM partition")
        k.add_argument("--time", default="24:00:00", help="time limit (default 24:00:00)")
        k.add_argument("--log-dir", default=".", help="where SLURM writes the job logs")
        k.add_argument(
            "--setup",
            default="",
            help="shell line(s) run first on each node, e.g. 'source ~/venv/bin/activate'",
        )
        k.add_argument(
            "--sbatch",
            action="append",
            metavar="OPTION",
            help="an extra #SBATCH option, e.g. --sbatch=--mem=32G (repeatable)",
        )
        k.add_argument("-o", "--output", metavar="FILE", help="write here (default: stdout)")
        k.set_defaults(func=cmd_cluster)


def cmd_cluster(args: argparse.Namespace) -> int:
    from studies.cluster import render_ray_cluster, render_slurm_workers, write_script
    from studies.spec import load_spec
    from studies.storage import STORAGE_ENV, resolve_storage_url

    if not args.storage and not os.environ.get(STORAGE_ENV):
        raise ValueError(
            f"--storage: give the campaign's database URL (or set {STORAGE_ENV}); the script "
            f"reads it from {STORAGE_ENV} when it runs"
        )
    url = resolve_storage_url(args.storage)
    spec = load_spec(args.spec, check=False)
    script = os.path.basename(args.output) if args.output else f"hvadam-{args.kind}.sbatch"
    common = dict(
        spec=spec,
        storage=url,
        partition=args.partition,
        time=args.time,
        cpus=args.cpus,
        log_dir=args.log_dir,
        setup=args.setup,
        sbatch=args.sbatch,
        script=script,
    )
    if args.kind == "slurm":
        text = render_slurm_workers(
            workers=args.workers, gpus_per_task=args.gpus_per_task, **common
        )
    else:
        text = render_ray_cluster(
            nodes=args.nodes, gpus_per_node=args.gpus_per_node, port=args.port, **common
        )
    if args.output:
        path = write_script(text, args.output)
        print(
            f"wrote {path}; submit with the database URL in the environment:\n"
            f"  export {STORAGE_ENV}='...'   # the full URL, with its password\n"
            f"  sbatch {path}",
            file=sys.stderr,
        )
    else:
        sys.stdout.write(text)
    return 0
