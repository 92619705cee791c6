"""The `hvadam dashboard | report | export` subcommands, for `studies.cli` to mount.

`studies` never imports `dashboards` at module import time; `studies/cli.py` wires these in
with a lazy import inside its parser setup (see `add_subcommands`). Each handler takes the
parsed `argparse.Namespace` and returns an exit status.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

__all__ = [
    "add_subcommands",
    "export_configs",
    "export_from_artifacts",
    "serve_dashboard",
    "write_report",
]


def _storage(args: argparse.Namespace) -> str:
    """The storage URL; these commands only read, so a missing SQLite file is refused."""
    from studies.api import check_storage_exists, resolve_storage_url

    url = resolve_storage_url(getattr(args, "storage", None))
    check_storage_exists(url)
    return url


def _artifacts(url: str, location: str | None) -> str | None:
    from studies.artifacts import resolve_artifacts

    return resolve_artifacts(url, location)


def serve_dashboard(
    storage: str | None = None,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    artifacts: str | None = None,
) -> None:
    """Serve optuna-dashboard on the campaign storage (and its artifact store) until Ctrl-C."""
    from dashboards.server import serve_dashboard as serve
    from studies.api import resolve_storage_url

    url = resolve_storage_url(storage)
    serve(url, host=host, port=port, artifacts=_artifacts(url, artifacts))


def write_report(
    storage: str | None, campaign: str, out_dir: str, *, artifacts: str | None = None
) -> Any:
    """Write `<out_dir>/report.html` and the PNG figures; returns the `Report`.

    The figures and the page are also attached to every study of the campaign in the artifact
    store (`artifacts`, else $HVADAM_ARTIFACTS, else beside a SQLite file; none for PostgreSQL).
    """
    from dashboards.artifacts import upload_report
    from dashboards.data import study_attrs
    from dashboards.report import write_report as write
    from studies.api import resolve_storage_url

    url = resolve_storage_url(storage)
    report = write(url, campaign, out_dir)
    location = _artifacts(url, artifacts)
    if location is not None:
        report.artifacts = upload_report(
            url, campaign, report, location, list(study_attrs(url, campaign))
        )
    return report


def export_configs(
    storage: str | None,
    campaign: str,
    *,
    optimizer: str | None = None,
    output: str | None = None,
    fmt: str | None = None,
) -> list[Any]:
    """Write (or print, without `output`) the best config of each optimizer."""
    from dashboards.export import export_configs as export
    from studies.api import resolve_storage_url

    return export(
        resolve_storage_url(storage), campaign, optimizer=optimizer, output=output, fmt=fmt
    )


def _run_dashboard(args: argparse.Namespace) -> int:
    serve_dashboard(_storage(args), host=args.host, port=args.port, artifacts=args.artifacts)
    return 0


def _run_report(args: argparse.Namespace) -> int:
    if len(args.campaigns) > 1:
        from dashboards.multi_report import write_multi_report

        report = write_multi_report(_storage(args), args.campaigns, args.output)
        print(f"wrote {report.html} ({len(report.pngs)} PNG figures) in {report.seconds:.1f}s")
        for section, why in report.empty.items():
            print(f"  {section}: {why}")
        return 0
    args.campaign = args.campaigns[0]
    report = write_report(_storage(args), args.campaign, args.output, artifacts=args.artifacts)
    print(f"wrote {report.html} ({len(report.pngs)} PNG figures) in {report.seconds:.1f}s")
    if report.artifacts:
        print(f"  attached {len(report.artifacts)} files to the campaign's studies (artifacts)")
    for section, why in report.empty.items():
        print(f"  {section}: {why}")
    return 0


def export_from_artifacts(
    storage: str | None,
    campaign: str,
    *,
    optimizer: str | None,
    output: str | None = None,
    artifacts: str | None = None,
) -> list[Any]:
    """`hvadam export --from-artifacts`: `best-<optimizer>.yaml` from the store, no database.

    Written to `output` (a file, or a directory for `<optimizer>.yaml`), else to stdout.
    """
    import tempfile
    from pathlib import Path

    from dashboards.artifacts import fetch_best_config
    from dashboards.export import ExportError
    from studies.api import resolve_storage_url
    from studies.artifacts import resolve_artifacts

    if optimizer is None:
        raise ExportError(
            "--from-artifacts needs --optimizer (the store is read without the database, "
            "which lists the optimizers)"
        )
    location = resolve_artifacts(resolve_storage_url(storage), artifacts)
    if location is None:
        raise ExportError(
            "--from-artifacts: no artifact store; give --artifacts DIR or s3://BUCKET "
            "(or set HVADAM_ARTIFACTS)"
        )
    if output is None:
        with tempfile.TemporaryDirectory(prefix="hvadam-export-") as tmp:
            path = fetch_best_config(campaign, optimizer, location, Path(tmp) / "best.yaml")
            sys.stdout.write(path.read_text(encoding="utf-8"))
        return []
    out = Path(output)
    target = out / f"{optimizer}.yaml" if out.is_dir() or not out.suffix else out
    return [fetch_best_config(campaign, optimizer, location, target)]


def _run_export(args: argparse.Namespace) -> int:
    if args.from_artifacts:
        written = export_from_artifacts(
            getattr(args, "storage", None), args.campaign, optimizer=args.optimizer,
            output=args.output, artifacts=args.artifacts,
        )  # fmt: skip
    else:
        written = export_configs(
            _storage(args), args.campaign, optimizer=args.optimizer, output=args.output,
            fmt=args.format,
        )  # fmt: skip
    for path in written:
        print(f"wrote {path}", file=sys.stderr)
    return 0


def _artifacts_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--artifacts",
        metavar="LOCATION",
        default=None,
        help="artifact store: a directory or s3://BUCKET (default: $HVADAM_ARTIFACTS, else "
        "<database>-artifacts/ beside a SQLite file)",
    )


def _storage_arg(p: argparse.ArgumentParser) -> None:
    # SUPPRESS: a `--storage` given to the main parser (before the subcommand) is kept.
    p.add_argument(
        "--storage",
        default=argparse.SUPPRESS,
        help="database URL (default: $HVADAM_STORAGE, else sqlite:///hvadam.db)",
    )


def add_subcommands(subparsers: Any) -> None:
    """Add `dashboard`, `report` and `export` to an argparse subparsers object.

    Each parser gets `func=handler` via `set_defaults`; the caller runs
    `sys.exit(args.func(args))`.
    """
    p = subparsers.add_parser(
        "dashboard",
        help="serve optuna-dashboard on the campaign storage",
        description="Serve optuna-dashboard on the storage (localhost unless --host says otherwise).",
    )
    _storage_arg(p)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=8080, help="port (default 8080)")
    _artifacts_arg(p)
    p.set_defaults(func=_run_dashboard)

    p = subparsers.add_parser(
        "report",
        help="write a campaign's HTML report and PNG figures",
        description="Write DIR/report.html (self-contained, opens offline) and PNG figures. "
        "Several campaigns: one page with their rank table, win/tie/loss counts and "
        "performance profiles (docs/cross-workload.md; not attached to the artifact store).",
    )
    _storage_arg(p)
    p.add_argument("campaigns", nargs="+", metavar="campaign", help="campaign name(s)")
    p.add_argument("-o", "--output", required=True, metavar="DIR", help="output directory")
    _artifacts_arg(p)
    p.set_defaults(func=_run_report)

    p = subparsers.add_parser(
        "export",
        help="export each optimizer's best config (hvadam-config/1)",
        description=(
            "Write the best config of each optimizer (confirm phase when it ran, else the best "
            "search trial) in the format hvadam.load_optimizer reads."
        ),
    )
    _storage_arg(p)
    p.add_argument("campaign", help="campaign name")
    p.add_argument("--optimizer", default=None, help="only this optimizer (study label)")
    p.add_argument(
        "-o", "--output", default=None, metavar="FILE",
        help="file (one optimizer), FILE-<optimizer>.ext (several), or a directory; "
        "default: print to stdout",
    )  # fmt: skip
    p.add_argument(
        "--format", choices=("yaml", "json"), default=None,
        help="default: from the file suffix, else yaml",
    )  # fmt: skip
    _artifacts_arg(p)
    p.add_argument(
        "--from-artifacts", action="store_true",
        help="fetch best-<optimizer>.yaml from the artifact store, without database access "
        "(needs --optimizer; YAML as uploaded when the confirm phase completed)",
    )  # fmt: skip
    p.set_defaults(func=_run_export)
