"""Framework overhead per trial: `hvadam tune` machinery vs a plain hand-written Optuna loop.

Both do the same work on the same kind of storage (a fresh SQLite file each): N trials of a
trivial workload (valley2d, few steps), the same search space and sampler, a report per epoch.
The framework adds the campaign lock, budget counting, run records, curves and user attrs.
Both sides time the trial loop alone; the campaign's one-off preparation is printed apart.
Target: framework / plain <= 1.3.

It also times the framework with and without the dashboards' progress hook (live notes at the
spec's default `notes_interval`): target with / without <= 1.05; and, apart, the fixed cost of
the note and best-config artifact written after a confirm run.

    PYTHONPATH=. python benchmarks/trial_overhead.py [--trials 40] [--steps 100]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import optuna
import torch
import yaml
from sqlalchemy import event
from sqlalchemy.engine import Engine

import hvadam
from dashboards.live import on_progress
from search_spaces import load_space
from studies.runner import RunnerConfig, Worker, prepare_campaign, search_seed
from studies.spec import load_spec
from studies.storage import optuna_storage
from studies.workloads import get_workload

_statements = [0]


@event.listens_for(Engine, "before_cursor_execute")
def _count(*_args: object) -> None:
    _statements[0] += 1


def counted(fn, *args, **kwargs) -> tuple[float, int]:
    """(seconds, SQL statements) of one call."""
    before = _statements[0]
    seconds = fn(*args, **kwargs)
    return seconds, _statements[0] - before


def plain_loop(url: str, *, trials: int, steps: int, optimizer: str) -> float:
    """What a user would write by hand with Optuna: same space, workload and reports.

    Returns the seconds of the trial loop (study creation excluded, as on the other side).
    """
    workload = get_workload("valley2d", steps=steps, report_every=steps // 5)
    space = load_space(optimizer)
    study = optuna.create_study(
        study_name="plain",
        storage=optuna_storage(url),
        direction=workload.direction,
        sampler=optuna.samplers.RandomSampler(seed=0),
    )
    study.enqueue_trial(space.default_params())

    def objective(trial: optuna.Trial) -> float:
        hp = space.to_hyperparameters(space.suggest(trial))

        def on_epoch(rep) -> None:
            trial.report(rep.value, rep.epoch)

        result = workload.run(
            lambda p: hvadam.create_optimizer(optimizer, p, **hp),
            seed=search_seed(0, trial.number),
            device="cpu",
            on_epoch=on_epoch,
        )
        return result.value

    start = time.perf_counter()
    study.optimize(objective, n_trials=trials)
    return time.perf_counter() - start


def framework(url: str, spec_path: Path, hooks: list | None = None) -> float:
    """The runner's trial loop (campaign preparation excluded; it is timed on its own).

    `hooks`: the progress hooks the worker calls (None: those installed, by entry point).
    """
    spec = load_spec(spec_path)
    start = time.perf_counter()
    prepare_campaign(spec, url)
    _setup.append(time.perf_counter() - start)
    worker = Worker(spec, RunnerConfig(storage=url, threads=1, worker_index=0))
    if hooks is not None:
        worker.live.hooks = list(hooks)
    start = time.perf_counter()
    worker.run()
    return time.perf_counter() - start


_setup: list[float] = []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=40)
    parser.add_argument("--steps", type=int, default=100)
    parser.add_argument("--optimizer", default="adam")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    optuna.logging.set_verbosity(optuna.logging.ERROR)

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # Warm up imports and the workload once, outside the timings.
        plain_loop(f"sqlite:///{tmp}/warm.db", trials=2, steps=args.steps, optimizer=args.optimizer)
        plain_times, framework_times, plain_sql, framework_sql = [], [], 0, 0
        quiet_times: list[float] = []
        noted_times: list[float] = []
        quiet1: list[float] = []
        noted1: list[float] = []
        for r in range(args.repeats):
            spec = {
                "name": f"overhead{r}",
                "workload": {
                    "name": "valley2d",
                    "options": {"steps": args.steps, "report_every": args.steps // 5},
                },
                "optimizers": [args.optimizer],
                "budget": {"trials": args.trials},
                "sampler": "random",
                "pruner": "none",
                "confirm": {"seeds": 0},
                "device": "cpu",
            }
            spec_path = tmp / f"overhead{r}.yaml"
            spec_path.write_text(yaml.safe_dump(spec))
            seconds, plain_sql = counted(
                plain_loop,
                f"sqlite:///{tmp}/plain{r}.db",
                trials=args.trials,
                steps=args.steps,
                optimizer=args.optimizer,
            )
            plain_times.append(seconds)
            seconds, framework_sql = counted(
                framework, f"sqlite:///{tmp}/framework{r}.db", spec_path
            )
            framework_times.append(seconds)
            # Live notes and artifacts: the same campaign, the progress hook off and on; then
            # with one confirm seed (a note and best-<optimizer>.yaml after the confirm run).
            for seeds, off, on in ((0, quiet_times, noted_times), (1, quiet1, noted1)):
                spec["confirm"] = {"seeds": seeds}
                spec["name"] = f"notes{r}-{seeds}"
                spec_path = tmp / f"notes{r}-{seeds}.yaml"
                spec_path.write_text(yaml.safe_dump(spec))
                # Alternate which runs first: a later run in this process is a little slower.
                for hooked in (False, True) if r % 2 == 0 else (True, False):
                    url = f"sqlite:///{tmp}/{'on' if hooked else 'off'}{r}-{seeds}.db"
                    seconds = framework(url, spec_path, hooks=[on_progress] if hooked else [])
                    (on if hooked else off).append(seconds)

    plain, fw = min(plain_times), min(framework_times)
    n = args.trials
    print(f"trials: {n} x valley2d({args.steps} steps, 5 reports), {args.optimizer}, SQLite")
    print(
        f"plain Optuna loop : {plain:7.2f} s  ({1000 * plain / n:6.1f} ms/trial, "
        f"{plain_sql / n:5.1f} SQL statements/trial)"
    )
    print(
        f"hvadam framework  : {fw:7.2f} s  ({1000 * fw / n:6.1f} ms/trial, "
        f"{framework_sql / n:5.1f} SQL statements/trial)"
    )
    print(
        f"ratio framework/plain: {fw / plain:.2f}x (target <= 1.3x); "
        f"overhead {1000 * (fw - plain) / n:.1f} ms/trial (best of {args.repeats})"
    )
    print(f"once per campaign: preparation (checks, tables, studies) {min(_setup):.2f} s")
    quiet, noted = min(quiet_times), min(noted_times)
    print(
        f"live notes + artifacts (notes_interval 60): without {quiet:.2f} s, with {noted:.2f} s; "
        f"ratio {noted / quiet:.3f}x (target <= 1.05x; best of {args.repeats})"
    )
    quiet, noted = min(quiet1), min(noted1)
    print(
        f"  the same with 1 confirm seed: without {quiet:.2f} s, with {noted:.2f} s "
        f"(+{noted - quiet:.2f} s: the note and best-<optimizer>.yaml after the confirm run)"
    )


if __name__ == "__main__":
    main()
