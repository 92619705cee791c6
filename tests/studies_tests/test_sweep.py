"""Controlled sweeps (`sweep:`): the best config re-run at each value, as its own phase.

Covers: the runs of a sweep (values x seeds, each exactly once with two workers, the best
trial's params except the swept one, the swept value in `extras`), a conditional param switching
its condition on, a fixed keyword swept (its run at the best's own value repeats the confirm
run), the Ray backend, and spec errors naming the key before any trial runs.
"""

from __future__ import annotations

import json
import math

import optuna
import pytest
from helpers import write_spec

import hvadam
from studies.campaign import campaign_complete
from studies.results import ResultsDB, runs_frame
from studies.runner import RunnerConfig, Worker, confirm_seed, prepare_campaign, run_campaign
from studies.seeds import sweep_seed
from studies.spec import SpecError, load_spec, parse_spec
from studies.status import campaign_status
from studies.sweep import sweep_slot

VALLEY = {
    "name": "sw",
    "workload": {"name": "valley2d", "options": {"steps": 20, "report_every": 5}},
    "optimizers": ["hvadam", "adam"],
    "budget": {"trials": 3},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 2},
    "seed": 4,
    "device": "cpu",
    "sweep": [
        {"optimizer": "hvadam", "param": "adaptivity", "values": [0, 0.5, 1.5], "seeds": 2},
        {"optimizer": "hvadam", "param": "gamma", "values": [0.0, 0.1], "seeds": 1},
        {"optimizer": "adam", "param": "eps", "values": [1e-8, 1e-4], "seeds": 2},
    ],
}


def best_trial(url: str, spec, label: str) -> tuple[optuna.trial.FrozenTrial, dict]:
    """The stored best search trial of `label` and its full hyperparameters (as JSON keeps them)."""
    study = optuna.load_study(study_name=spec.study_name(label), storage=url)
    best = study.best_trial
    space = spec.entry(label).load_space()
    hp = space.to_hyperparameters(best.params)
    resolved = hvadam.resolve_hyperparameters(space.optimizer, **hp)
    return best, json.loads(json.dumps(resolved))


def check_sweep_runs(url: str, spec) -> None:
    runs = runs_frame(url, spec.name)
    sweep = runs[runs["phase"] == "sweep"]
    assert len(sweep) == sum(len(sw.values) * sw.seeds for sw in spec.sweeps)
    assert (sweep["status"] == "complete").all(), list(sweep["reason"])
    for i, sw in enumerate(spec.sweeps):
        trial, best = best_trial(url, spec, sw.optimizer)
        mine = sweep[sweep["extras"].map(lambda e, i=i: e["sweep"]["index"] == i)]
        # exactly values x seeds runs: each (value, seed) once
        pairs = sorted(
            (e["sweep"]["value"], s) for e, s in zip(mine["extras"], mine["seed"], strict=True)
        )
        want = sorted((v, sweep_seed(spec.seed, k)) for v in sw.values for k in range(sw.seeds))
        assert pairs == want
        assert (mine["optimizer"] == sw.optimizer).all()
        assert set(mine["trial_number"]) == {trial.number}  # the best trial's config
        for hp, extras in zip(mine["hyperparameters"], mine["extras"], strict=True):
            value = extras["sweep"]["value"]
            assert extras["sweep"]["param"] == sw.param
            assert hp[sw.param] == value
            expected = {**best, sw.param: value}
            # gamma exists only with noise_aware: the sweep switches it on if the best had not
            switched = sw.param == "gamma" and not trial.params["noise_aware"]
            assert extras["sweep"]["set"] == ({"noise_aware": True} if switched else {})
            assert hp == expected, (sw.param, value)
    # the seeds are the confirm seeds: adam's confirm runs are repeated where eps is the best's
    # (adam's best keeps the space's fixed eps = 1e-8), value for value on this CPU workload
    assert spec.sweeps[-1].param == "eps" and spec.sweeps[-1].seeds == spec.confirm_seeds
    confirm = runs[(runs["phase"] == "confirm") & (runs["optimizer"] == "adam")]
    same = sweep[(sweep["optimizer"] == "adam")]
    same = same[same["hyperparameters"].map(lambda h: h["eps"] == 1e-8)]
    assert (
        sorted(same["seed"])
        == sorted(confirm["seed"])
        == [confirm_seed(4, k) for k in range(spec.confirm_seeds)]
    )
    by_seed = dict(zip(confirm["seed"], confirm["value"], strict=True))
    for seed, value in zip(same["seed"], same["value"], strict=True):
        assert math.isclose(value, by_seed[seed], rel_tol=1e-9, abs_tol=1e-12)


def test_sweeps_run_each_value_and_seed_exactly_once_with_two_workers(sqlite_url, tmp_path):
    spec = load_spec(write_spec(tmp_path, VALLEY))
    assert spec.entry("adam").load_space().fixed["eps"] == 1e-8  # what the check above needs
    run_campaign(spec, RunnerConfig(storage=sqlite_url, threads=1), workers=2)
    check_sweep_runs(sqlite_url, spec)
    claims = ResultsDB(sqlite_url).claims("sw", "sweep")
    assert len(claims) == 12 and all(c["status"] == "done" and c["attempts"] == 1 for c in claims)
    assert sorted((c["optimizer"], c["slot"]) for c in claims) == sorted(
        (sw.optimizer, sweep_slot(i, j, k))
        for i, sw in enumerate(spec.sweeps)
        for j in range(len(sw.values))
        for k in range(sw.seeds)
    )
    assert campaign_complete(spec, sqlite_url)


def test_an_open_sweep_run_keeps_the_campaign_incomplete_until_taken_over(sqlite_url, tmp_path):
    spec = load_spec(write_spec(tmp_path, VALLEY, sweep=VALLEY["sweep"][:1]))
    run_campaign(spec, RunnerConfig(storage=sqlite_url, threads=1))
    assert campaign_complete(spec, sqlite_url)
    db = ResultsDB(sqlite_url)
    with db.engine.begin() as conn:  # as if one sweep run had never finished
        conn.exec_driver_sql("UPDATE hvadam_claims SET status = 'running' WHERE slot = 1001")
    assert not campaign_complete(spec, sqlite_url)
    status = {r["optimizer"]: r for r in campaign_status(sqlite_url, "sw")}
    assert (status["hvadam"]["phase"], status["hvadam"]["sweep_done"]) == ("sweep", 5)
    assert status["hvadam"]["sweep_runs"] == 6
    assert (status["adam"]["phase"], status["adam"]["sweep_runs"]) == ("done", 0)
    # an idle worker names the sweep run it waits for
    worker = Worker(spec, RunnerConfig(storage=sqlite_url, threads=1))
    assert worker.waiting_for() == ["hvadam sweep seed slot 1001"]
    # its worker is lost: no heartbeat for the grace period, its run left running
    claim = next(c for c in db.claims("sw", "sweep") if c["slot"] == 1001)
    with db.engine.begin() as conn:
        conn.exec_driver_sql("UPDATE hvadam_claims SET heartbeat_at = 0 WHERE slot = 1001")
        conn.exec_driver_sql(
            f"UPDATE hvadam_runs SET status = 'running' WHERE id = {claim['run_id']}"
        )
    run_campaign(spec, RunnerConfig(storage=sqlite_url, threads=1))
    assert campaign_complete(spec, sqlite_url)
    again = next(c for c in db.claims("sw", "sweep") if c["slot"] == 1001)
    assert again["attempts"] == 2 and again["status"] == "done"
    runs = runs_frame(sqlite_url, "sw").set_index("run_id")
    assert runs.loc[claim["run_id"], "status"] == "failed"
    assert "worker lost" in runs.loc[claim["run_id"], "reason"]
    new = runs.loc[again["run_id"]]
    assert new["status"] == "complete" and new["phase"] == "sweep"
    assert new["extras"]["sweep"]["value"] == 0.5 and new["seed"] == sweep_seed(4, 1)
    assert (runs["phase"] == "sweep").sum() == 6 + 1  # one run more, nothing else re-run


def test_the_spec_hash_is_unchanged_without_a_sweep(tmp_path):
    plain = {k: v for k, v in VALLEY.items() if k != "sweep"}
    spec = parse_spec(plain)
    assert "sweep" not in spec.normalized() and spec.sweeps == ()
    one = parse_spec({**plain, "sweep": VALLEY["sweep"][0]})
    listed = parse_spec({**plain, "sweep": VALLEY["sweep"][:1]})
    assert one.normalized()["sweep"] == [VALLEY["sweep"][0]]
    assert one.spec_hash == listed.spec_hash != spec.spec_hash
    assert parse_spec({**plain, "sweep": {**VALLEY["sweep"][0], "seeds": 3}}).sweeps[0].seeds == 3


@pytest.mark.parametrize(
    ("sweep", "message"),
    [
        (
            {"optimizer": "hvadam", "param": "restart_threshold", "values": [0, 0.2, 3]},
            "sweep.values[2]: restart_threshold = 3 is refused by 'hvadam': HVAdam: "
            "restart_threshold must be in [-1, 1]",
        ),
        (
            {"optimizer": "hvadam", "param": "adaptivity", "values": [0, 1, float("nan")]},
            "sweep.values[2]: adaptivity = nan is refused by 'hvadam': HVAdam: adaptivity "
            "must be a finite real number",
        ),
        (
            [
                {"optimizer": "adam", "param": "lr", "values": [0.1]},
                {"optimizer": "hvadam", "param": "gamma", "values": [0.1, -1.0]},
            ],
            "sweep[1].values[1]: gamma = -1.0 is refused by 'hvadam': HVAdam: gamma must be in",
        ),
        (
            {"optimizer": "hvadam", "param": "adaptivity", "values": [0, "high"]},
            "sweep.values[1]: adaptivity = 'high' is not a number",
        ),
        (
            {"optimizer": "hvadam", "param": "noise_aware", "values": [True, 2]},
            "sweep.values[1]: noise_aware = 2 is not one of its choices [False, True]",
        ),
        (
            {"optimizer": "hvadam", "param": "momentum", "values": [0.9]},
            "sweep.param: 'momentum' is not a searched or fixed hyperparameter of 'hvadam'",
        ),
        (
            {"optimizer": "sgd", "param": "lr", "values": [0.1]},
            "sweep.optimizer: 'sgd' is not an optimizer of this campaign",
        ),
        ({"optimizer": "adam", "param": "lr", "values": []}, "sweep.values: must be a non-empty"),
        (
            {"optimizer": "adam", "param": "lr", "values": [0.1, 0.1]},
            "sweep.values[1]: 0.1 is given twice",
        ),
        ({"optimizer": "adam", "param": "lr", "values": [0.1], "seeds": 0}, "sweep.seeds: must"),
        ({"optimizer": "adam", "param": "lr", "value": [0.1]}, "sweep.value: unknown key"),
        (
            [
                {"optimizer": "adam", "param": "lr", "values": [0.1]},
                {"optimizer": "adam", "param": "lr", "values": [0.2]},
            ],
            "sweep[1].param: adam.lr is swept already by sweep[0]",
        ),
    ],
)
def test_spec_errors_name_the_key_before_any_trial(sweep, message, tmp_path, sqlite_url):
    data = {**VALLEY, "sweep": sweep}
    with pytest.raises(SpecError) as err:
        spec = load_spec(write_spec(tmp_path, data))
    assert message in str(err.value)
    # prepare_campaign (what both backends start with) refuses it too, creating nothing
    try:
        spec = parse_spec(data)
    except SpecError:
        return
    with pytest.raises(SpecError, match=r"sweep"):
        prepare_campaign(spec, sqlite_url)
    assert optuna.get_all_study_names(sqlite_url) == []


@pytest.mark.ray
@pytest.mark.slow
def test_sweeps_run_on_the_ray_backend(tmp_path):
    pytest.importorskip("ray")
    from studies.ray_backend import run_campaign_ray

    # Small (Ray's trials cost seconds each): one optimizer, the fixed-keyword sweep
    data = {**VALLEY, "optimizers": ["adam"], "budget": {"trials": 2}, "confirm": {"seeds": 1}}
    sweep = {**VALLEY["sweep"][2], "seeds": 1}
    spec = load_spec(write_spec(tmp_path, {**data, "sweep": sweep, "max_concurrent": 2}))
    url = f"sqlite:///{tmp_path / 'ray.db'}"
    run_campaign_ray(spec, RunnerConfig(storage=url), num_cpus=2)
    check_sweep_runs(url, spec)
    claims = ResultsDB(url).claims("sw", "sweep")
    assert len(claims) == 2 and all(c["status"] == "done" for c in claims)
    assert campaign_complete(spec, url)


def test_a_conditional_param_switches_its_condition_on_and_a_fixed_one_is_overridden():
    from search_spaces import load_space
    from studies.sweep import sweep_config

    space = load_space("hvadam")
    base = space.default_params()  # noise_aware and use_weight_decay false
    run_space, params, switched = sweep_config(space, base, "gamma", 0.5)
    assert run_space is space and switched == {"noise_aware": True}
    assert params == {**base, "noise_aware": True, "gamma": 0.5}
    # weight_decay switches use_weight_decay on, which activates decoupled_weight_decay (default)
    _, params, switched = sweep_config(space, base, "weight_decay", 0.01)
    assert switched == {"use_weight_decay": True}
    assert params["decoupled_weight_decay"] is False and params["weight_decay"] == 0.01
    # a switch swept off drops what it had activated
    _, params, _ = sweep_config(space, params, "use_weight_decay", False)
    assert "weight_decay" not in params and "decoupled_weight_decay" not in params
    # a fixed keyword: the params are kept, the space's fixed value is overridden
    run_space, params, switched = sweep_config(space, base, "eps", 1e-8)
    assert params == base and switched == {}
    assert run_space.to_hyperparameters(params)["eps"] == 1e-8
    assert space.to_hyperparameters(params)["eps"] == 1e-16


def test_progress_lines_name_sweep_runs_without_counting_them_as_confirm_runs(tmp_path):
    import io

    from studies.progress import Progress
    from studies.runner import Event

    spec = parse_spec(VALLEY)
    stream = io.StringIO()
    progress = Progress(
        spec, metric="function_value", direction="minimize", stream=stream, tty=False
    )
    progress(Event("adam", "confirm", "complete", 2.0, 0, 9, 0.1, run_id=1))
    progress(Event("adam", "sweep", "complete", 1.5, 0, 9, 0.1, run_id=2))
    assert progress.state["adam"].confirm == 1 and progress.state["adam"].search == 0
    assert "[sw] adam sweep seed 9 complete function_value=1.5" in stream.getvalue()
