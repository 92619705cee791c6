"""Wall time of one campaign on the Ray backend vs the Optuna backend, same budget, same machine.

    PYTHONPATH=. python benchmarks/ray_vs_optuna.py [--spec digits] [--trials 8] [--seeds 3]
        [--concurrent 2] [--scheduler fifo|asha]

Both runs use the same spec (the shipped `digits` campaign by default), a fresh SQLite file
each, and the same parallelism: `--concurrent` worker processes for the Optuna backend, at
most `--concurrent` trials at once (one CPU, one torch thread each) on a local Ray started by
the command. The Ray time includes starting and stopping Ray. With `--scheduler fifo` (the
default here) no trial is stopped early, so both backends do the same work; with `asha` Ray
does less. Prints both times and their ratio (target: Ray within 1.5x of Optuna).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import yaml

from studies.execution import Execution
from studies.results import compare_frame, runs_frame
from studies.runner import RunnerConfig, run_campaign
from studies.spec import load_spec


def small_spec(name: str, trials: int, seeds: int, folder: Path) -> Path:
    spec = load_spec(name)
    data = spec.normalized()
    data["budget"]["trials"] = trials
    data["confirm"]["seeds"] = seeds
    data["pruner"] = "none"  # the Optuna backend prunes nothing either: equal work
    path = folder / f"{spec.name}-bench.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--spec", default="digits")
    parser.add_argument("--trials", type=int, default=8)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--concurrent", type=int, default=2)
    parser.add_argument("--scheduler", choices=("fifo", "asha"), default="fifo")
    args = parser.parse_args()

    from studies.ray_backend import run_campaign_ray

    with tempfile.TemporaryDirectory(prefix="hvadam-bench-") as tmp:
        folder = Path(tmp)
        spec = load_spec(small_spec(args.spec, args.trials, args.seeds, folder))
        total = len(spec.labels) * (spec.trials + spec.confirm_seeds)
        print(
            f"campaign {spec.name}: {spec.workload}, {len(spec.labels)} optimizers x "
            f"{spec.trials} trials + {spec.confirm_seeds} confirm seeds = {total} runs; "
            f"{args.concurrent} at once; {os.cpu_count()} CPUs"
        )

        optuna_url = f"sqlite:///{folder / 'optuna.db'}"
        start = time.perf_counter()
        run_campaign(spec, RunnerConfig(storage=optuna_url, threads=1), workers=args.concurrent)
        optuna_time = time.perf_counter() - start

        ray_url = f"sqlite:///{folder / 'ray.db'}"
        execution = Execution(cpus=1, max_concurrent=args.concurrent, scheduler=args.scheduler)
        start = time.perf_counter()
        run_campaign_ray(
            spec,
            RunnerConfig(storage=ray_url),
            execution=execution,
            num_cpus=max(args.concurrent, os.cpu_count() or 1),
        )
        ray_time = time.perf_counter() - start

        for label, url, took in (("optuna", optuna_url, optuna_time), ("ray", ray_url, ray_time)):
            runs = runs_frame(url, spec.name)
            compute = runs["wall_time"].sum()
            stopped = int((runs["status"] == "stopped").sum())
            best = compare_frame(url, spec.name).iloc[0]
            print(
                f"{label:>6}: wall {took:7.1f} s, {len(runs)} runs ({stopped} stopped), "
                f"trial compute {compute:6.1f} s; winner {best['optimizer']} "
                f"(confirm mean {best['confirm_mean']:.4f})"
            )
        print(f"ray / optuna wall time: {ray_time / optuna_time:.2f}x (target <= 1.5x)")


if __name__ == "__main__":
    main()
