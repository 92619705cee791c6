"""A synthetic campaign written through the project's own writers, without training anything.

For the report benchmark (hundreds of trials in seconds) and for report tests that need
controlled numbers: the studies are created the way the runner prepares them (same names and
user attrs), parameters are sampled by Optuna from the shipped search spaces, and every run,
curve and confirm seed goes through `studies.results.ResultsDB`. Only the metric is made up:
a smooth function of the hyperparameters plus seeded noise.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["write_synthetic_campaign"]


def _score(hp: Mapping[str, Any], optimizer: str, rng: np.random.Generator) -> float:
    """A made-up loss: best near lr = 1e-2 and adaptivity = 0.5, HVAdam slightly ahead."""
    lr = float(hp.get("lr", 1e-3))
    a = float(hp.get("adaptivity", 0.5))
    base = 0.3 * (math.log10(lr) + 2.0) ** 2 + 0.4 * (a - 0.5) ** 2
    bonus = {"hvadam": -0.15, "anon": -0.1}.get(optimizer, 0.0)
    return 0.2 + base + bonus + 0.02 * rng.standard_normal()


def _trajectory(final: float, rng: np.random.Generator, points: int = 60) -> list[list[float]]:
    t = np.linspace(0.0, 1.0, points)
    x = 8.0 * (1 - t) ** 2 + 0.3 * np.sin(12 * t) * (1 - t) + final * 0.1
    y = 7.5 * (1 - t) ** 2 - 0.3 * np.sin(12 * t) * (1 - t) + 0.05 * rng.standard_normal()
    return np.stack([x, y], axis=1).round(5).tolist()


def write_synthetic_campaign(
    storage: str,
    *,
    name: str = "synthetic",
    optimizers: Sequence[str] = ("hvadam", "anon", "adam", "sgd"),
    trials: int = 20,
    seeds: int = 3,
    epochs: int = 10,
    workload: str = "digits-mlp",
    with_curves: bool = True,
    seed: int = 0,
    sweep_values: Sequence[float] = (),
    target: float | None = None,
) -> dict[str, Any]:
    """Write a campaign of `trials` search trials per optimizer plus `seeds` confirm runs each.

    `workload="valley2d"` also records 2-D trajectories in the runs' extras. `sweep_values`: a
    controlled adaptivity sweep of each HVAdam/Anon optimizer's best config (`seeds` runs per
    value, phase "sweep", as `studies.sweep` writes them). `target` adds the spec's
    `target: {value: V}`. Returns the normalised spec stored.
    """
    import optuna

    from search_spaces import load_space
    from studies.api import optuna_storage
    from studies.results import ResultsDB

    optuna.logging.set_verbosity(optuna.logging.ERROR)
    metric, direction = ("function_value", "minimize") if workload == "valley2d" else (
        "val_loss", "minimize")  # fmt: skip
    options: dict[str, Any] = (
        {"function": "valley"} if workload == "valley2d" else {"epochs": epochs}
    )
    spec = {
        "name": name,
        "workload": {"name": workload, "options": options},
        "optimizers": {o: {} for o in optimizers},
        "budget": {"trials": trials, "max_epochs": epochs},
        "sampler": "random",
        "pruner": "none",
        "confirm": {"seeds": seeds},
        "seed": seed,
        "device": "cpu",
        **({"target": {"value": target}} if target is not None else {}),
    }
    swept = [o for o in optimizers if o in ("hvadam", "anon")] if sweep_values else []
    if swept:
        spec["sweep"] = [
            {"optimizer": o, "param": "adaptivity", "values": list(sweep_values), "seeds": seeds}
            for o in swept
        ]
    db = ResultsDB(storage)
    db.create_tables()
    db.register_campaign(
        name=name, spec_hash=f"synthetic-{seed}", spec=spec, workload=workload, metric=metric,
        direction=direction,
    )  # fmt: skip
    study_direction = optuna.study.StudyDirection[direction.upper()]
    rng = np.random.default_rng(seed)
    with optuna_storage(storage, create_tables=True) as rdb:
        for opt in optimizers:
            space = load_space(opt)
            study = optuna.create_study(
                study_name=f"{name}/{opt}", storage=rdb, direction=study_direction,
                sampler=optuna.samplers.RandomSampler(seed=seed),
            )  # fmt: skip
            study.set_metric_names([metric])  # as the runner's studies do
            for key, value in {
                "campaign": name, "workload": workload, "optimizer": opt,
                "optimizer_class": space.optimizer, "spec_hash": f"synthetic-{seed}",
                "spec": spec, "metric": metric, "direction": direction,
                "budget_trials": trials,
            }.items():  # fmt: skip
                study.set_user_attr(key, value)
            best: tuple[float, int, dict[str, Any]] | None = None
            for _ in range(trials):
                trial = study.ask()
                hp = space.to_hyperparameters(space.suggest(trial))
                value = _score(hp, space.optimizer, rng)
                run_id = _write_run(db, name, opt, trial.number, "search", trial.number, hp, value,
                                    epochs, with_curves, workload, rng)  # fmt: skip
                trial.set_user_attr("run_id", run_id)
                study.tell(trial, value)
                if best is None or value < best[0]:
                    best = (value, trial.number, hp)
            assert best is not None
            for k in range(seeds):
                value = _score(best[2], space.optimizer, rng)
                _write_run(db, name, opt, best[1], "confirm", 10_000 + k, best[2], value, epochs,
                           with_curves, workload, rng)  # fmt: skip
            for v in sweep_values if opt in swept else ():
                hp = {**best[2], "adaptivity": v}
                sweep = {"index": swept.index(opt), "param": "adaptivity", "value": v, "set": {}}
                for k in range(seeds):
                    value = _score(hp, space.optimizer, rng)
                    _write_run(db, name, opt, best[1], "sweep", 10_000 + k, hp, value, epochs,
                               with_curves, workload, rng, {"sweep": sweep})  # fmt: skip
    return spec


def _write_run(
    db: Any,
    campaign: str,
    opt: str,
    trial_number: int,
    phase: str,
    seed: int,
    hp: dict[str, Any],
    value: float,
    epochs: int,
    with_curves: bool,
    workload: str,
    rng: np.random.Generator,
    more: Mapping[str, Any] | None = None,
) -> int:
    run_id = db.start_run(
        campaign=campaign, study=f"{campaign}/{opt}", optimizer=opt, trial_number=trial_number,
        phase=phase, seed=seed, device="cpu", hyperparameters=hp,
    )  # fmt: skip
    if with_curves:
        rows = []
        for e in range(1, epochs + 1):
            frac = e / epochs
            rows.append((e, "val_loss" if workload != "valley2d" else "function_value",
                         value + (1 - frac) ** 2 * 2.0 + 0.01 * rng.standard_normal()))  # fmt: skip
            rows.append((e, "train_loss", value * 0.9 + (1 - frac) ** 2 * 2.0))
            rows.append((e, "lr", float(hp.get("lr", 1e-3))))
            if opt == "hvadam":
                rows.append((e, "restarts", float(e // 3)))
                rows.append((e, "hv_step", float(10 ** (rng.standard_normal() * 0.5))))
                rows.append((e, "cosine_avg", float(0.5 + 0.1 * rng.standard_normal())))
        db.add_curves(run_id, rows)
    extras = {}
    if workload == "valley2d":
        extras = {
            "function": "valley", "formula": "4|x-y| + |x+y|", "start": [8.0, 7.5],
            "minimum": [[0.0, 0.0]], "minimum_value": 0.0,
            "window": [[-10.0, 10.0], [-10.0, 10.0]], "trajectory": _trajectory(value, rng),
        }  # fmt: skip
    extras.update(more or {})
    db.finish_run(
        run_id, status="complete", wall_time=0.01, value=value, metrics={"val_loss": value},
        extras=extras,
    )  # fmt: skip
    return run_id
