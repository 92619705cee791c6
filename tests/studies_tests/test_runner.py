"""The Optuna runner on real storages, real Optuna and real (tiny) workloads.

Covers: studies and their attrs, the default config as trial 0, the equal budget with several
workers, resuming, diverging and crashing trials, a SIGKILLed worker's trial retried by
heartbeat, and the confirm phase running exactly once per seed.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from helpers import subprocess_env, write_spec
from optuna.trial import TrialState

import hvadam
from studies.results import ResultsDB, curves_frame, runs_frame
from studies.runner import (
    CampaignError,
    RunnerConfig,
    Worker,
    confirm_seed,
    prepare_campaign,
    run_campaign,
    search_seed,
)
from studies.spec import load_spec

VALLEY = {
    "name": "camp",
    "workload": {"name": "valley2d", "options": {"steps": 20, "report_every": 5}},
    "optimizers": ["hvadam", "adam"],
    "budget": {"trials": 3},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 2},
    "seed": 5,
    "device": "cpu",
}


def studies_of(url: str, spec) -> dict[str, optuna.Study]:
    return {
        label: optuna.load_study(study_name=spec.study_name(label), storage=url)
        for label in spec.labels
    }


def run(spec, url: str, workers: int = 1, **config) -> None:
    # One torch thread per worker: the workloads here are tiny, and the machine may be busy.
    config.setdefault("threads", 1)
    run_campaign(spec, RunnerConfig(storage=url, **config), workers=workers)


def test_a_resumed_campaign_names_the_metric_of_studies_made_without_it(sqlite_url, tmp_path):
    spec = load_spec(write_spec(tmp_path, VALLEY))
    prepare_campaign(spec, sqlite_url)
    for study in studies_of(sqlite_url, spec).values():
        study.set_metric_names(["Objective 0"])  # as a study made by an older version reads
    prepare_campaign(spec, sqlite_url)
    for study in studies_of(sqlite_url, spec).values():
        assert study.metric_names == ["function_value"]


def test_campaign_makes_one_tagged_study_per_optimizer_with_defaults_first(storage_url, tmp_path):
    spec = load_spec(write_spec(tmp_path, VALLEY))
    run(spec, storage_url)
    studies = studies_of(storage_url, spec)
    assert set(optuna.get_all_study_names(storage_url)) == {"camp/hvadam", "camp/adam"}
    for label, study in studies.items():
        attrs = study.user_attrs
        assert attrs["campaign"] == "camp" and attrs["workload"] == "valley2d"
        assert attrs["optimizer"] == label and attrs["spec_hash"] == spec.spec_hash
        assert attrs["spec"] == spec.normalized()
        assert study.metric_names == ["function_value"]  # the dashboard names the metric
        # intermediate values keep the report's index (the epoch, here 5 steps each) as step
        assert sorted(study.trials[0].intermediate_values) == [1, 2, 3, 4]
        assert study.direction == optuna.study.StudyDirection.MINIMIZE
        trials = study.get_trials()
        assert len(trials) == 3 and all(t.state == TrialState.COMPLETE for t in trials)
        first = trials[0]
        assert first.params == spec.entry(label).load_space().default_params()
        assert first.user_attrs["default_config"] is True
        assert [t.user_attrs["seed"] for t in trials] == [search_seed(5, n) for n in range(3)]

    runs = runs_frame(storage_url, "camp")
    search = runs[runs["phase"] == "search"]
    confirm = runs[runs["phase"] == "confirm"]
    assert len(search) == 6 and len(confirm) == 4
    assert (runs["status"] == "complete").all()
    # full resolved hyperparameters: every keyword the optimizer takes
    for _, row in runs.iterrows():
        assert set(row["hyperparameters"]) == set(hvadam.optimizer_defaults(row["optimizer"]))
    # confirm: the best search config of each optimizer, on fresh seeds shared by all
    for label, study in studies.items():
        mine = confirm[confirm["optimizer"] == label]
        assert set(mine["trial_number"]) == {study.best_trial.number}
        assert sorted(mine["seed"]) == [confirm_seed(5, 0), confirm_seed(5, 1)]
    assert not set(confirm["seed"]) & set(search["seed"])
    # curves: several named metrics per epoch, HVAdam internals among them
    curves = curves_frame(storage_url, "camp")
    hv = curves[curves["optimizer"] == "hvadam"]
    assert {"train_loss", "restarts"} <= set(hv["metric"])
    assert sorted(hv["epoch"].unique()) == [1, 2, 3, 4]
    # trajectories of valley2d are kept in extras
    assert all(len(e["trajectory"]) >= 2 for e in runs["extras"])
    assert all(m["function_value"] >= 0 for m in runs["metrics"])


def test_workers_interleave_optimizers_so_counts_never_drift(sqlite_url, tmp_path):
    spec = load_spec(
        write_spec(tmp_path, VALLEY, optimizers=["hvadam", "adam", "sgd"], budget={"trials": 4})
    )
    run(spec, sqlite_url)
    order = runs_frame(sqlite_url, "camp").query("phase == 'search'")["optimizer"].tolist()
    for i in range(1, len(order) + 1):
        counts = [order[:i].count(o) for o in spec.labels]
        assert max(counts) - min(counts) <= 1, order


def test_running_the_same_campaign_again_runs_nothing_new(sqlite_url, tmp_path):
    spec = load_spec(write_spec(tmp_path, VALLEY))
    run(spec, sqlite_url)
    before = runs_frame(sqlite_url, "camp")
    started = time.perf_counter()
    run(spec, sqlite_url)
    assert time.perf_counter() - started < 10
    after = runs_frame(sqlite_url, "camp")
    assert after["run_id"].tolist() == before["run_id"].tolist()
    assert sum(len(s.trials) for s in studies_of(sqlite_url, spec).values()) == 6


def test_a_different_spec_under_the_same_name_is_refused(storage_url, tmp_path):
    run(load_spec(write_spec(tmp_path, VALLEY)), storage_url)
    # (a spec that only grows the campaign continues it: tests/studies_tests/test_growing.py)
    changed = load_spec(write_spec(tmp_path, VALLEY, seed=6))
    with pytest.raises(CampaignError, match=r"'camp' exists with another spec: seed changed"):
        run(changed, storage_url)


def test_a_diverging_trial_is_pruned_with_its_reason(storage_url, tmp_path):
    spec = load_spec(
        write_spec(
            tmp_path,
            VALLEY,
            workload={
                "name": "noisy-quadratic",
                "options": {"dim": 10, "steps": 60, "report_every": 20},
            },
            optimizers={"sgd": {"lr": 1000.0}, "adam": {}},
            budget={"trials": 2},
            confirm={"seeds": 1},
        )
    )
    run(spec, storage_url)
    sgd = studies_of(storage_url, spec)["sgd"]
    assert [t.state for t in sgd.trials] == [TrialState.PRUNED, TrialState.PRUNED]
    for t in sgd.trials:
        assert t.user_attrs["prune_reason"].startswith("diverged at epoch ")
    runs = runs_frame(storage_url, "camp")
    sgd_runs = runs[runs["optimizer"] == "sgd"]
    assert (sgd_runs["phase"] == "search").all()  # nothing to confirm
    assert (sgd_runs["status"] == "pruned").all()
    assert sgd_runs["reason"].str.contains("diverged at epoch").all()
    adam = runs[runs["optimizer"] == "adam"]
    assert (adam["status"] == "complete").all() and len(adam) == 3


def test_a_crashing_trial_fails_with_its_traceback_and_the_campaign_completes(sqlite_url, tmp_path):
    # Hyperparameters are checked against the optimizer at spec load, so a crash comes from
    # the run itself: here the workload's data set is missing.
    spec = load_spec(
        write_spec(
            tmp_path,
            VALLEY,
            workload={"name": "cifar10-vgg11", "options": {"data_dir": str(tmp_path / "none")}},
            optimizers=["adam", "sgd"],
            budget={"trials": 2},
        )
    )
    run(spec, sqlite_url)
    for label, study in studies_of(sqlite_url, spec).items():
        assert [t.state for t in study.trials] == [TrialState.FAIL] * 2, label
        for t in study.trials:
            assert "cifar10 data not found" in t.user_attrs["fail_reason"]
            assert t.user_attrs["traceback"].startswith("Traceback (most recent call last)")
    runs = runs_frame(sqlite_url, "camp")
    assert (runs["status"] == "failed").all() and (runs["phase"] == "search").all()
    assert runs["traceback"].str.contains("DataNotFoundError").all()


def start_worker(path: Path, url: str, cwd: Path, *extra: str) -> subprocess.Popen:
    """`hvadam worker` in its own process (HVAdam/Anon are not used: no compile warm-up)."""
    env = subprocess_env(HVADAM_STORAGE=url)
    cmd = [sys.executable, "-m", "studies.cli", "worker", str(path), "--quiet", "--threads", "1"]
    return subprocess.Popen([*cmd, *extra], env=env, cwd=cwd)


def wait_for_run(
    db: ResultsDB,
    pid: int,
    timeout: float = 90.0,
    *,
    by_others: bool = False,
    alive: subprocess.Popen | None = None,
):
    """The first run process `pid` starts (id, optimizer, trial number), or None; with
    `by_others`, the first run any other process starts. Gives up early once `alive` exits."""
    deadline = time.monotonic() + timeout
    query = sa.text(
        "SELECT id, optimizer, trial_number FROM hvadam_runs WHERE "
        + ("worker NOT LIKE :w" if by_others else "status = 'running' AND worker LIKE :w")
    )
    while time.monotonic() < deadline:
        with db.engine.connect() as conn:
            row = conn.execute(query, {"w": f"%:{pid}"}).first()
        if row is not None:
            return row
        if alive is not None and alive.poll() is not None:
            return None
        time.sleep(0.05)
    return None


# `tune --workers 2` as its own process would do it: a fresh, single-threaded process (a test
# process may hold other libraries' threads, with which the runner never forks).
RUN_TWO_WORKERS = """
import sys
from studies.runner import RunnerConfig, run_campaign, start_method
from studies.spec import load_spec

spec_path, url, start = sys.argv[1:]
assert start_method(cuda=False) == start, start_method(cuda=False)
assert start_method(cuda=True) == "spawn"
# The test pauses another worker for a while: a generous grace keeps its trial from being
# taken for a lost one.
config = RunnerConfig(storage=url, threads=1, grace_period=600)
run_campaign(load_spec(spec_path), config, workers=2)
"""


@pytest.mark.slow
@pytest.mark.parametrize("start", ["fork", "spawn"])
def test_concurrent_workers_keep_equal_budgets_and_confirm_each_seed_once(
    sqlite_url, tmp_path, start
):
    # CPU workers are forked from the command's process by default; "spawn" starts
    # `hvadam worker` subprocesses, as for GPUs.
    path = write_spec(
        tmp_path,
        VALLEY,
        workload={"name": "valley2d", "options": {"steps": 400, "report_every": 100}},
        optimizers=["adam", "sgd", "adamw"],
        budget={"trials": 3},
        confirm={"seeds": 2},
    )
    spec = load_spec(path)
    prepare_campaign(spec, sqlite_url)
    # A worker from "another shell", already busy when `tune --workers 2` (a process and
    # one child) joins in. It is paused until `tune` has started a run of its own: on a loaded
    # machine `tune`'s start (importing torch, preparing the fork) can outlast the whole
    # campaign's work, and the busy worker would be done before anyone joined.
    db = ResultsDB(sqlite_url)
    outside = start_worker(path, sqlite_url, tmp_path, "--worker-index", "5")
    assert wait_for_run(db, outside.pid) is not None
    os.kill(outside.pid, signal.SIGSTOP)
    try:
        tune = subprocess.Popen(
            [sys.executable, "-c", RUN_TWO_WORKERS, str(path), sqlite_url, start],
            env=subprocess_env(HVADAM_WORKER_START=start),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        joined = wait_for_run(db, outside.pid, 240.0, by_others=True, alive=tune)
    finally:
        os.kill(outside.pid, signal.SIGCONT)
    _, stderr = tune.communicate(timeout=300)
    assert tune.returncode == 0, stderr
    assert joined is not None, "tune's workers started no run"
    assert outside.wait(timeout=120) == 0

    runs = runs_frame(sqlite_url, "camp")
    assert runs["worker"].nunique() >= 2  # the work really was shared
    for label, study in studies_of(sqlite_url, spec).items():
        assert len(study.trials) == 3, label
        assert all(t.state == TrialState.COMPLETE for t in study.trials)
    search = runs[runs["phase"] == "search"]
    assert search.groupby("optimizer").size().tolist() == [3, 3, 3]
    confirm = runs[runs["phase"] == "confirm"]
    assert len(confirm) == 6 and (confirm["status"] == "complete").all()
    assert confirm.groupby(["optimizer", "seed"]).size().eq(1).all()
    claims = ResultsDB(sqlite_url).claims("camp", "confirm")
    assert len(claims) == 6 and all(c["status"] == "done" for c in claims)


@pytest.mark.slow
def test_a_sigkilled_workers_trial_is_retried_and_the_budget_completes(sqlite_url, tmp_path):
    # Trials long enough (~2 s) to kill one mid-run; heartbeat 1 s, grace 3 s.
    path = write_spec(
        tmp_path,
        VALLEY,
        workload={"name": "valley2d", "options": {"steps": 6000, "report_every": 1000}},
        optimizers=["adam", "sgd"],
        budget={"trials": 3},
        confirm={"seeds": 1},
    )
    spec = load_spec(path)
    prepare_campaign(spec, sqlite_url)
    victim = start_worker(
        path, sqlite_url, tmp_path, "--heartbeat-interval", "1", "--grace-period", "3"
    )
    killed_run = wait_for_run(ResultsDB(sqlite_url), victim.pid)
    assert killed_run is not None, "the victim never started a trial"
    time.sleep(0.3)
    victim.send_signal(signal.SIGKILL)
    victim.wait()
    # The survivor (this process) fails the lost trial after the grace period, reruns it and
    # finishes the campaign.
    config = RunnerConfig(storage=sqlite_url, heartbeat_interval=1, grace_period=3, worker_index=1)
    Worker(spec, config).run()

    study = studies_of(sqlite_url, spec)[killed_run.optimizer]
    lost = study.trials[killed_run.trial_number]
    assert lost.state == TrialState.FAIL
    retries = [t for t in study.trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == lost.params
    assert retries[0].user_attrs["seed"] == lost.user_attrs["seed"]
    for label, s in studies_of(sqlite_url, spec).items():
        counted = [t for t in s.trials if "failed_trial" not in t.system_attrs]
        assert len(counted) == 3, label
        assert all(t.state.is_finished() for t in s.trials)
    runs = runs_frame(sqlite_url, "camp")
    row = runs[runs["run_id"] == killed_run.id].iloc[0]
    assert row["status"] == "failed" and row["reason"].startswith("worker lost")
    assert (runs["phase"] == "confirm").sum() == 2
