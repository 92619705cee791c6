"""Compute budgets: `budget: {seconds: S}` per optimizer, on both backends.

A function workload that sleeps a known time per epoch is tuned with a seconds budget by two
Optuna worker processes sharing one SQLite file, and on a real local Ray with two trials at
once. From the run rows: no trial of an optimizer started once its finished search runs had
spent S, the spend reached S, and it stays below S plus the longest trial (never more than one
trial over). The gate's rule itself is checked on hand-made counts, and bad `budget.seconds`
values are refused naming the key.
"""

from __future__ import annotations

import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from helpers import subprocess_env, write_spec

from studies.budget import Budget, Spend, can_start, projected_seconds, search_finished
from studies.events import Counts
from studies.results import runs_frame
from studies.runner import RunnerConfig, campaign_complete, run_campaign
from studies.spec import SpecError, load_spec, parse_spec
from studies.status import campaign_status

SECONDS = 1.2
SLEEP = 0.06  # per epoch; 3 epochs: a trial takes about 0.2 s

# torch is imported with the module (when the spec is checked, before any trial), so that no
# trial's time includes importing it.
TASKS = """
import time

import torch


def train(make_optimizer, *, seed, device, options, report):
    w = torch.nn.Parameter(torch.zeros(1))
    make_optimizer([w])
    for epoch in range(options["epochs"]):
        time.sleep(options["sleep"])
        report(epoch + 1, float(seed % 97))
    return float(seed % 97)
"""

SPEC = {
    "name": "secs",
    "workload": {
        "name": "sleepy_tasks:train",
        "metric": {"name": "val_loss", "direction": "minimize"},
        "options": {"epochs": 3, "sleep": SLEEP},
    },
    "optimizers": ["adam", "sgd"],
    "budget": {"seconds": SECONDS},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 0},  # the search is what is measured (a confirm run writes notes)
    "seed": 0,
    "device": "cpu",
}


def write_campaign(folder: Path, **changes) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "sleepy_tasks.py").write_text(textwrap.dedent(TASKS))
    return write_spec(folder, {**SPEC, **changes})


def check_seconds_budget(url: str, name: str, workers: int) -> None:
    runs = runs_frame(url, name)
    search = runs[runs["phase"] == "search"]
    assert (search["status"] == "complete").all(), search[["status", "reason"]]
    for label in ("adam", "sgd"):
        mine = search[search["optimizer"] == label]
        walls = mine["wall_time"].to_numpy()
        assert len(mine) >= 3, len(mine)
        total, longest = walls.sum(), walls.max()
        # The spend reaches S and overshoots by less than one trial.
        assert SECONDS <= total < SECONDS + longest, (label, list(walls))
        # No trial started once the finished runs had spent S (a 50 ms allowance: a run
        # row starts a moment after the gate let its trial start).
        for _, run in mine.iterrows():
            before = mine[mine["finished_at"] <= run["started_at"] - pd_ms(50)]
            assert before["wall_time"].sum() < SECONDS, (label, run["trial_number"])
    if workers > 1:
        assert search["worker"].nunique() >= 2  # the trials really ran side by side


def pd_ms(ms: int):
    import pandas as pd

    return pd.Timedelta(milliseconds=ms)


def test_seconds_budget_with_two_optuna_workers(tmp_path):
    path = write_campaign(tmp_path / "optuna")
    spec = load_spec(path)
    assert spec.trials is None and spec.seconds == SECONDS
    assert spec.normalized()["budget"] == {"trials": None, "max_epochs": None, "seconds": SECONDS}
    url = f"sqlite:///{tmp_path / 'secs.db'}"
    # In a fresh process: its second worker is forked at once (a process running other threads,
    # a Ray test's, would spawn it, and its imports could outlast this short search).
    code = (
        "import sys; from studies.runner import RunnerConfig, run_campaign; "
        "from studies.spec import load_spec; "
        "run_campaign(load_spec(sys.argv[1]), RunnerConfig(storage=sys.argv[2], "
        "poll_interval=0.05), workers=2)"
    )
    subprocess.run(
        [sys.executable, "-c", code, str(path), url],
        env=subprocess_env(),
        check=True,
        timeout=300,
    )
    assert campaign_complete(spec, url)
    check_seconds_budget(url, "secs", workers=2)
    status = {r["optimizer"]: r for r in campaign_status(url, "secs")}
    runs = runs_frame(url, "secs")
    for label, row in status.items():
        mine = runs[(runs["phase"] == "search") & (runs["optimizer"] == label)]
        assert row["phase"] == "done" and row["budget"] is None
        assert row["budget_seconds"] == SECONDS
        assert row["spent_seconds"] == pytest.approx(mine["wall_time"].sum())
        assert row["search_progress"] == f"{len(mine)} trials, {row['spent_seconds']:.3g}/1.2 s"


@pytest.mark.ray
@pytest.mark.slow
def test_seconds_budget_on_the_ray_backend(tmp_path):
    pytest.importorskip("ray")
    from studies.ray_backend import ray_session, run_campaign_ray

    path = write_campaign(tmp_path / "ray", max_concurrent=2, ray={"scheduler": "fifo"})
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'secs-ray.db'}"
    with ray_session(num_cpus=2):
        run_campaign_ray(spec, RunnerConfig(storage=url))
    assert campaign_complete(spec, url)
    check_seconds_budget(url, "secs", workers=1)


def test_trials_and_seconds_whichever_runs_out_first(tmp_path):
    # 2 trials run out long before 100 s; the search ends at 2 trials.
    path = write_campaign(
        tmp_path / "both", budget={"trials": 2, "seconds": 100}, confirm={"seeds": 1}
    )
    spec = load_spec(path)
    url = f"sqlite:///{tmp_path / 'both.db'}"
    run_campaign(spec, RunnerConfig(storage=url))
    runs = runs_frame(url, "secs")
    assert (runs[runs["phase"] == "search"].groupby("optimizer").size() == 2).all()
    assert sorted(runs[runs["phase"] == "confirm"]["optimizer"]) == ["adam", "sgd"]
    progress = campaign_status(url, "secs")[0]["search_progress"]
    assert re.fullmatch(r"2/2, 0\.\d+/100 s", progress), progress


def test_the_gate_projects_running_trials():
    budget = Budget(seconds=10.0)
    # Nothing finished yet: one trial at a time (no estimate of a trial's time).
    assert can_start(budget, Counts())
    assert not can_start(budget, Counts(running=1, elapsed=[0.5]))
    # 6 s spent, longest trial 2 s: each running trial counts at least 2 s.
    spend = Spend(seconds=6.0, timed=3, longest=2.0)
    assert projected_seconds(Counts(running=1, elapsed=[0.5], spend=spend)) == 8.0
    assert can_start(budget, Counts(running=1, elapsed=[0.5], spend=spend))
    assert not can_start(budget, Counts(running=2, elapsed=[0.5, 0.1], spend=spend))  # 10 s
    # A running trial past the estimate counts its elapsed time.
    assert projected_seconds(Counts(running=1, elapsed=[3.5], spend=spend)) == 9.5
    # Finished: nothing runs and the spend reached S; a queued retry does not reopen it.
    assert search_finished(budget, Counts(waiting=1, spend=Spend(10.0, 5, 2.0)))
    assert not search_finished(budget, Counts(spend=Spend(9.9, 5, 2.0)))
    assert not search_finished(budget, Counts(running=1, elapsed=[9.0], spend=Spend(10.0, 5, 2)))
    # Both budgets: whichever runs out first.
    both = Budget(trials=4, seconds=10.0)
    assert search_finished(both, Counts(used=4, finished=4, spend=Spend(3.0, 4, 1.0)))
    assert search_finished(both, Counts(used=2, finished=2, spend=Spend(10.0, 2, 5.0)))
    assert not search_finished(both, Counts(used=2, finished=2, spend=Spend(3.0, 2, 1.0)))
    # An int budget is a number of trials, as before.
    assert search_finished(3, Counts(used=3, finished=3))
    assert not search_finished(3, Counts(used=3, waiting=1))


@pytest.mark.parametrize(
    ("budget", "message"),
    [
        ({"seconds": 0}, "budget.seconds: must be a number of seconds > 0, got 0"),
        ({"seconds": -5.0}, "budget.seconds: must be a number of seconds > 0, got -5.0"),
        ({"seconds": "60"}, "budget.seconds: must be a number of seconds > 0, got '60'"),
        ({"seconds": True}, "budget.seconds: must be a number of seconds > 0, got True"),
        ({"seconds": float("inf")}, "budget.seconds: must be a number of seconds > 0, got inf"),
        ({"seconds": None}, "budget.seconds: must be a number of seconds > 0, got None"),
        ({"max_epochs": 3}, "budget.trials: missing: give budget.trials"),
        ({"trials": 4, "second": 3}, "budget.second: unknown key; allowed: trials, seconds"),
    ],
)
def test_bad_seconds_budgets_name_the_key(budget, message):
    data = {**SPEC, "workload": "digits-mlp", "budget": budget}
    with pytest.raises(SpecError, match="^spec <dict>: " + _escape(message)):
        parse_spec(data)


def _escape(text: str) -> str:
    return re.escape(text)


def test_a_seconds_budget_is_hashed_only_when_given():
    base = parse_spec({**SPEC, "workload": "digits-mlp", "budget": {"trials": 4}})
    assert base.normalized()["budget"] == {"trials": 4, "max_epochs": None}
    timed = parse_spec({**SPEC, "workload": "digits-mlp", "budget": {"trials": 4, "seconds": 60}})
    assert timed.seconds == 60.0 and timed.spec_hash != base.spec_hash
