"""Campaigns with chosen values for the cross-campaign tests, written through the project's
own writers (`studies.results.ResultsDB`; Optuna studies through `studies.api`)."""

from __future__ import annotations

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
