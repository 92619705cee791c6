"""The Ray Tune backend against a real local Ray (one per test session) and real storages.

Covers: trials landing in the campaign's Optuna studies (default config first, the same seeds),
results rows of the same shape as the Optuna backend's, two trials at once, ASHA-stopped trials
recorded as stopped and never counted, no early stopping with `pruner: none`, PBT exploits
recorded and resumed from checkpoints, the confirm phase on Ray, and joining a running Ray with
`--address` from the command line without the storage password ever showing.
"""

from __future__ import annotations

import itertools
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator

import optuna
import pytest
from helpers import missing_component, subprocess_env, write_spec
from optuna.trial import TrialState

from studies.results import compare_frame, curves_frame, runs_frame
from studies.runner import RunnerConfig, confirm_seed, run_campaign, search_seed
from studies.spec import load_spec

pytestmark = [pytest.mark.ray, pytest.mark.slow]

PASSWORD = "pg-secret-Xy7"  # the conftest PostgreSQL password

DIGITS = {
    "name": "rd",
    "workload": {"name": "digits-mlp", "options": {"epochs": 4, "hidden": 16, "batch_size": 64}},
    "optimizers": ["adam", "sgd"],
    "budget": {"trials": 5},
    "sampler": "tpe",
    "pruner": "none",
    "confirm": {"seeds": 2},
    "seed": 3,
    "device": "cpu",
    "max_concurrent": 2,
    "ray": {"scheduler": "asha", "grace_period": 1, "reduction_factor": 2},
}


@pytest.fixture(scope="session")
def local_ray() -> Iterator[str]:
    """One local Ray (2 CPUs) for the session; yields its address for `--address`."""
    try:
        import ray

        from studies.ray_backend import RAY_DEFAULT_ENV, RAY_ENV, set_ray_env
    except ImportError as exc:
        missing_component(f"Ray is not installed: {exc}")
    set_ray_env()
    temp = tempfile.mkdtemp(prefix="hvr-", dir="/tmp")
    try:
        context = ray.init(
            num_cpus=2,
            include_dashboard=False,
            log_to_driver=False,
            _temp_dir=temp,
            runtime_env={"env_vars": {**RAY_DEFAULT_ENV, **RAY_ENV}},
        )
    except Exception as exc:
        shutil.rmtree(temp, ignore_errors=True)
        missing_component(f"a local Ray could not start: {exc}")
    yield context.address_info["gcs_address"]
    ray.shutdown()
    shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def campaigns(local_ray, tmp_path_factory) -> dict:
    """The same digits campaign run once with the Ray backend and once with the Optuna one."""
    from studies.ray_backend import run_campaign_ray

    folder = tmp_path_factory.mktemp("ray-campaign")
    spec = load_spec(write_spec(folder, DIGITS))
    ray_url = f"sqlite:///{folder / 'ray.db'}"
    optuna_url = f"sqlite:///{folder / 'optuna.db'}"
    run_campaign_ray(spec, RunnerConfig(storage=ray_url))
    run_campaign(spec, RunnerConfig(storage=optuna_url, threads=1))
    return {"spec": spec, "ray": ray_url, "optuna": optuna_url}


def study(url: str, name: str) -> optuna.Study:
    return optuna.load_study(study_name=name, storage=url)


def test_ray_trials_land_in_the_campaign_studies_with_the_default_config_first(campaigns):
    spec, url = campaigns["spec"], campaigns["ray"]
    assert set(optuna.get_all_study_names(url)) == {"rd/adam", "rd/sgd"}
    for label in spec.labels:
        s = study(url, f"rd/{label}")
        trials = s.get_trials()
        assert [t.number for t in trials] == list(range(spec.trials))
        assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials)
        assert trials[0].user_attrs["default_config"] is True
        assert trials[0].params == spec.entry(label).load_space().default_params()
        assert [t.user_attrs["seed"] for t in trials] == [
            search_seed(spec.seed, n) for n in range(spec.trials)
        ]
        assert all(t.user_attrs["backend"] == "ray" for t in trials)
        assert s.user_attrs["spec_hash"] == spec.spec_hash
        assert s.metric_names == ["val_accuracy"]  # named for the dashboard


def test_ray_results_rows_have_the_shape_of_the_optuna_backend_rows(campaigns):
    spec = campaigns["spec"]
    ray_runs = runs_frame(campaigns["ray"], "rd")
    ref_runs = runs_frame(campaigns["optuna"], "rd")
    assert list(ray_runs.columns) == list(ref_runs.columns)
    assert set(ray_runs["status"]) <= {"complete", "stopped"}
    for label in spec.labels:
        mine = ray_runs[ray_runs["optimizer"] == label]
        ref = ref_runs[ref_runs["optimizer"] == label]
        search = mine[mine["phase"] == "search"]
        # one row per trial: none lost, none duplicated
        assert sorted(search["trial_number"]) == list(range(spec.trials))
        assert list(search["seed"]) == [search_seed(spec.seed, n) for n in search["trial_number"]]
        confirm = mine[mine["phase"] == "confirm"]
        assert sorted(confirm["seed"]) == [confirm_seed(spec.seed, k) for k in range(2)]
        assert sorted(confirm["seed"]) == sorted(ref[ref["phase"] == "confirm"]["seed"])
        assert (confirm["status"] == "complete").all()
        for col in ("hyperparameters", "versions"):
            assert {frozenset(h) for h in mine[col]} == {frozenset(h) for h in ref[col]}
        assert (mine["device"] == "cpu").all() and mine["wall_time"].gt(0).all()
    ray_curves = curves_frame(campaigns["ray"], "rd")
    ref_curves = curves_frame(campaigns["optuna"], "rd")
    assert set(ray_curves["metric"]) == set(ref_curves["metric"])
    assert set(ray_curves["run_id"]) == set(ray_runs["run_id"])
    full = ray_runs[ray_runs["status"] == "complete"]["run_id"]
    epochs = ray_curves[ray_curves["run_id"].isin(full)].groupby("run_id")["epoch"].max()
    assert (epochs == 4).all()


def test_asha_stopped_trials_are_recorded_as_stopped_and_never_counted(campaigns):
    spec, url = campaigns["spec"], campaigns["ray"]
    runs = runs_frame(url, "rd")
    search = runs[runs["phase"] == "search"]
    stopped = search[search["status"] == "stopped"]
    assert len(stopped), "ASHA (grace 1, reduction 2) stopped no trial"
    curves = curves_frame(url, "rd")
    for _, row in stopped.iterrows():
        assert row["reason"].startswith("asha: stopped by the scheduler at epoch")
        trial = study(url, f"rd/{row['optimizer']}").trials[int(row["trial_number"])]
        assert trial.state == TrialState.PRUNED  # Optuna's best trial can never be one of these
        assert trial.user_attrs["stopped_by"] == "asha"
        epoch = trial.user_attrs["stopped_at_epoch"]
        assert 1 <= epoch < 4
        assert curves[curves["run_id"] == row["run_id"]]["epoch"].max() == epoch
    compare = compare_frame(url, "rd").set_index("optimizer")
    for label in spec.labels:
        complete = search[(search["optimizer"] == label) & (search["status"] == "complete")]
        best = complete.loc[complete["value"].idxmax()]
        assert compare.loc[label, "best_value"] == best["value"]
        assert compare.loc[label, "best_trial"] == best["trial_number"]
        assert compare.loc[label, "trials_complete"] == len(complete)
        confirm = runs[(runs["optimizer"] == label) & (runs["phase"] == "confirm")]
        assert set(confirm["trial_number"]) == {best["trial_number"]}
        assert study(url, f"rd/{label}").best_trial.number == best["trial_number"]


def test_two_trials_run_at_once(campaigns):
    runs = runs_frame(campaigns["ray"], "rd")
    spans = sorted(zip(runs["started_at"], runs["finished_at"], strict=True))
    overlaps = sum(1 for (s1, e1), (s2, _) in itertools.pairwise(spans) if s2 < e1 and s1 < e1)
    assert overlaps >= 1
    assert len({w for w in runs["worker"]}) >= 2  # two Ray worker processes


def test_pbt_exploits_are_recorded_and_resume_from_the_copied_state(local_ray, tmp_path):
    from studies.ray_backend import run_campaign_ray

    # No concurrency limit: four trials on two CPUs, so PBT time-shares them (pausing a trial
    # at each perturbation while others wait), and they report side by side.
    data = {
        **{k: v for k, v in DIGITS.items() if k != "max_concurrent"},
        "name": "pbt",
        "optimizers": ["adam"],
        "budget": {"trials": 4},
        "confirm": {"seeds": 1},
        "ray": {"scheduler": "pbt", "perturbation_interval": 1, "quantile_fraction": 0.5},
    }
    spec = load_spec(write_spec(tmp_path, data))
    url = f"sqlite:///{tmp_path / 'pbt.db'}"
    run_campaign_ray(spec, RunnerConfig(storage=url))
    trials = study(url, "pbt/adam").get_trials()
    assert len(trials) == 4 and all(t.state.is_finished() for t in trials)
    exploited = [t for t in trials if t.user_attrs.get("pbt_lineage")]
    assert exploited, "PBT exploited no trial"
    runs = runs_frame(url, "pbt")
    curves = curves_frame(url, "pbt")
    for t in exploited:
        assert t.state == TrialState.PRUNED and t.user_attrs["stopped_by"] == "pbt"
        rows = runs[(runs["trial_number"] == t.number) & (runs["phase"] == "search")]
        assert (rows["status"] == "stopped").all()
        assert rows["reason"].str.startswith("pbt: ").all()
        continued = rows[rows["extras"].map(lambda e: bool(e and e.get("pbt_lineage")))]
        assert len(continued) >= 1
        for _, row in continued.iterrows():
            first = row["extras"]["pbt_lineage"][0]
            epochs = curves[curves["run_id"] == row["run_id"]]["epoch"]
            assert epochs.min() > first["epoch"] - 1 and epochs.max() == 4  # resumed, not rerun
    best = study(url, "pbt/adam").best_trial
    assert "pbt_lineage" not in best.user_attrs
    confirm = runs[runs["phase"] == "confirm"]
    assert list(confirm["trial_number"]) == [best.number]


def test_pruner_none_stops_no_trial_early_unless_a_scheduler_is_named(local_ray, tmp_path):
    from studies.ray_backend import run_campaign_ray

    # ASHA settings that stop trials (as above), but no scheduler named: `pruner: none` rules.
    data = {
        "name": "nopr",
        "workload": {"name": "valley2d", "options": {"steps": 20, "report_every": 5}},
        "optimizers": ["sgd"],
        "budget": {"trials": 6},
        "sampler": "random",
        "pruner": "none",
        "confirm": {"seeds": 1},
        "device": "cpu",
        "max_concurrent": 2,
        "ray": {"grace_period": 1, "reduction_factor": 2},
    }
    spec = load_spec(write_spec(tmp_path, data))
    url = f"sqlite:///{tmp_path / 'nopr.db'}"
    run_campaign_ray(spec, RunnerConfig(storage=url))
    trials = study(url, "nopr/sgd").get_trials()
    assert len(trials) == 6
    assert all(t.state == TrialState.COMPLETE for t in trials), [t.state for t in trials]
    runs = runs_frame(url, "nopr")
    assert (runs["status"] == "complete").all(), list(runs["reason"])
    curves = curves_frame(url, "nopr")
    assert (curves.groupby("run_id")["epoch"].max() == 4).all()


def test_trials_of_an_interrupted_ray_run_are_failed_and_retried_by_the_next_run(
    local_ray, tmp_path
):
    from studies.ray_backend import run_campaign_ray
    from studies.results import ResultsDB
    from studies.runner import campaign_complete, prepare_campaign

    data = {
        "name": "resume",
        "workload": {"name": "valley2d", "options": {"steps": 10, "report_every": 5}},
        "optimizers": ["adam"],
        "budget": {"trials": 3},
        "sampler": "random",
        "confirm": {"seeds": 1},
        "device": "cpu",
    }
    spec = load_spec(write_spec(tmp_path, data))
    url = f"sqlite:///{tmp_path / 'resume.db'}"
    prepare_campaign(spec, url)
    # What a killed Ray driver leaves behind: trial 0 running, its run row running.
    s = study(url, "resume/adam")
    lost = s.ask()
    spec.entry("adam").load_space().suggest(lost)  # as the searcher does before the trial runs
    lost.set_user_attr("backend", "ray")
    lost.set_user_attr("seed", search_seed(spec.seed, lost.number))
    ResultsDB(url).start_run(
        campaign="resume",
        study="resume/adam",
        optimizer="adam",
        trial_number=lost.number,
        phase="search",
        seed=search_seed(spec.seed, lost.number),
        device="cpu",
        hyperparameters={},
    )
    run_campaign_ray(spec, RunnerConfig(storage=url))
    assert campaign_complete(spec, url)
    trials = study(url, "resume/adam").get_trials()
    first = trials[lost.number]
    assert first.state == TrialState.FAIL and first.user_attrs["fail_reason"]
    retries = [t for t in trials if t.system_attrs.get("failed_trial") == lost.number]
    assert len(retries) == 1 and retries[0].state == TrialState.COMPLETE
    assert retries[0].params == first.params
    assert retries[0].user_attrs["seed"] == first.user_attrs["seed"]
    counted = [t for t in trials if "failed_trial" not in t.system_attrs]
    assert len(counted) == 3
    runs = runs_frame(url, "resume")
    old = runs[(runs["trial_number"] == lost.number) & (runs["status"] == "failed")]
    assert len(old) == 1 and old["reason"].iloc[0].startswith("interrupted Ray run")


def test_cli_joins_a_running_ray_and_never_prints_the_storage_password(
    local_ray, postgres_url, tmp_path
):
    data = {
        "name": "pw",
        "workload": {"name": "valley2d", "options": {"steps": 10, "report_every": 5}},
        "optimizers": ["adam"],
        "budget": {"trials": 2},
        "sampler": "random",
        "confirm": {"seeds": 1},
        "device": "cpu",
    }
    spec_file = write_spec(tmp_path, data)
    env = subprocess_env()
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "studies.cli",
            "tune",
            str(spec_file),
            "--storage",
            postgres_url,
            "--backend",
            "ray",
            "--address",
            local_ray,
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    output = proc.stdout + proc.stderr
    assert proc.returncode == 0, output
    assert PASSWORD not in output
    assert "postgres:***@127.0.0.1" in output
    assert "confirm" in output and "adam" in output
    runs = runs_frame(postgres_url, "pw")
    assert sorted(runs["phase"]) == ["confirm", "search", "search"]
