"""README screenshots of the report and the dashboard, from a real small campaign, in Chromium.

    python -m dashboards.screenshots [--out docs/img] [--storage URL] [--trials 6] [--seeds 3]

Runs the shipped valley2d campaign (the HVAdam paper's 2-D valley) with a small budget through
the real runner into a temporary SQLite file (or `--storage`), writes its report, annotates the
studies, serves optuna-dashboard, and photographs both with headless Chromium.
"""

from __future__ import annotations

import argparse
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

__all__ = ["SHOTS", "main", "run_small_campaign", "take_screenshots"]

SHOTS = (
    "report-comparison.png",
    "report-trajectories.png",
    "report-curves.png",
    "dashboard-studies.png",
    "dashboard-note.png",
)


def run_small_campaign(
    storage: str,
    *,
    name: str = "valley2d-demo",
    optimizers: Sequence[str] = ("hvadam", "anon", "adam", "sgd"),
    trials: int = 6,
    seeds: int = 3,
    steps: int = 300,
    report_every: int = 25,
    quiet: bool = True,
) -> str:
    """Run a real valley2d campaign through `studies.runner`; returns the campaign name."""
    from studies.runner import RunnerConfig, run_campaign
    from studies.spec import parse_spec

    spec = parse_spec(
        {
            "name": name,
            "workload": {
                "name": "valley2d",
                "options": {"function": "valley", "steps": steps, "report_every": report_every},
            },
            "optimizers": list(optimizers),
            "budget": {"trials": trials},
            "sampler": "random",
            "pruner": "none",
            "confirm": {"seeds": seeds},
            "seed": 0,
            "device": "cpu",
        },
        source=f"<{name}>",
    )
    events: list[Any] = []
    run_campaign(spec, RunnerConfig(storage=storage, threads=1), on_event=events.append)
    if not quiet:
        print(f"campaign {name}: {len(events)} runs")
    return name


def take_screenshots(storage: str, campaign: str, out_dir: str | Path) -> list[Path]:
    """Write the campaign's report, annotate its studies, and photograph both into `out_dir`."""
    from dashboards.browser import chromium
    from dashboards.notes import annotate_studies
    from dashboards.report import write_report
    from dashboards.server import start_dashboard

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    with tempfile.TemporaryDirectory(prefix="hvadam-report-") as tmp:
        report = write_report(storage, campaign, tmp)
        annotate_studies(storage, campaign)
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(report.html.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg", timeout=60_000)
            shots.append(out / SHOTS[0])
            page.screenshot(path=str(shots[-1]))
            for sid, name in (("trajectories", SHOTS[1]), ("curves", SHOTS[2])):
                section = page.locator(f"#{sid}")
                section.scroll_into_view_if_needed()
                page.wait_for_timeout(300)  # let plotly finish its resize after scrolling
                shots.append(out / name)
                section.screenshot(path=str(shots[-1]))
            with start_dashboard(storage) as server:
                page.goto(server.url)
                page.get_by_text(f"{campaign}/hvadam").first.wait_for(timeout=60_000)
                shots.append(out / SHOTS[3])
                page.screenshot(path=str(shots[-1]))
                page.get_by_text(f"{campaign}/hvadam").first.click()
                page.wait_for_url("**/dashboard/studies/*")
                page.goto(page.url + "/note")
                page.get_by_text(f"Campaign {campaign}: hvadam").first.wait_for(timeout=60_000)
                shots.append(out / SHOTS[4])
                page.screenshot(path=str(shots[-1]))
    return shots


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.screenshots", description=__doc__)
    parser.add_argument("--out", default="docs/img", help="output folder (default docs/img)")
    parser.add_argument("--storage", help="an existing storage URL (default: a temporary file)")
    parser.add_argument("--campaign", help="an existing campaign in --storage (skips the run)")
    parser.add_argument("--trials", type=int, default=6, help="search trials per optimizer")
    parser.add_argument("--seeds", type=int, default=3, help="confirm seeds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hvadam-shots-") as tmp:
        storage = args.storage or f"sqlite:///{Path(tmp) / 'hvadam.db'}"
        campaign = args.campaign or run_small_campaign(
            storage, trials=args.trials, seeds=args.seeds, quiet=False
        )
        for path in take_screenshots(storage, campaign, args.out):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
