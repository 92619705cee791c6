"""How long `hvadam report` takes on a 500-trial campaign (the target: under 10 seconds), and
on five such campaigns at once (`hvadam report A B C D E`, the target: under 20 seconds).

    PYTHONPATH=$PWD python benchmarks/report_time.py [--trials 125] [--optimizers 4] \
        [--campaigns 5] [--keep DIR]

The campaign is written through the project's own writers (`dashboards.synthetic`: Optuna
studies as the runner prepares them, every run, curve and confirm seed through
`studies.results.ResultsDB`), then the report is timed twice:

- cold: a fresh process running `write_report`, as `hvadam report` does (imports included),
  once as is and once with the importances in a second process;
- warm: `write_report` again in this process, libraries already imported.

Then `--campaigns - 1` more campaigns like it (other seeds) go into the same database and the
cross-campaign page over all of them (`dashboards.multi_report.write_multi_report`) is timed
the same way, cold and warm. `--campaigns 1` skips that part.

Wall time depends on what else the machine runs; CPU time (user + system) is printed too, as
the time the report would take on an otherwise idle core.
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

TARGET_SECONDS = 10.0
MULTI_TARGET_SECONDS = 20.0
REPORT_SNIPPET = (
    "import sys, time; t = time.perf_counter(); "
    "from dashboards.report import write_report; "
    "write_report(sys.argv[1], sys.argv[2], sys.argv[3], "
    "background_importances=sys.argv[4] == '1'); "
    "print(time.perf_counter() - t)"
)
MULTI_SNIPPET = (
    "import sys, time; t = time.perf_counter(); "
    "from dashboards.multi_report import write_multi_report; "
    "write_multi_report(sys.argv[1], sys.argv[2].split(','), sys.argv[3]); "
    "print(time.perf_counter() - t)"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=125, help="search trials per optimizer")
    parser.add_argument("--optimizers", type=int, default=4, help="how many optimizers (<= 6)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--campaigns", type=int, default=5, help="campaigns in the multi report")
    parser.add_argument("--keep", help="write the report here instead of a temporary folder")
    args = parser.parse_args()

    from dashboards.report import write_report
    from dashboards.synthetic import write_synthetic_campaign

    names = ("hvadam", "anon", "adam", "sgd", "adamw", "adabelief")[: args.optimizers]
    with tempfile.TemporaryDirectory(prefix="hvadam-bench-") as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        t = time.perf_counter()
        write_synthetic_campaign(
            url, name="bench", optimizers=names, trials=args.trials, seeds=args.seeds,
            epochs=args.epochs,
        )  # fmt: skip
        fill = time.perf_counter() - t
        total = args.trials * len(names)
        print(
            f"campaign: {total} search trials + {args.seeds * len(names)} confirm runs, "
            f"{len(names)} optimizers, curves of {args.epochs} epochs (written in {fill:.1f}s)"
        )
        out = Path(args.keep) if args.keep else Path(tmp) / "report"
        env = {**os.environ, "PYTHONPATH": str(ROOT)}

        def timed(snippet: str, *argv: str) -> tuple[float, float, float]:
            """In a fresh process: the time it prints, its wall time and its CPU time."""
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", snippet, url, *argv], env=env, capture_output=True,
                text=True, check=True,
            )  # fmt: skip
            process = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            return float(proc.stdout.strip().splitlines()[-1]), process, cpu

        def cold(background: bool) -> tuple[float, float, float]:
            return timed(REPORT_SNIPPET, "bench", str(out), "1" if background else "0")

        inside, process, cpu = cold(False)
        background, background_process, background_cpu = cold(True)
        write_report(url, "bench", out)  # imports in this process
        t, c = time.perf_counter(), time.process_time()
        write_report(url, "bench", out)
        warm, warm_cpu = time.perf_counter() - t, time.process_time() - c
        load = os.getloadavg()[0]
        print(f"cold report (the default, one process):       {inside:.2f}s wall "
              f"(process: {process:.2f}s wall, {cpu:.2f}s CPU)")  # fmt: skip
        print(f"cold report, importances in a second process: {background:.2f}s wall "
              f"(process: {background_process:.2f}s wall, {background_cpu:.2f}s CPU in both); "
              f"ratio to the default {background / inside:.2f}")  # fmt: skip
        print(f"warm report (libraries imported):             {warm:.2f}s wall, "
              f"{warm_cpu:.2f}s CPU in this process")  # fmt: skip
        print(f"target {TARGET_SECONDS:.0f}s: cold/target = {inside / TARGET_SECONDS:.2f}, "
              f"warm/target = {warm / TARGET_SECONDS:.2f}; load average {load:.1f} "
              f"on {os.cpu_count()} CPUs")  # fmt: skip
        ok = inside < TARGET_SECONDS
        if args.campaigns > 1:
            ok = multi(args, url, names, out, timed) and ok
        return 0 if ok else 1


def multi(args: argparse.Namespace, url: str, names: tuple[str, ...], out: Path, timed) -> bool:
    """Add campaigns like `bench` and time the cross-campaign page over all of them."""
    from dashboards.multi_report import write_multi_report
    from dashboards.synthetic import write_synthetic_campaign

    campaigns = ["bench"] + [f"bench{i}" for i in range(1, args.campaigns)]
    t = time.perf_counter()
    for i, name in enumerate(campaigns[1:], start=1):
        write_synthetic_campaign(
            url, name=name, optimizers=names, trials=args.trials, seeds=args.seeds,
            epochs=args.epochs, seed=i,
        )  # fmt: skip
    fill = time.perf_counter() - t
    print(f"\n{len(campaigns)} such campaigns ({args.trials * len(names)} search trials each; "
          f"{len(campaigns) - 1} more written in {fill:.1f}s)")  # fmt: skip
    multi_out = out / "multi"
    inside, process, cpu = timed(MULTI_SNIPPET, ",".join(campaigns), str(multi_out))
    write_multi_report(url, campaigns, multi_out)  # imports in this process
    t, c = time.perf_counter(), time.process_time()
    write_multi_report(url, campaigns, multi_out)
    warm, warm_cpu = time.perf_counter() - t, time.process_time() - c
    load = os.getloadavg()[0]
    print(f"cold multi-campaign report (one process):     {inside:.2f}s wall "
          f"(process: {process:.2f}s wall, {cpu:.2f}s CPU)")  # fmt: skip
    print(f"warm multi-campaign report:                   {warm:.2f}s wall, "
          f"{warm_cpu:.2f}s CPU in this process")  # fmt: skip
    print(f"target {MULTI_TARGET_SECONDS:.0f}s: cold/target = {inside / MULTI_TARGET_SECONDS:.2f}, "
          f"warm/target = {warm / MULTI_TARGET_SECONDS:.2f}; load average {load:.1f} "
          f"on {os.cpu_count()} CPUs")  # fmt: skip
    return inside < MULTI_TARGET_SECONDS


if __name__ == "__main__":
    raise SystemExit(main())
