"""README screenshots of the report and the dashboard, from a real small campaign, in Chromium.

    HVADAM_COMPILE=0 python -m dashboards.screenshots [--out docs/img] [--trials 6] [--seeds 3]

Runs two small campaigns through the real runner into a temporary SQLite file (or `--storage`):
digits-mlp (scikit-learn's bundled digits; the comparison, its statistics and learning curves)
and valley2d (the HVAdam paper's 2-D valley; the trajectory picture). Then it writes both
reports, annotates the studies, attaches the best configs and report figures to them as
artifacts, serves optuna-dashboard with its artifact store, and photographs them with headless
Chromium (a study page shows the named metric and the "Study Artifacts" card). Set HVADAM_COMPILE=0 to keep the optimizers eager (no compiler warm-up).
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
    "dashboard-study.png",
)


WORKLOADS: dict[str, dict[str, Any]] = {
    "valley2d": {"function": "valley", "steps": 300, "report_every": 25},
    "digits-mlp": {"epochs": 8, "batch_size": 64},
}


def run_small_campaign(
    storage: str,
    *,
    workload: str = "valley2d",
    name: str | None = None,
    optimizers: Sequence[str] = ("hvadam", "anon", "adam", "sgd"),
    trials: int = 6,
    seeds: int = 3,
    quiet: bool = True,
) -> str:
    """Run a real small campaign (`studies.api.run_campaign`); returns the campaign name."""
    from studies.api import run_campaign

    if workload not in WORKLOADS:
        raise ValueError(f"workload must be one of {', '.join(WORKLOADS)}, got {workload!r}")
    name = name or f"{workload.split('-')[0]}-demo"
    runs = run_campaign(
        {
            "name": name,
            "workload": {"name": workload, "options": dict(WORKLOADS[workload])},
            "optimizers": list(optimizers),
            "budget": {"trials": trials},
            "sampler": "random",
            "pruner": "none",
            "confirm": {"seeds": seeds},
            "seed": 0,
            "device": "cpu",
        },
        storage,
        threads=1,
        source=f"<{name}>",
    )
    if not quiet:
        print(f"campaign {name}: {runs} runs")
    return name


def take_screenshots(
    storage: str, campaign: str, out_dir: str | Path, *, trajectories_from: str | None = None
) -> list[Path]:
    """Write the campaign's report, annotate its studies, and photograph both into `out_dir`.

    `trajectories_from`: another campaign (a valley2d one) whose report gives the trajectory
    picture; by default `campaign`'s own.
    """
    from dashboards.artifacts import upload_best_config, upload_report
    from dashboards.browser import chromium
    from dashboards.data import study_attrs
    from dashboards.notes import annotate_studies
    from dashboards.report import write_report
    from dashboards.server import start_dashboard
    from studies.artifacts import resolve_artifacts

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    shots: list[Path] = []
    other = trajectories_from or campaign
    with tempfile.TemporaryDirectory(prefix="hvadam-report-") as tmp:
        report = write_report(storage, campaign, Path(tmp) / "main")
        valley = report if other == campaign else write_report(storage, other, Path(tmp) / "2d")
        for name in {campaign, other}:
            annotate_studies(storage, name)
        store = resolve_artifacts(storage, required=True)
        assert store is not None  # required=True raises instead of returning None
        labels = list(study_attrs(storage, campaign))
        for label in labels:
            upload_best_config(storage, campaign, label, store)
        upload_report(storage, campaign, report, store, labels)
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 900})

            def section_shot(html: Path, sid: str, name: str) -> None:
                page.goto(html.as_uri())
                page.wait_for_selector(".plotly-graph-div .main-svg", timeout=60_000)
                section = page.locator(f"#{sid}")
                section.scroll_into_view_if_needed()
                page.wait_for_timeout(300)  # let plotly finish its resize after scrolling
                shots.append(out / name)
                section.screenshot(path=str(shots[-1]))

            page.goto(report.html.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg", timeout=60_000)
            shots.append(out / SHOTS[0])
            page.screenshot(path=str(shots[-1]))
            section_shot(valley.html, "trajectories", SHOTS[1])
            section_shot(report.html, "curves", SHOTS[2])
            with start_dashboard(storage, artifacts=store) as server:
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
                # The study page: the history plot names the metric; its artifacts below.
                page.goto(page.url.removesuffix("/note"))
                page.get_by_text("best-hvadam.yaml").first.wait_for(timeout=60_000)
                page.wait_for_timeout(1500)  # the plots draw after their data arrives
                shots.append(out / SHOTS[5])
                _study_shot(page, shots[-1])
    return shots


def _study_shot(page: Any, path: Path) -> None:
    """The study page's top (the history plot, which names the metric) over its artifacts card.

    The cards between them are cut out, so that the picture stays small.
    """
    import io

    from PIL import Image

    full = Image.open(io.BytesIO(page.screenshot(full_page=True)))
    scroll = page.evaluate("window.scrollY")

    def top(text: str) -> int:
        box = page.get_by_text(text, exact=True).first.bounding_box()
        return int(box["y"] + scroll) - 40 if box else full.height

    cut, artifacts = top("Hyperparameter Importance"), top("Study Artifacts")
    parts = [full.crop((0, 0, full.width, cut)), full.crop((0, artifacts, full.width, full.height))]
    out = Image.new("RGB", (full.width, sum(p.height for p in parts)), "white")
    y = 0
    for part in parts:
        out.paste(part, (0, y))
        y += part.height
    out.save(path, optimize=True)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dashboards.screenshots", description=__doc__)
    parser.add_argument("--out", default="docs/img", help="output folder (default docs/img)")
    parser.add_argument("--storage", help="an existing storage URL (default: a temporary file)")
    parser.add_argument("--trials", type=int, default=6, help="search trials per optimizer")
    parser.add_argument("--seeds", type=int, default=3, help="confirm seeds")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="hvadam-shots-") as tmp:
        storage = args.storage or f"sqlite:///{Path(tmp) / 'hvadam.db'}"
        digits, valley = (
            run_small_campaign(storage, workload=w, trials=args.trials, seeds=args.seeds,
                               quiet=False)
            for w in ("digits-mlp", "valley2d")
        )  # fmt: skip
        for path in take_screenshots(storage, digits, args.out, trajectories_from=valley):
            print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
