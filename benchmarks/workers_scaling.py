"""Wall time of `hvadam tune --workers 2` vs `--workers 1` on the same campaign (digits).

Each run is a fresh `python -m studies.cli tune` process on its own fresh SQLite file, as a
user would start it (process start-up, imports and the confirm phase included), with one
torch thread per worker so that the comparison is about workers, not threads.
Target: workers 2 is >= 1.7x faster than workers 1. After each pair it measures the machine's
own ceiling: plain training (no framework) in one process, then in N at once.

    PYTHONPATH=. python benchmarks/workers_scaling.py [--spec digits] [--trials N] [--seeds K]
        [--repeat 3]
"""

from __future__ import annotations

import argparse
import os
import statistics
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


# Plain training, no framework: the digits workload with Adam, `runs` times in one process.
PLAIN_TRAINING = """
import sys, time, torch
torch.set_num_threads(1)
from studies.workloads import get_workload
workload = get_workload("digits-mlp", epochs=6)
workload.prepare()
make = lambda params: torch.optim.Adam(params, lr=1e-3)
workload.run(make, seed=0)
start = time.perf_counter()
for seed in range(int(sys.argv[1])):
    workload.run(make, seed=seed)
print(time.perf_counter() - start)
"""


def machine_ceiling(workers: int, runs: int = 20) -> float:
    """How much more training `workers` independent processes do than one, in the same time:
    what this machine's cores allow any runner (2.0 for two fully independent cores)."""
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def start() -> subprocess.Popen[str]:
        cmd = [sys.executable, "-c", PLAIN_TRAINING, str(runs)]
        return subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)

    def seconds(procs: list[subprocess.Popen[str]]) -> float:
        return max(float(p.communicate()[0]) for p in procs)

    alone = seconds([start()])
    together = seconds([start() for _ in range(workers)])
    return workers * alone / together


def span(url: str, campaign: str) -> tuple[float, float, float, int, int]:
    """Seconds from the first run's start to the last run's end (process start-up excluded),
    the summed run time, the mean run time, the pruned runs and the epochs trained."""
    from studies.results import curves_frame, runs_frame

    runs = runs_frame(url, campaign)
    curves = curves_frame(url, campaign)
    seconds = (runs["finished_at"].max() - runs["started_at"].min()).total_seconds()
    epochs = len(curves[["run_id", "epoch"]].drop_duplicates())
    return (
        seconds,
        float(runs["wall_time"].sum()),
        float(runs["wall_time"].mean()),
        int((runs["status"] == "pruned").sum()),
        epochs,
    )


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
    parser.add_argument("--repeat", type=int, default=1, help="pairs of runs; prints the median")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from studies.spec import load_spec

    spec = load_spec(args.spec)
    data = spec.normalized()
    if args.trials:
        data["budget"]["trials"] = args.trials
    if args.seeds is not None:
        data["confirm"]["seeds"] = args.seeds
    runs = len(spec.labels) * (data["budget"]["trials"] + data["confirm"]["seeds"])
    print(
        f"campaign {spec.name}: {len(spec.labels)} optimizers x ({data['budget']['trials']} "
        f"trials + {data['confirm']['seeds']} confirm) = {runs} runs; {os.cpu_count()} CPUs, "
        f"{args.threads} thread(s) per worker, torch.compile {'on' if args.compile else 'off'}"
    )
    ratios: list[tuple[float, float, float]] = []
    for rep in range(1, args.repeat + 1):
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "campaign.yaml"
            path.write_text(yaml.safe_dump(data))
            urls = {n: f"sqlite:///{tmp}/w{n}.db" for n in (1, args.workers)}
            walls = {n: tune(path, urls[n], n, args.threads, args.compile) for n in urls}
            spans = {n: span(urls[n], spec.name) for n in urls}
        if args.repeat > 1:
            print(f"-- repeat {rep} of {args.repeat}")
        for n in urls:
            sp, busy, mean, pruned, epochs = spans[n]
            print(
                f"--workers {n} : {walls[n]:6.1f} s wall; runs from first start to last end "
                f"{sp:6.1f} s; workers busy {busy / (n * sp):4.0%} of it; mean run {mean:.2f} s; "
                f"{pruned} runs pruned, {epochs} epochs trained"
            )
        one, many = 1, args.workers
        # The workers' samplers and the pruner see trials in another order, so the two
        # campaigns prune different runs: the per-epoch figure compares equal training.
        ratio = (
            walls[one] / walls[many],
            spans[one][0] / spans[many][0],
            (walls[one] / spans[one][4]) / (walls[many] / spans[many][4]),
        )
        ratios.append(ratio)
        print(
            f"speed-up: {ratio[0]:.2f}x wall, {ratio[1]:.2f}x runs span, "
            f"{ratio[2]:.2f}x wall per epoch trained"
        )
        print(
            f"machine ceiling: {args.workers} independent processes of plain training do "
            f"{machine_ceiling(args.workers):.2f}x the work of one"
        )
    if args.repeat > 1:
        med = [statistics.median(r[i] for r in ratios) for i in range(3)]
        print(
            f"median of {args.repeat}: {med[0]:.2f}x wall, {med[1]:.2f}x runs span, "
            f"{med[2]:.2f}x wall per epoch trained"
        )
    print(f"(target: >= 1.7x wall for {args.workers} workers)")
    print(
        "(a mean run that grows with the workers means they compete for the same cores: the "
        "speed-up is then bounded by the free cores, not by the runner)"
    )


if __name__ == "__main__":
    main()
