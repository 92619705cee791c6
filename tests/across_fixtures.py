"""Campaigns with chosen values for the cross-campaign tests, written through the project's
own writers (`studies.results.ResultsDB`; Optuna studies through `studies.api`)."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence


def write_campaign(
    url: str,
    name: str,
    *,
    metric: str = "val_loss",
    direction: str = "minimize",
    confirm: Mapping[str, Sequence[float]] | None = None,
    search: Mapping[str, Sequence[float]] | None = None,
    classes: Mapping[str, str] | None = None,
) -> None:
    """A campaign whose search trials and confirm seeds have exactly the given values.

    `classes`: label -> optimizer class, written as the user attrs of one Optuna study per
    label, as the runner prepares them (without it no study is written).
    """
    from studies.results import ResultsDB

    confirm, search = dict(confirm or {}), dict(search or {})
    labels = list(dict.fromkeys([*search, *confirm]))
    db = ResultsDB(url)
    db.create_tables()
    spec = {"name": name, "optimizers": {o: {} for o in labels}}
    db.register_campaign(
        name=name, spec_hash=f"h-{name}", spec=spec, workload="w", metric=metric,
        direction=direction,
    )  # fmt: skip
    for phase, table in (("search", search), ("confirm", confirm)):
        for opt, values in table.items():
            for i, value in enumerate(values):
                run = db.start_run(
                    campaign=name, study=f"{name}/{opt}", optimizer=opt, phase=phase,
                    trial_number=i if phase == "search" else 0, seed=100 + i, device="cpu",
                    hyperparameters={"lr": 0.01},
                )  # fmt: skip
                db.finish_run(run, status="complete", wall_time=0.5, value=float(value))
    if classes:
        import optuna

        from studies.api import optuna_storage

        optuna.logging.set_verbosity(optuna.logging.ERROR)
        with optuna_storage(url, create_tables=True) as rdb:
            for label, cls in classes.items():
                study = optuna.create_study(study_name=f"{name}/{label}", storage=rdb)
                for key, value in {"campaign": name, "optimizer": label,
                                   "optimizer_class": cls}.items():  # fmt: skip
                    study.set_user_attr(key, value)


# Three campaigns, one per cost rule, values exact in binary floating point.
# A minimises a loss: means hvadam 1, sgd 1.5, adam 2 -> ratios 1, 1.5, 2.
# B maximises an accuracy in [0, 1] (cost = 1 - accuracy): adam 0.75 (cost 0.25) is best,
#   hvadam 0.5 (cost 0.5) -> 2; sgd is not in B -> never within any tau.
# C maximises a reward outside [0, 1] without a confirm phase: best search values hvadam 200,
#   adam 100, sgd 50 -> cost 1/value -> ratios 1, 2, 4.
RATIOS = {
    "hvadam": {"A": 1.0, "B": 2.0, "C": 1.0},
    "adam": {"A": 2.0, "B": 1.0, "C": 2.0},
    "sgd": {"A": 1.5, "B": math.inf, "C": 4.0},
}
# rho(tau) = (campaigns with ratio <= tau) / 3, counted by hand from RATIOS
RHO = {
    1.0: {"hvadam": 2 / 3, "adam": 1 / 3, "sgd": 0.0},
    1.75: {"hvadam": 2 / 3, "adam": 1 / 3, "sgd": 1 / 3},
    2.5: {"hvadam": 1.0, "adam": 1.0, "sgd": 1 / 3},
    5.0: {"hvadam": 1.0, "adam": 1.0, "sgd": 2 / 3},
}


def write_three(url: str) -> None:
    """Campaigns A, B and C above."""
    write_campaign(
        url, "A", confirm={"hvadam": [0.75, 1.0, 1.25], "adam": [1.75, 2.0, 2.25],
                           "sgd": [1.25, 1.5, 1.75]},
        search={"hvadam": [1.1, 3.0], "adam": [2.1], "sgd": [1.6]},
    )  # fmt: skip
    write_campaign(
        url, "B", metric="accuracy", direction="maximize",
        confirm={"hvadam": [0.25, 0.5, 0.75], "adam": [0.625, 0.75, 0.875]},
    )  # fmt: skip
    write_campaign(
        url, "C", metric="reward", direction="maximize",
        search={"hvadam": [100.0, 200.0], "adam": [100.0, 50.0], "sgd": [50.0, 25.0]},
    )  # fmt: skip
