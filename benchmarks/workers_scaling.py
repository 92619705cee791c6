"""Wall time of `hvadam tune --workers 2` vs `--workers 1` on the same campaign (digits).

Each run is a fresh `python -m studies.cli tune` process on its own fresh SQLite file, as a
user would start it (process start-up, imports and the confirm phase included), with one
torch thread per worker so that the comparison is about workers, not threads.
Target: workers 2 is >= 1.7x faster than workers 1.

    PYTHONPATH=. python benchmarks/workers_scaling.py [--spec digits] [--trials 8] [--seeds 3]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]


def tune(spec: Path, url: str, workers: int, threads: int, compile_: bool) -> float:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    if not compile_:
        # torch.compile of HVAdam/Anon is a fixed cost per process (tens of seconds on a CPU)
        # that would measure the compiler, not the workers.
        env["HVADAM_COMPILE"] = "0"
    cmd = [sys.executable, "-m", "studies.cli", "tune", str(spec), "--storage", url]
    cmd += ["--workers", str(workers), "--threads", str(threads), "--quiet"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"tune --workers {workers} failed:\n{proc.stderr}")
    return seconds


def span(url: str, campaign: str) -> tuple[float, float, float]:
    """Seconds from the first run's start to the last run's end (process start-up excluded),
    the summed run time, and the mean run time."""
    from studies.results import runs_frame

    runs = runs_frame(url, campaign)
    seconds = (runs["finished_at"].max() - runs["started_at"].min()).total_seconds()
    return seconds, float(runs["wall_time"].sum()), float(runs["wall_time"].mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="digits", help="a shipped spec name or a path")
    parser.add_argument("--trials", type=int, help="trials per optimizer (default: the spec's)")
    parser.add_argument("--seeds", type=int, help="confirm seeds (default: the spec's)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads per worker")
    parser.add_argument("--workers", type=int, default=2, help="the parallel run's workers")
    parser.add_argument(
        "--compile", action="store_true", help="let HVAdam/Anon use torch.compile (default off)"
    )
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from studies.spec import load_spec

    spec = load_spec(args.spec)
    data = spec.normalized()
    if args.trials:
        data["budget"]["trials"] = args.trials
    if args.seeds is not None:
        data["confirm"]["seeds"] = args.seeds
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "campaign.yaml"
        path.write_text(yaml.safe_dump(data))
        one = tune(path, f"sqlite:///{tmp}/w1.db", 1, args.threads, args.compile)
        many = tune(
            path, f"sqlite:///{tmp}/w{args.workers}.db", args.workers, args.threads, args.compile
        )
        span_one = span(f"sqlite:///{tmp}/w1.db", spec.name)
        span_many = span(f"sqlite:///{tmp}/w{args.workers}.db", spec.name)
    runs = len(spec.labels) * (data["budget"]["trials"] + data["confirm"]["seeds"])
    print(
        f"campaign {spec.name}: {len(spec.labels)} optimizers x ({data['budget']['trials']} "
        f"trials + {data['confirm']['seeds']} confirm) = {runs} runs; {os.cpu_count()} CPUs, "
        f"{args.threads} thread(s) per worker, torch.compile {'on' if args.compile else 'off'}"
    )
    for n, wall, (sp, busy, mean) in ((1, one, span_one), (args.workers, many, span_many)):
        print(
            f"--workers {n} : {wall:6.1f} s wall; runs from first start to last end {sp:6.1f} s; "
            f"workers busy {busy / (n * sp):4.0%} of it; mean run {mean:.2f} s"
        )
    print(
        f"speed-up: {one / many:.2f}x wall, {span_one[0] / span_many[0]:.2f}x runs span "
        f"(target >= 1.7x for 2 workers)"
    )
    print(
        "(a mean run that grows with the workers means they compete for the same cores: the "
        "speed-up is then bounded by the free cores, not by the runner)"
    )


if __name__ == "__main__":
    main()
