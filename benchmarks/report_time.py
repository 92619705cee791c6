"""How long `hvadam report` takes on a 500-trial campaign (the target: under 10 seconds).

    PYTHONPATH=$PWD python benchmarks/report_time.py [--trials 125] [--optimizers 4] [--keep DIR]

The campaign is written through the project's own writers (`dashboards.synthetic`: Optuna
studies as the runner prepares them, every run, curve and confirm seed through
`studies.results.ResultsDB`), then the report is timed twice:

- cold: a fresh process running `write_report`, as `hvadam report` does (imports included),
  once as is and once with the importances in a second process;
- warm: `write_report` again in this process, libraries already imported.

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
REPORT_SNIPPET = (
    "import sys, time; t = time.perf_counter(); "
    "from dashboards.report import write_report; "
    "write_report(sys.argv[1], sys.argv[2], sys.argv[3], "
    "background_importances=sys.argv[4] == '1'); "
    "print(time.perf_counter() - t)"
)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=125, help="search trials per optimizer")
    parser.add_argument("--optimizers", type=int, default=4, help="how many optimizers (<= 6)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--epochs", type=int, default=10)
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

        def cold(background: bool) -> tuple[float, float, float]:
            before = resource.getrusage(resource.RUSAGE_CHILDREN)
            t = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-c", REPORT_SNIPPET, url, "bench", str(out),
                 "1" if background else "0"],
                env=env, capture_output=True, text=True, check=True,
            )  # fmt: skip
            process = time.perf_counter() - t
            after = resource.getrusage(resource.RUSAGE_CHILDREN)
            cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
            return float(proc.stdout.strip().splitlines()[-1]), process, cpu

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
        return 0 if inside < TARGET_SECONDS else 1


if __name__ == "__main__":
    raise SystemExit(main())
