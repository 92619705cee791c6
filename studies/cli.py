"""The `hvadam` command line: tune, worker, status, compare, specs, spaces, demo.

Every error a user can cause (bad spec, bad storage URL, conflicting campaign, ...) prints one
line, `hvadam: error: ...`, with any password in it masked, and exits with status 2.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import os
import sys
import threading
from collections.abc import Sequence
from typing import Any, NoReturn

from studies.formatting import format_number, table
from studies.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    check_storage_identity,
    close_pooled_connections,
    error_summary,
    mask_text,
    mask_url,
    resolve_storage_url,
    storage_identity,
)

__all__ = ["main"]

DEMO_SPECS = ("digits", "valley2d")


class UsageError(ValueError):
    """A command used wrongly (unknown campaign, ...)."""


# ---- helpers -----------------------------------------------------------------------------------


def _storage(args: argparse.Namespace, *, read_only: bool = False) -> str:
    """The storage URL, checked and connected to; `read_only` commands never create it."""
    from studies.storage import check_storage_exists, check_storage_url, connect_check

    url = resolve_storage_url(args.storage)
    check_storage_url(url)
    if read_only:
        check_storage_exists(url)
    connect_check(url)
    return url


def _check_run_flags(args: argparse.Namespace, spec: Any) -> None:
    """Every run flag checked before the storage is opened or anything is written."""
    from studies.ray_cli import check_backend_args
    from studies.run_settings import check_device, check_run_settings

    check_run_settings(
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        threads=args.threads,
        device=args.device,
    )
    local = getattr(args, "backend", "optuna") != "ray"
    workers = getattr(args, "workers", None)
    if workers is not None:
        if local:
            from studies.launch import check_workers

            check_workers(workers)
        elif workers < 1:
            raise UsageError(f"--workers must be an integer >= 1, got {workers}")
    if getattr(args, "worker_index", None) is not None and args.worker_index < 0:
        raise UsageError(f"--worker-index must be >= 0, got {args.worker_index}")
    if hasattr(args, "backend"):
        check_backend_args(args)
    if local:  # the Ray backend's trials run on the cluster's nodes, not here
        what = "--device" if args.device else f"spec {spec.source}: device"
        check_device(args.device or spec.device, what=what)


def _runner_config(args: argparse.Namespace, url: str, spec: Any = None) -> Any:
    from studies.artifacts import resolve_artifacts
    from studies.runner import RunnerConfig

    artifacts = resolve_artifacts(url, getattr(args, "artifacts", None))
    if artifacts is None and spec is not None and spec.live is not None and spec.live.checkpoints:
        raise UsageError(
            f"spec {spec.source}: artifacts.checkpoints: needs an artifact store, and a "
            f"{mask_url(url).split(':', 1)[0]} storage has no default one (workers on other "
            f"machines would write to different disks); give --artifacts s3://BUCKET or a "
            f"directory every worker shares"
        )
    return RunnerConfig(
        storage=url,
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        device=args.device,
        threads=args.threads,
        worker_index=getattr(args, "worker_index", None),
        artifacts=artifacts,
    )


# ---- commands ----------------------------------------------------------------------------------


def _load_spec(args: argparse.Namespace) -> Any:
    from studies.spec import load_spec

    if getattr(args, "data_dir", None):
        os.environ["HVADAM_DATA_DIR"] = os.path.abspath(args.data_dir)
    return load_spec(args.spec)


def _run(args: argparse.Namespace, spec: Any, url: str, *, workers: int, quiet: bool) -> None:
    from studies.progress import Poller, Progress, events_from_rows
    from studies.ray_cli import backend_runner
    from studies.results import ResultsDB
    from studies.runner import prepare_campaign, run_campaign

    run, backend = backend_runner(args, spec, run_campaign)  # --backend optuna|ray
    config = _runner_config(args, url, spec)  # checked before anything is written
    info = prepare_campaign(spec, url)
    identity = storage_identity(url)  # the database file the campaign is in (SQLite)
    db = ResultsDB(url)
    progress = Progress(spec, metric=info["metric"], direction=info["direction"], quiet=quiet)
    progress.start(events_from_rows(db.finished_runs(spec.name)))

    poll = Poller(db, spec.name, progress)
    try:
        run(
            spec,
            config,
            workers=workers,
            spec_arg=spec.source,
            on_event=progress,
            poll=poll,
            **backend,
        )
    finally:
        progress.close()
    check_storage_identity(url, identity)  # never a comparison read from a deleted file
    for hook in _plugins("hvadam.campaign_finished"):
        try:
            hook(url, spec.name)
        except Exception as exc:  # a hook's failure never undoes a finished campaign
            print(f"hvadam: warning: {hook.__module__}.{hook.__name__}: {exc}", file=sys.stderr)


def _plugins(group: str) -> list[Any]:
    """What packages downstream of `studies` add to the command line, found by entry point.

    `dashboards` registers its commands (`dashboard`, `report`, `export`) and a hook that
    writes the studies' notes when a campaign finishes, so `studies` never imports it.
    """
    from importlib.metadata import entry_points

    found = []
    for entry in sorted(entry_points(group=group), key=lambda e: e.name):
        try:
            found.append(entry.load())
        except ImportError:  # its optional dependencies are not installed
            continue
    return found


def cmd_tune(args: argparse.Namespace) -> int:
    from studies.tuning_output import compare_output

    spec = _load_spec(args)
    _check_run_flags(args, spec)
    url = _storage(args)
    if not args.quiet:
        print(
            f"campaign {spec.name!r}: workload {spec.workload}, {len(spec.labels)} optimizers x "
            f"{_budget_text(spec)}, confirm on {spec.confirm_seeds} seeds; "
            f"storage {mask_url(url)}"
        )
        from studies.artifacts import resolve_artifacts

        files = resolve_artifacts(url, args.artifacts)
        print(f"artifacts: {files or 'none (a server database needs --artifacts DIR|s3://BUCKET)'}")
    _run(args, spec, url, workers=args.workers, quiet=args.quiet)
    print(compare_output(url, spec.name, fmt="table"))  # with time-to-target for a `target:`
    return 0


def cmd_worker(args: argparse.Namespace) -> int:
    from studies.progress import Progress
    from studies.runner import Worker, prepare_campaign

    spec = _load_spec(args)
    _check_run_flags(args, spec)
    url = _storage(args)
    config = _runner_config(args, url, spec)  # checked before anything is written
    info = prepare_campaign(spec, url)
    progress = Progress(spec, metric=info["metric"], direction=info["direction"], quiet=args.quiet)
    progress.start([])
    try:
        Worker(spec, config, on_event=progress).run()
    finally:
        progress.close()
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    from studies.results import ResultsDB
    from studies.status import campaign_status

    url = _storage(args, read_only=True)
    db = ResultsDB(url)
    if args.campaign is None:
        campaigns = db.campaigns()
        if not campaigns:
            print(f"no campaigns in {mask_url(url)}")
            return 0
        rows = []
        for c in campaigns:
            st = campaign_status(url, c["name"])
            rows.append(
                [
                    c["name"],
                    c["workload"],
                    str(len(st)),
                    f"{sum(r['search_done'] for r in st)}"
                    + (f"/{sum(r['budget'] for r in st)}" if all(r["budget"] for r in st) else ""),
                    f"{sum(r['confirm_done'] for r in st)}/{sum(r['confirm_seeds'] for r in st)}",
                    "done" if all(r["phase"] == "done" for r in st) else "running/incomplete",
                ]
            )
        print(table(["campaign", "workload", "optimizers", "search", "confirm", "state"], rows))
        return 0
    if db.campaign(args.campaign) is None:
        raise UsageError(f"no campaign {args.campaign!r} in {mask_url(url)}")
    st = campaign_status(url, args.campaign)
    rows = [
        [
            r["optimizer"],
            r["phase"],
            r["search_progress"],
            str(r["complete"]),
            str(r["pruned"]),
            str(r["failed"]),
            str(r["running"]),
            format_number(r["best"]),
            f"{r['confirm_done']}/{r['confirm_seeds']}",
        ]
        for r in st
    ]
    print(
        table(
            [
                "optimizer",
                "phase",
                "search",
                "complete",
                "pruned",
                "failed",
                "running",
                "best",
                "confirm",
            ],
            rows,
        )
    )
    return 0


def cmd_compare(args: argparse.Namespace) -> int:
    from studies.results import ResultsDB
    from studies.tuning_output import compare_output

    url = _storage(args, read_only=True)
    if len(args.campaigns) > 1:
        if args.budget_curve or args.target is not None:
            flag = "--budget-curve" if args.budget_curve else "--target"
            raise UsageError(f"{flag} reads one campaign; name one (got {len(args.campaigns)})")
        return compare_across(url, args)
    args.campaign = args.campaigns[0]
    if ResultsDB(url).campaign(args.campaign) is None:
        raise UsageError(f"no campaign {args.campaign!r} in {mask_url(url)}")
    print(
        compare_output(
            url, args.campaign, fmt=args.format, budget_curve=args.budget_curve, target=args.target
        )
    )
    return 0


def compare_across(url: str, args: argparse.Namespace) -> int:
    """`hvadam compare A B C`: the rank table of several campaigns (docs/cross-workload.md)."""
    from studies.formatting import format_across
    from studies.results import UnknownCampaign, load_across

    try:
        across = load_across(url, args.campaigns)
    except (UnknownCampaign, ValueError) as exc:
        raise UsageError(str(exc)) from None
    print(format_across(across, args.format))
    return 0


def _budget_text(spec: Any) -> str:
    from studies.budget import Budget

    return Budget.of(spec).describe()


def cmd_specs(args: argparse.Namespace) -> int:
    from studies.spec import available_specs, load_spec

    rows = []
    for name in available_specs():
        spec = load_spec(name, check=False)
        rows.append(
            [
                name,
                spec.workload,
                ", ".join(spec.labels),
                _budget_text(spec),
                str(spec.confirm_seeds),
                spec.description,
            ]
        )
    print(table(["spec", "workload", "optimizers", "trials", "seeds", "description"], rows))
    return 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from search_spaces import available_spaces, load_space

    rows = []
    for name in available_spaces():
        space = load_space(name)
        rows.append([name, space.optimizer, ", ".join(space.distributions())])
    print(table(["space", "optimizer", "tuned parameters"], rows))
    return 0


def _demo_spec(name: str, trials: int | None, seeds: int | None, workdir: str) -> Any:
    """A shipped demo spec, with smaller budgets if asked (then under a name that says so)."""
    import yaml

    from studies.spec import load_spec

    spec = load_spec(name)
    if trials is None and seeds is None:
        return spec
    data = spec.normalized()
    data["budget"]["trials"] = trials or spec.trials
    data["confirm"]["seeds"] = spec.confirm_seeds if seeds is None else seeds
    data["name"] = f"{spec.name}-t{data['budget']['trials']}s{data['confirm']['seeds']}"
    data["description"] = spec.description
    # Written to a file, so that worker processes load exactly the same spec.
    path = os.path.join(workdir, f"{data['name']}.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(data, fh)
    return load_spec(path)


def cmd_demo(args: argparse.Namespace) -> int:
    import tempfile

    from studies.run_settings import check_device, check_run_settings
    from studies.spec import MAX_CONFIRM_SEEDS
    from studies.tuning_output import compare_output

    if args.trials is not None and args.trials < 1:
        raise UsageError(f"--trials must be an integer >= 1, got {args.trials}")
    if args.seeds is not None and not 0 <= args.seeds <= MAX_CONFIRM_SEEDS:
        raise UsageError(
            f"--seeds must be an integer in [0, {MAX_CONFIRM_SEEDS}], got {args.seeds}"
        )
    if args.workers is not None:
        from studies.launch import check_workers

        check_workers(args.workers)
    check_run_settings(
        heartbeat_interval=args.heartbeat_interval,
        grace_period=args.grace_period,
        threads=args.threads,
        device=args.device,
    )
    if args.device:
        check_device(args.device, what="--device")
    url = _storage(args)
    # HVAdam and Anon compile their update with torch.compile; for the demo's tiny CPU models
    # the compilation costs more than it saves (about half the demo's time), so the demo runs
    # them eagerly unless the user chose otherwise. Set before hvadam is first imported.
    os.environ.setdefault("HVADAM_COMPILE", "0")
    if args.workers is None:
        args.workers = min(2, os.cpu_count() or 1)
    if args.threads is None:
        # The demo's models are tiny: one thread per worker is fastest (and far more robust on
        # a busy machine, where threads of one process wait on each other).
        args.threads = 1
    print(
        f"hvadam demo: tuning HVAdam, Anon and baselines on {' and '.join(DEMO_SPECS)} "
        f"(CPU, small budgets); storage {mask_url(url)}"
    )
    names = []
    with tempfile.TemporaryDirectory(prefix="hvadam-demo-") as workdir:
        for name in DEMO_SPECS:
            spec = _demo_spec(name, args.trials, args.seeds, workdir)
            names.append(spec.name)
            print(
                f"\n== {spec.name}: {spec.workload}, {', '.join(spec.labels)}; "
                f"{spec.trials} trials each, confirm on {spec.confirm_seeds} seeds"
            )
            _run(args, spec, url, workers=args.workers, quiet=args.quiet)
            print(compare_output(url, spec.name, fmt="table"))
    storage_arg = "" if url == DEFAULT_STORAGE else f" --storage '{mask_url(url)}'"
    print(
        f"\nNext: `hvadam compare {names[0]}{storage_arg}` prints a table again; "
        f"`hvadam dashboard{storage_arg}` opens the studies in optuna-dashboard."
    )
    return 0


# ---- parser ------------------------------------------------------------------------------------


def _add_storage(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--storage",
        metavar="URL",
        help=f"database URL (default: ${STORAGE_ENV}, else {DEFAULT_STORAGE})",
    )


def _add_run_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", help="override the spec's device (cpu, cuda, cuda:N)")
    p.add_argument("--threads", type=int, help="torch threads per worker on the CPU")
    p.add_argument(
        "--heartbeat-interval",
        type=int,
        default=10,
        metavar="S",
        help="seconds between a running trial's heartbeats (default 10)",
    )
    p.add_argument(
        "--grace-period",
        type=int,
        default=60,
        metavar="S",
        help="seconds without heartbeat before a trial is failed and retried (default 60)",
    )
    p.add_argument(
        "--artifacts",
        metavar="LOCATION",
        help="artifact store: a directory or s3://BUCKET (default: $HVADAM_ARTIFACTS, else "
        "<database>-artifacts/ beside a SQLite file; none for PostgreSQL)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress output")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hvadam",
        description="Tune and compare HVAdam, Anon and baseline optimizers on your workloads.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    p = sub.add_parser("tune", help="run (or continue) a campaign")
    p.add_argument("spec", help="a shipped spec name (see `hvadam specs`) or a YAML path")
    _add_storage(p)
    p.add_argument("--workers", type=int, default=1, help="worker processes (default 1)")
    p.add_argument("--data-dir", help="sets HVADAM_DATA_DIR, used by the data-backed specs")
    _add_run_options(p)
    from studies.ray_cli import add_backend_options

    add_backend_options(p)
    p.set_defaults(func=cmd_tune)

    p = sub.add_parser("worker", help="join a running campaign from another shell or node")
    p.add_argument("spec", help="the same spec the campaign was started with")
    _add_storage(p)
    p.add_argument("--worker-index", type=int, help=argparse.SUPPRESS)
    p.add_argument("--data-dir", help="sets HVADAM_DATA_DIR, used by the data-backed specs")
    _add_run_options(p)
    p.set_defaults(func=cmd_worker)

    from studies.ray_cli import add_cluster_parser

    add_cluster_parser(sub)

    p = sub.add_parser("status", help="progress per optimizer and phase")
    p.add_argument("campaign", nargs="?")
    _add_storage(p)
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("compare", help="one row per optimizer: best, confirm mean/std, counts")
    p.add_argument(
        "campaigns", nargs="+", metavar="campaign",
        help="one campaign; several: their rank table, win/tie/loss (docs/cross-workload.md)",
    )  # fmt: skip
    _add_storage(p)
    p.add_argument("--format", choices=("table", "csv", "json"), default="table")
    from studies.tuning_output import add_compare_options

    add_compare_options(p)
    p.set_defaults(func=cmd_compare)

    p = sub.add_parser("specs", help="the shipped campaign specs")
    p.set_defaults(func=cmd_specs)

    p = sub.add_parser("spaces", help="the shipped search spaces")
    p.set_defaults(func=cmd_spaces)

    p = sub.add_parser("demo", help="tune the shipped digits and valley2d campaigns on the CPU")
    _add_storage(p)
    p.add_argument(
        "--workers", type=int, help="worker processes (default: 2, or 1 on a one-core machine)"
    )
    p.add_argument("--trials", type=int, help="trials per optimizer (default: the specs')")
    p.add_argument("--seeds", type=int, help="confirm seeds (default: the specs')")
    _add_run_options(p)
    p.set_defaults(func=cmd_demo)

    for add_commands in _plugins("hvadam.commands"):
        add_commands(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except KeyboardInterrupt:
        print("hvadam: interrupted; run the same command again to continue", file=sys.stderr)
        return 130
    except Exception as exc:
        if os.environ.get("HVADAM_DEBUG"):
            raise
        message = " ".join(str(exc).split()) or type(exc).__name__
        if not isinstance(exc, ValueError):
            # An unexpected error: its first line and the root cause (a database error under
            # Optuna's own, ...), never a traceback.
            message = f"{type(exc).__name__}: {error_summary(exc)}"
        print(f"hvadam: error: {mask_text(message)}", file=sys.stderr)
        return 2


def run(argv: Sequence[str] | None = None) -> NoReturn:
    """The `hvadam` command: `main`, then a quick exit with its status.

    With torch, Optuna and SQLAlchemy loaded, the interpreter's own teardown frees about half a
    million objects one by one, some 2 s on a small machine, after all the work is done. So once
    `main` has returned, the process finishes what a normal exit does (joins its threads, runs
    the atexit handlers, closes the database connections, flushes) and leaves with `os._exit`.
    """
    code = main(argv)
    current = threading.current_thread()
    for thread in threading.enumerate():
        if thread is not current and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    close_pooled_connections()
    for stream in (sys.stdout, sys.stderr):
        with contextlib.suppress(OSError, ValueError):  # a closed pipe, a closed stream
            stream.flush()
    os._exit(code)


if __name__ == "__main__":
    run()
