"""Growing a campaign: a spec that adds an optimizer or raises a budget continues the campaign.

A campaign is run, its spec grown (an optimizer added, trials and confirm seeds raised) and run
again: the earlier run rows are untouched, only the new work ran, and compare shows every
optimizer. The workload's value is minus the run's seed, so each later search trial is better:
growing the trials changes the best trial, whose confirm runs then run anew. Every refused
change names what changed; a worker with the older spec is told that the campaign was grown.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest
from helpers import write_spec

from studies.growth import GrowthRefused, growth
from studies.results import compare_frame, runs_frame
from studies.runner import (
    CampaignError,
    RunnerConfig,
    Worker,
    campaign_complete,
    confirm_seed,
    prepare_campaign,
    run_campaign,
)
from studies.spec import load_spec, parse_spec
from studies.status import campaign_status

TASKS = """
import torch


def train(make_optimizer, *, seed, device, options, report):
    make_optimizer([torch.nn.Parameter(torch.zeros(1))])
    for epoch in range(options["epochs"]):
        report(epoch + 1, -float(seed))
    return -float(seed)
"""

SPEC = {
    "name": "grow",
    "workload": {
        "name": "grow_tasks:train",
        "metric": {"name": "val_loss", "direction": "minimize"},
        "options": {"epochs": 2},
    },
    "optimizers": ["adam"],
    "budget": {"trials": 3},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 1},
    "seed": 0,
    "device": "cpu",
}


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    (tmp_path / "grow_tasks.py").write_text(textwrap.dedent(TASKS))
    return tmp_path


def spec_of(folder: Path, **changes):
    return load_spec(write_spec(folder, SPEC, **changes))


def rows(url: str) -> list[tuple]:
    runs = runs_frame(url, "grow")
    return [
        (r.run_id, r.optimizer, r.phase, r.trial_number, r.seed, r.status, r.value)
        for r in runs.itertuples()
    ]


def test_growing_runs_only_the_new_work(folder):
    url = f"sqlite:///{folder / 'grow.db'}"
    first = spec_of(folder)
    run_campaign(first, RunnerConfig(storage=url))
    stale = Worker(first, RunnerConfig(storage=url))  # a worker on the spec before growing
    before = rows(url)
    assert [(r[1], r[2], r[3]) for r in before] == [
        ("adam", "search", 0),
        ("adam", "search", 1),
        ("adam", "search", 2),
        ("adam", "confirm", 2),  # the best: trial 2 (value -2)
    ]

    grown = spec_of(
        folder,
        optimizers=["adam", "sgd"],
        budget={"trials": 5},
        confirm={"seeds": 2},
        description="grown",
    )
    assert grown.spec_hash != first.spec_hash
    run_campaign(grown, RunnerConfig(storage=url))
    after = rows(url)
    assert after[: len(before)] == before  # the earlier rows are untouched
    new = [(r[1], r[2], r[3], r[4]) for r in after[len(before) :]]
    search = sorted((o, n) for o, p, n, _ in new if p == "search")
    assert search == [("adam", 3), ("adam", 4)] + [("sgd", n) for n in range(5)]
    # adam's best moved to trial 4: it is confirmed on both seeds; sgd's best is its trial 4.
    confirm = sorted((o, n, s) for o, p, n, s in new if p == "confirm")
    seeds = [confirm_seed(0, 0), confirm_seed(0, 1)]
    assert confirm == [("adam", 4, s) for s in seeds] + [("sgd", 4, s) for s in seeds]
    assert campaign_complete(grown, url)

    compare = compare_frame(url, "grow").set_index("optimizer")
    assert sorted(compare.index) == ["adam", "sgd"]
    for label in ("adam", "sgd"):
        assert compare.loc[label, "best_trial"] == 4
        assert compare.loc[label, "confirm_seeds"] == 2
        assert compare.loc[label, "confirm_mean"] == pytest.approx(-sum(seeds) / 2)
    status = {r["optimizer"]: r for r in campaign_status(url, "grow")}
    assert status["adam"]["search_done"] == 5 and status["adam"]["phase"] == "done"

    # The stored spec and every study's attrs follow the grown spec.
    import optuna

    for label in ("adam", "sgd"):
        study = optuna.load_study(study_name=f"grow/{label}", storage=url)
        assert study.user_attrs["spec_hash"] == grown.spec_hash
        assert study.user_attrs["budget_trials"] == 5
    # A worker still on the older spec is told to restart with the new one.
    with pytest.raises(CampaignError, match=r"was grown while this worker ran.*restart it"):
        stale.run()
    with pytest.raises(
        CampaignError, match=r"was grown since this spec.*restart with the new spec"
    ):
        Worker(first, RunnerConfig(storage=url))
    with pytest.raises(
        CampaignError,
        match=r"trials lowered from 5 to 3.*was grown since this spec; run it with the grown spec",
    ):
        prepare_campaign(first, url)

    # Raising only the confirm seeds runs only the new seed (the best is unchanged).
    more = spec_of(folder, optimizers=["adam", "sgd"], budget={"trials": 5}, confirm={"seeds": 3})
    run_campaign(more, RunnerConfig(storage=url))
    last = rows(url)
    assert last[: len(after)] == after
    assert sorted((r[1], r[2], r[3], r[4]) for r in last[len(after) :]) == [
        ("adam", "confirm", 4, confirm_seed(0, 2)),
        ("sgd", "confirm", 4, confirm_seed(0, 2)),
    ]


def test_a_new_best_is_swept_again(folder):
    # The sweep re-runs the best config: when grown trials find a new best, its sweep runs.
    url = f"sqlite:///{folder / 'grow.db'}"
    sweep = {"optimizer": "adam", "param": "lr", "values": [0.01, 0.1], "seeds": 1}
    run_campaign(spec_of(folder, sweep=sweep), RunnerConfig(storage=url))
    before = rows(url)
    assert sorted((r[2], r[3]) for r in before if r[2] == "sweep") == [("sweep", 2)] * 2
    grown = spec_of(folder, sweep=sweep, budget={"trials": 5})
    run_campaign(grown, RunnerConfig(storage=url))
    after = rows(url)
    assert after[: len(before)] == before
    new = sorted((r[2], r[3]) for r in after[len(before) :] if r[2] != "search")
    assert new == [("confirm", 4), ("sweep", 4), ("sweep", 4)]
    assert campaign_complete(grown, url)
    # What the report, the export and compare read: the new best's runs only.
    from dashboards.data import load_campaign
    from dashboards.export import best_config
    from studies.results import load_across

    data = load_campaign(url, "grow")
    rerun = data.runs[data.runs["phase"] != "search"]
    assert sorted(rerun["trial_number"].tolist()) == [4, 4, 4]
    assert best_config(data, "adam")["provenance"]["trial"] == 4
    assert compare_frame(url, "grow").loc[0, "confirm_seeds"] == 1
    assert load_across(url, ["grow"]).table["n"].tolist() == [1]  # not the old best's seed too


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        (
            {"workload": {**SPEC["workload"], "options": {"epochs": 4}}},
            "workload.options.epochs changed from 2 to 4; old trials would not be comparable; "
            "give the campaign a new name",
        ),
        (
            {"workload": {**SPEC["workload"], "metric": {"name": "loss", "direction": "minimize"}}},
            "workload.metric.name changed from 'val_loss' to 'loss'; old trials would not",
        ),
        ({"seed": 1}, "seed changed from 0 to 1; old trials would not be comparable"),
        ({"sampler": "tpe"}, "sampler changed from 'random' to 'tpe'; old trials"),
        ({"pruner": "median"}, "pruner changed from 'none' to 'median'; old trials"),
        ({"device": "auto"}, "device changed from 'cpu' to 'auto'; old trials"),
        (
            {"budget": {"trials": 3, "max_epochs": 1}},
            "budget.max_epochs changed from None to 1; old trials would not be comparable",
        ),
        (
            {"optimizers": {"adam": {"lr": {"low": 1e-4, "high": 1e-2, "log": True}}}},
            "optimizers.adam.lr added",
        ),
        ({"optimizers": ["sgd"]}, "optimizers.adam removed; a campaign only grows"),
        ({"budget": {"trials": 2}}, "budget.trials lowered from 3 to 2; a campaign only grows"),
        ({"confirm": {"seeds": 0}}, "confirm.seeds lowered from 1 to 0; a campaign only grows"),
        (
            {"budget": {"trials": 3, "seconds": 60}},
            "budget.seconds added (60.0), a limit the campaign ran without; a campaign only grows",
        ),
    ],
)
def test_a_change_that_is_not_growth_is_refused_naming_it(folder, changes, message):
    url = f"sqlite:///{folder / 'refused.db'}"
    prepare_campaign(spec_of(folder), url)
    changed = spec_of(folder, **changes)
    with pytest.raises(CampaignError, match=f"exists with another spec: {_escape(message)}"):
        prepare_campaign(changed, url)


def _escape(text: str) -> str:
    import re

    return re.escape(text)


def test_what_grows():
    base = parse_spec({**SPEC, "workload": "digits-mlp", "budget": {"trials": 4, "seconds": 30}})
    grown = parse_spec(
        {
            **SPEC,
            "workload": "digits-mlp",
            "optimizers": ["adam", "sgd"],
            "budget": {"seconds": 60},
            "confirm": {"seeds": 2},
            "description": "more",
            "max_concurrent": 4,
        }
    )
    assert growth(base.normalized(), grown.normalized()) == [
        "budget.seconds raised from 30.0 to 60.0",
        "budget.trials: no limit now (was 4)",
        "confirm.seeds raised from 1 to 2",
        "optimizers.sgd added",
    ]
    assert growth(base.normalized(), base.normalized()) == []
    # A target or a sweep may change; a new key elsewhere may not.
    assert growth({**base.normalized(), "target": {"value": 0.9}}, base.normalized()) == [
        "target changed"
    ]
    with pytest.raises(GrowthRefused, match="schedule added"):
        growth(base.normalized(), {**base.normalized(), "schedule": {"name": "cosine"}})


@pytest.mark.ray
@pytest.mark.slow
def test_a_campaign_grows_on_the_ray_backend(folder):
    pytest.importorskip("ray")
    from studies.ray_backend import ray_session, run_campaign_ray

    url = f"sqlite:///{folder / 'grow-ray.db'}"
    first = spec_of(folder, ray={"scheduler": "fifo"})
    run_campaign(first, RunnerConfig(storage=url))
    before = rows(url)
    grown = spec_of(
        folder,
        optimizers=["adam", "sgd"],
        budget={"trials": 4},
        confirm={"seeds": 2},
        ray={"scheduler": "fifo"},
        max_concurrent=2,
    )
    with ray_session(num_cpus=2):
        run_campaign_ray(grown, RunnerConfig(storage=url))
        with pytest.raises(CampaignError, match="was grown since this spec"):
            run_campaign_ray(first, RunnerConfig(storage=url))
    after = rows(url)
    assert after[: len(before)] == before
    new = [(r[1], r[2], r[3], r[4]) for r in after[len(before) :]]
    assert sorted((o, n) for o, p, n, _ in new if p == "search") == [("adam", 3)] + [
        ("sgd", n) for n in range(4)
    ]
    seeds = [confirm_seed(0, 0), confirm_seed(0, 1)]
    confirm = sorted((o, n, s) for o, p, n, s in new if p == "confirm")
    assert confirm == [("adam", 3, s) for s in seeds] + [("sgd", 3, s) for s in seeds]
    assert campaign_complete(grown, url)
    compare = compare_frame(url, "grow").set_index("optimizer")
    assert list(compare["confirm_seeds"]) == [2, 2]
