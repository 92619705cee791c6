"""Tuning-cost analyses: budget curves (against brute force), their bootstrap band, time-to-target
and best-so-far from a hand-written SQLite campaign, the spec's `target:` key and the CLI output."""

from __future__ import annotations

import csv
import io
import itertools
import json
import math

import numpy as np
import pandas as pd
import pytest

from studies.cli import main
from studies.results import (
    ResultsDB,
    best_so_far_frame,
    bootstrap_band,
    budget_curve_frame,
    expected_best_curve,
    time_to_target_frame,
)
from studies.spec import SpecError, parse_spec

# ---- the closed form ----------------------------------------------------------------------


def brute_force(values, direction):
    """The mean best over every size-k subset, k = 1..n (itertools.combinations)."""
    best = min if direction == "minimize" else max
    n = len(values)
    return [
        float(np.mean([best(c) for c in itertools.combinations(values, k)]))
        for k in range(1, n + 1)
    ]


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 11])
def test_expected_best_equals_the_mean_over_all_subsets(n, direction):
    rng = np.random.default_rng(n)
    values = rng.normal(size=n).tolist()
    assert np.allclose(expected_best_curve(values, direction), brute_force(values, direction))


@pytest.mark.parametrize("direction", ["minimize", "maximize"])
def test_expected_best_with_ties_equals_brute_force(direction):
    values = [0.3, 0.1, 0.3, 0.7, 0.1, 0.1, 0.5, 0.3, 0.7]
    got = expected_best_curve(values, direction)
    assert np.allclose(got, brute_force(values, direction))
    # by hand for k = 2 (minimize): 1 - P(no 0.1 in the pair) ... spelled out as a check
    if direction == "minimize":
        pairs = list(itertools.combinations(values, 2))
        assert math.isclose(got[1], sum(min(p) for p in pairs) / len(pairs))


def test_expected_best_by_hand_for_three_values():
    # minimize over {3, 1, 2}: k=1 the mean 2; k=2 pairs (3,1)->1 (3,2)->2 (1,2)->1: 4/3; k=3: 1
    assert np.allclose(expected_best_curve([3.0, 1.0, 2.0], "minimize"), [2.0, 4 / 3, 1.0])
    assert np.allclose(expected_best_curve([3.0, 1.0, 2.0], "maximize"), [2.0, 8 / 3, 3.0])


def test_expected_best_is_stable_for_thousands_of_values():
    rng = np.random.default_rng(0)
    values = rng.normal(size=3000)
    curve = expected_best_curve(values, "minimize")
    assert np.all(np.isfinite(curve))
    assert math.isclose(curve[0], values.mean(), rel_tol=0, abs_tol=1e-9)
    assert math.isclose(curve[-1], values.min(), rel_tol=0, abs_tol=1e-9)
    assert np.all(np.diff(curve) <= 1e-12)  # more trials never hurt
    # E_k of n i.i.d. normals, checked against a sampled estimate at k = 10
    subsets = np.array([rng.choice(values, 10, replace=False).min() for _ in range(20000)])
    assert abs(subsets.mean() - curve[9]) < 4 * subsets.std() / math.sqrt(len(subsets))


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="direction must be 'minimize' or 'maximize'"):
        expected_best_curve([1.0], "lower")
    with pytest.raises(ValueError, match="finite"):
        expected_best_curve([1.0, math.nan], "minimize")
    assert expected_best_curve([], "minimize").size == 0


# ---- the bootstrap band -------------------------------------------------------------------


def test_band_contains_the_curve_and_is_reproducible():
    rng = np.random.default_rng(3)
    values = rng.lognormal(size=40)
    for direction in ("minimize", "maximize"):
        curve = expected_best_curve(values, direction)
        lower, upper = bootstrap_band(values, direction)
        assert lower.shape == upper.shape == curve.shape
        assert np.all(lower <= curve) and np.all(curve <= upper)
        assert np.all(upper - lower > 0)
        again = bootstrap_band(values, direction)
        assert np.array_equal(lower, again[0]) and np.array_equal(upper, again[1])
        other = bootstrap_band(values, direction, seed=1)
        assert not np.array_equal(lower, other[0])
    # at k = n (minimize) the best of a resample is never better than the best value
    lower, upper = bootstrap_band(values, "minimize")
    assert lower[-1] == values.min() and upper[-1] > values.min()


def test_band_of_identical_values_is_that_value():
    lower, upper = bootstrap_band([2.5] * 7, "minimize")
    assert np.allclose(lower, 2.5) and np.allclose(upper, 2.5)


def test_band_of_a_500_trial_campaign_is_fast():
    import time

    values = np.random.default_rng(0).normal(size=500)
    t = time.perf_counter()
    bootstrap_band(values, "minimize")
    assert time.perf_counter() - t < 2.0


# ---- a hand-written campaign --------------------------------------------------------------


def write_campaign(url, name="hand", *, direction="minimize", metric="val_loss", target=None):
    """Runs in this start order (run ids 1..6), with wall times and curves chosen by hand:

    adam  #1 complete 0.5, 10 s, curve 0.9 0.7 0.6 0.5
    sgd   #2 failed, no wall time, no curve
    adam  #3 pruned, 4 s, curve 0.8 0.45 0.5 (3 epochs)
    sgd   #4 complete 0.2, 6 s, no curve (time-to-target falls back to the final value)
    adam  #5 complete 0.3, 8 s, curve 0.6 0.4 0.35 0.3
    adam  confirm run 0.1 with a curve (never part of a tuning analysis)
    """
    sign = 1.0 if direction == "minimize" else -1.0
    db = ResultsDB(url)
    db.create_tables()
    spec = {"name": name, "optimizers": {"adam": {}, "sgd": {}}}
    if target is not None:
        spec["target"] = {"value": target}
    db.register_campaign(
        name=name, spec_hash=name, spec=spec, workload="digits-mlp", metric=metric,
        direction=direction,
    )  # fmt: skip

    def run(opt, trial, status, value, wall, curve, phase="search"):
        run_id = db.start_run(
            campaign=name, study=f"{name}/{opt}", optimizer=opt, trial_number=trial,
            phase=phase, seed=trial, device="cpu", hyperparameters={"lr": 0.1},
        )  # fmt: skip
        db.add_curves(run_id, [(e, metric, sign * v) for e, v in enumerate(curve, start=1)])
        db.add_curves(run_id, [(e, "train_loss", 0.0) for e in range(1, len(curve) + 1)])
        db.finish_run(
            run_id, status=status, wall_time=wall, value=None if value is None else sign * value
        )
        return run_id

    run("adam", 0, "complete", 0.5, 10.0, [0.9, 0.7, 0.6, 0.5])
    run("sgd", 0, "failed", None, None, [])
    run("adam", 1, "pruned", None, 4.0, [0.8, 0.45, 0.5])
    run("sgd", 1, "complete", 0.2, 6.0, [])
    run("adam", 2, "complete", 0.3, 8.0, [0.6, 0.4, 0.35, 0.3])
    run("adam", 2, "complete", 0.1, 8.0, [0.1, 0.1], phase="confirm")
    return url


@pytest.fixture
def hand(sqlite_url):
    return write_campaign(sqlite_url, target=0.45)


def test_budget_curve_frame_is_over_complete_search_trials(hand):
    frame = budget_curve_frame(hand, "hand")
    adam = frame[frame["optimizer"] == "adam"]
    assert adam["k"].tolist() == [1, 2]
    assert np.allclose(adam["expected_best"], [0.4, 0.3])  # mean of 0.5 and 0.3, then the best
    assert (adam[["n_complete", "n_pruned", "n_failed"]].to_numpy() == [2, 1, 0]).all()
    sgd = frame[frame["optimizer"] == "sgd"]
    assert sgd["expected_best"].tolist() == [0.2]
    assert (sgd[["n_complete", "n_pruned", "n_failed"]].to_numpy() == [1, 0, 1]).all()
    assert (frame["lower"] <= frame["expected_best"]).all()
    assert (frame["expected_best"] <= frame["upper"]).all()


def test_time_to_target_against_the_hand_computed_curves(hand):
    frame = time_to_target_frame(hand, "hand").set_index("optimizer")  # the spec's 0.45
    adam, sgd = frame.loc["adam"], frame.loc["sgd"]
    # adam: trial 1 never reaches 0.45 (10 s); trial 2 reaches it at epoch 2 of 3: 4 s x 2/3
    assert adam["reached"] and adam["trials"] == 2 and adam["epoch"] == 2
    assert math.isclose(adam["seconds"], 10 + 4 * 2 / 3)
    assert adam["run_id"] == 3 and adam["trial_number"] == 1
    # sgd: a failed trial first (no wall time: 0 s), then a trial without a curve whose final
    # value 0.2 reaches the target at its end
    assert sgd["reached"] and sgd["trials"] == 2 and math.isclose(sgd["seconds"], 6.0)
    assert pd.isna(sgd["epoch"])

    frame = time_to_target_frame(hand, "hand", target=0.32).set_index("optimizer")
    assert frame.loc["adam", "trials"] == 3 and frame.loc["adam", "epoch"] == 4
    assert math.isclose(frame.loc["adam", "seconds"], 10 + 4 + 8)

    frame = time_to_target_frame(hand, "hand", target=0.35).set_index("optimizer")
    assert math.isclose(frame.loc["adam", "seconds"], 10 + 4 + 8 * 3 / 4)

    # the confirm run's 0.1 does not count: nobody reaches 0.1 in search
    frame = time_to_target_frame(hand, "hand", target=0.1).set_index("optimizer")
    assert not frame["reached"].any()
    assert frame["seconds"].isna().all() and frame["trials"].isna().all()
    assert frame.loc["adam", "total_seconds"] == 22.0 and frame.loc["adam", "total_trials"] == 3
    assert frame.loc["sgd", "total_seconds"] == 6.0 and frame.loc["sgd", "total_trials"] == 2


def test_time_to_target_when_maximizing(sqlite_url):
    write_campaign(sqlite_url, "up", direction="maximize", metric="accuracy", target=-0.45)
    frame = time_to_target_frame(sqlite_url, "up").set_index("optimizer")
    assert math.isclose(frame.loc["adam", "seconds"], 10 + 4 * 2 / 3)
    assert math.isclose(frame.loc["sgd", "seconds"], 6.0)
    frame = time_to_target_frame(sqlite_url, "up", target=-0.32).set_index("optimizer")
    assert math.isclose(frame.loc["adam", "seconds"], 22.0)


def test_time_to_target_needs_a_target(sqlite_url):
    write_campaign(sqlite_url, "none")
    with pytest.raises(ValueError, match="no target"):
        time_to_target_frame(sqlite_url, "none")
    with pytest.raises(KeyError, match="'nope'"):
        time_to_target_frame(sqlite_url, "nope", target=1.0)


def test_best_so_far_against_cumulative_compute(hand):
    frame = best_so_far_frame(hand, "hand")
    adam = frame[frame["optimizer"] == "adam"]
    assert adam["trial"].tolist() == [1, 2, 3]
    assert adam["seconds"].tolist() == [10.0, 14.0, 22.0]
    assert adam["best_so_far"].tolist() == [0.5, 0.5, 0.3]
    assert adam["status"].tolist() == ["complete", "pruned", "complete"]
    sgd = frame[frame["optimizer"] == "sgd"]
    assert sgd["seconds"].tolist() == [0.0, 6.0]
    assert math.isnan(sgd["best_so_far"].iloc[0]) and sgd["best_so_far"].iloc[1] == 0.2


# ---- the spec's target ----------------------------------------------------------------------

BASE = {
    "name": "camp",
    "workload": {"name": "valley2d", "options": {"steps": 40, "report_every": 10}},
    "optimizers": ["adam", "hvadam"],
    "budget": {"trials": 4},
}


def test_target_is_parsed_and_normalized_only_when_given():
    plain = parse_spec(dict(BASE))
    assert plain.target is None and "target" not in plain.normalized()
    spec = parse_spec({**BASE, "target": {"value": 2}})
    assert spec.target == 2.0 and isinstance(spec.target, float)
    assert spec.normalized()["target"] == {"value": 2.0}
    assert spec.spec_hash != plain.spec_hash
    assert parse_spec(spec.normalized()).spec_hash == spec.spec_hash


@pytest.mark.parametrize(
    ("target", "needle"),
    [
        (0.5, "target: must be a mapping like {value: 0.1}, got 0.5"),
        (None, "target: must be a mapping"),
        ({}, "target.value: missing"),
        ({"value": 1, "seconds": 3}, "target.seconds: unknown key; allowed: value"),
        ({"value": "low"}, "target.value: must be a finite number, got 'low'"),
        ({"value": True}, "target.value: must be a finite number, got True"),
        ({"value": math.inf}, "target.value: must be a finite number, got inf"),
        ({"value": math.nan}, "target.value: must be a finite number, got nan"),
    ],
)
def test_a_bad_target_names_the_key_and_what_is_allowed(target, needle):
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, "target": target})
    assert needle in str(err.value)


# ---- the command line -----------------------------------------------------------------------


def test_compare_budget_curve_as_csv_and_json(hand, capsys):
    assert main(["compare", "hand", "--storage", hand, "--budget-curve", "--format", "csv"]) == 0
    rows = list(csv.DictReader(io.StringIO(capsys.readouterr().out)))
    assert list(rows[0]) == ["optimizer", "k", "expected_best", "lower", "upper"]
    assert [(r["optimizer"], int(r["k"])) for r in rows] == [("adam", 1), ("adam", 2), ("sgd", 1)]
    assert math.isclose(float(rows[0]["expected_best"]), 0.4)
    assert float(rows[0]["lower"]) <= 0.4 <= float(rows[0]["upper"])

    assert main(["compare", "hand", "--storage", hand, "--budget-curve", "--format", "json"]) == 0
    records = json.loads(capsys.readouterr().out)
    assert [set(r) for r in records] == [{"optimizer", "k", "expected_best", "lower", "upper"}] * 3
    assert records[1]["k"] == 2 and math.isclose(records[1]["expected_best"], 0.3)
    assert records[2] == {"optimizer": "sgd", "k": 1, "expected_best": 0.2, "lower": 0.2,
                          "upper": 0.2}  # fmt: skip

    assert main(["compare", "hand", "--storage", hand, "--budget-curve"]) == 0
    out = capsys.readouterr().out
    assert "90% band" in out and "[0.3, 0.5]" in out


def test_compare_gains_time_to_target_columns(hand, capsys):
    assert main(["compare", "hand", "--storage", hand]) == 0  # the spec's target 0.45
    out = capsys.readouterr().out
    assert "s to target" in out and "trials to target" in out
    adam = next(line for line in out.splitlines() if " adam " in line)
    assert "12.7" in adam
    assert "val_loss <= 0.45" in out

    assert main(["compare", "hand", "--storage", hand, "--target", "0.1", "--format", "csv"]) == 0
    rows = {r["optimizer"]: r for r in csv.DictReader(io.StringIO(capsys.readouterr().out))}
    assert rows["adam"]["target_reached"] == "False" and rows["adam"]["target_seconds"] == ""
    assert main(["compare", "hand", "--storage", hand, "--target", "0.32", "--format", "json"]) == 0
    records = {r["optimizer"]: r for r in json.loads(capsys.readouterr().out)}
    assert records["adam"]["target_seconds"] == 22.0 and records["adam"]["target_trials"] == 3
    assert records["sgd"]["target_seconds"] == 6.0 and records["sgd"]["target"] == 0.32


def test_compare_without_a_target_is_unchanged_and_bad_targets_are_refused(sqlite_url, capsys):
    write_campaign(sqlite_url, "plain")
    assert main(["compare", "plain", "--storage", sqlite_url]) == 0
    assert "to target" not in capsys.readouterr().out
    assert main(["compare", "plain", "--storage", sqlite_url, "--target", "nan"]) == 2
    assert "--target must be a finite number" in capsys.readouterr().err


def test_a_campaign_without_a_complete_search_trial(sqlite_url):
    db = ResultsDB(sqlite_url)
    db.create_tables()
    db.register_campaign(
        name="bare", spec_hash="bare", spec={"optimizers": {"adam": {}}}, workload="digits-mlp",
        metric="val_loss", direction="minimize",
    )  # fmt: skip
    for status in ("failed", None):  # a failed trial, and one still running
        run_id = db.start_run(
            campaign="bare", study="bare/adam", optimizer="adam", trial_number=0,
            phase="search", seed=0, device="cpu", hyperparameters={},
        )  # fmt: skip
        if status:
            db.finish_run(run_id, status=status, wall_time=3.0, reason="boom")
    curves = budget_curve_frame(sqlite_url, "bare")
    assert curves.empty and list(curves.columns)[:5] == ["optimizer", "k", "expected_best",
                                                         "lower", "upper"]  # fmt: skip
    reach = time_to_target_frame(sqlite_url, "bare", target=1.0)
    assert reach["reached"].tolist() == [False] and reach["total_trials"].tolist() == [1]
    assert reach["total_seconds"].tolist() == [3.0]  # the running trial is not counted
    best = best_so_far_frame(sqlite_url, "bare")
    assert best["seconds"].tolist() == [3.0] and best["best_so_far"].isna().all()
