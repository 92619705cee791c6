"""Learning-rate schedules searched with the optimizer: the spec's `schedule:` block, every
workload applying it through `lr_schedule`, the runs' lr curves, and the round trip through
`hvadam export` and `hvadam.load_schedule`."""

from __future__ import annotations

import math
from typing import Any

import optuna
import pytest
import torch
import yaml
from helpers import write_spec
from workload_files import write_tiny_cifar, write_tiny_ptb

import hvadam
from dashboards.export import export_configs
from hvadam.schedules import lr_lambda
from search_spaces import load_space
from search_spaces.schedule import with_schedule
from studies.results import ResultsDB, curves_frame, runs_frame
from studies.runner import RunnerConfig, run_campaign
from studies.spec import SpecError, load_spec, parse_spec
from studies.trial import record, run_trial
from studies.workloads import OptimizerFactory, get_workload, lr_schedule
from studies.workloads.user import function_workload_class


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---- every workload applies a searched schedule -----------------------------------------------

SCHEDULE = {"kind": "cosine", "warmup": 0.2, "min_lr_ratio": 0.1}
# name -> (options, optimizer steps per report, total steps of the schedule)
TINY: dict[str, tuple[dict[str, Any], int, int]] = {
    "valley2d": ({"steps": 30, "report_every": 10}, 10, 30),
    "noisy-quadratic": ({"dim": 8, "steps": 30, "report_every": 10}, 10, 30),
    "digits-mlp": ({"epochs": 3, "batch_size": 512, "hidden": 8}, 3, 9),
    "gpt-text": (
        {"n_layer": 1, "n_head": 2, "d_model": 16, "context": 16, "batch_size": 4,
         "steps": 12, "report_every": 4, "eval_batches": 1},
        4,
        12,
    ),
    "ddpm-digits": (
        {"width": 8, "batch_size": 8, "steps": 6, "report_every": 2, "warmup": 1,
         "timesteps": 50, "val_images": 16, "val_timesteps": 2},
        2,
        6,
    ),
    "gan-digits": (
        {"width": 4, "latent": 8, "batch_size": 8, "steps": 6, "report_every": 2,
         "fid_samples": 32, "fid_real": 64},
        2,
        6,
    ),
}  # fmt: skip


def _with_data(name: str, options: dict[str, Any], tmp_path) -> dict[str, Any]:
    if name == "gpt-text":
        root = tmp_path / "text"
        root.mkdir()
        for i in range(12):  # enough files for both the training and the validation split
            (root / f"doc{i}.txt").write_text(" ".join(["alpha beta gamma", str(i)] * 100))
        return {**options, "data_dir": str(root)}
    return options


def _lr_curve(name: str, options: dict[str, Any], schedule: Any) -> tuple[list[float], Any]:
    factory = OptimizerFactory(lambda p: torch.optim.SGD(p, lr=0.05), schedule)
    reports: list[Any] = []
    get_workload(name, **options).run(factory, seed=0, device="cpu", on_epoch=reports.append)
    return [r.metrics["lr"] for r in reports], factory


@pytest.mark.parametrize("name", sorted(TINY))
def test_every_workload_follows_a_searched_schedule(name, tmp_path):
    options, per_report, total = TINY[name]
    options = _with_data(name, options, tmp_path)
    curve, factory = _lr_curve(name, options, SCHEDULE)
    f = lr_lambda(SCHEDULE, total)
    assert factory.schedule_applied
    # the learning rate of each report's first step
    assert curve == pytest.approx([0.05 * f(i * per_report) for i in range(len(curve))])
    assert len(curve) == total // per_report


def test_cifar_and_ptb_replace_their_step_decay_with_the_searched_schedule(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", train=64, test=16)
    cifar = {"data_dir": str(tmp_path), "epochs": 3, "width": 0.125, "batch_size": 16}
    schedule = {"kind": "step", "gamma": 0.5, "every": 0.25}
    curve, _ = _lr_curve("cifar10-vgg11", cifar, schedule)
    f = lr_lambda(schedule, 12)  # 4 batches an epoch
    assert curve == pytest.approx([0.05 * f(0), 0.05 * f(4), 0.05 * f(8)])
    assert curve == pytest.approx([0.05, 0.025, 0.0125])
    builtin, _ = _lr_curve("cifar10-vgg11", {**cifar, "lr_milestones": [2]}, None)
    assert builtin == pytest.approx([0.05, 0.05, 0.005])  # its own MultiStepLR without one

    write_tiny_ptb(tmp_path, sentences=(100, 20, 20))
    ptb = {"data_dir": str(tmp_path), "epochs": 3, "emsize": 8, "nhid": 16, "bptt": 8,
           "batch_size": 4, "max_batches": 3, "variable_bptt": False}  # fmt: skip
    curve, _ = _lr_curve("ptb-lstm1", ptb, SCHEDULE)
    f = lr_lambda(SCHEDULE, 9)
    assert curve == pytest.approx([0.05 * f(0), 0.05 * f(3), 0.05 * f(6)])


def test_a_resumed_digits_run_continues_the_schedule(tmp_path):
    options, _, total = TINY["digits-mlp"]
    w = get_workload("digits-mlp", **options)
    factory = OptimizerFactory(lambda p: torch.optim.SGD(p, lr=0.05), SCHEDULE)
    states: list[Any] = []
    w.run(factory, seed=0, on_epoch=lambda r: states.append(r.state()))
    reports: list[Any] = []
    w.run(factory, seed=0, on_epoch=reports.append, resume=states[0])
    f = lr_lambda(SCHEDULE, total)
    assert [r.metrics["lr"] for r in reports] == pytest.approx([0.05 * f(3), 0.05 * f(6)])


def test_without_a_searched_schedule_the_helper_does_nothing():
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1)
    schedule = lr_schedule(lambda p: opt, opt, 10)  # a plain make_optimizer: no schedule
    assert not schedule.active
    schedule.step()
    assert opt.param_groups[0]["lr"] == 0.1


# ---- a workload that never applies it fails the run ---------------------------------------------


def _train_without_schedule(make_optimizer, *, seed, device, options, report):
    w = torch.nn.Parameter(torch.ones(1))
    opt = make_optimizer([w])
    for epoch in range(1, options["epochs"] + 1):
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
        report(epoch, float(w.item() ** 2))


def _train_with_schedule(make_optimizer, *, seed, device, options, report):
    w = torch.nn.Parameter(torch.ones(1))
    opt = make_optimizer([w])
    schedule = lr_schedule(make_optimizer, opt, options["epochs"])
    for epoch in range(1, options["epochs"] + 1):
        lr = opt.param_groups[0]["lr"]
        opt.zero_grad()
        (w**2).sum().backward()
        opt.step()
        schedule.step()
        report(epoch, float(w.item() ** 2), lr=lr)


@pytest.mark.parametrize("applies", [False, True])
def test_a_function_workload_must_apply_a_searched_schedule(tmp_path, applies):
    db = ResultsDB(f"sqlite:///{tmp_path / 'trial.db'}")
    db.create_tables()
    db.register_campaign(
        name="c", spec_hash="h", spec={}, workload="f", metric="loss", direction="minimize"
    )
    fn = _train_with_schedule if applies else _train_without_schedule
    workload = function_workload_class("tasks:train", fn)(
        "tasks:train", metric={"name": "loss", "direction": "minimize"}, epochs=4
    )
    space = with_schedule(load_space("sgd"), {"kind": "step", "gamma": 0.5, "every": 0.5})
    params = space.default_params()
    run_id = db.start_run(
        campaign="c",
        study="c/sgd",
        optimizer="sgd",
        trial_number=0,
        phase="search",
        seed=1,
        device="cpu",
        hyperparameters={},
    )
    outcome = run_trial(db, workload, space, params, run_id=run_id, seed=1, device="cpu")
    record(db, run_id, outcome)
    row = runs_frame(db.url, "c").iloc[-1]
    if not applies:
        assert outcome.status == "failed" and row["status"] == "failed"
        assert "never applied it: call studies.workloads.lr_schedule" in row["reason"]
        assert len(curves_frame(db.url, "c")) == 0  # refused at the first report
        return
    assert outcome.status == "complete"
    assert row["extras"]["schedule"] == {"kind": "step", "warmup": 0.0, "gamma": 0.5, "every": 0.5}
    lr = curves_frame(db.url, "c").query("metric == 'lr'").sort_values("epoch")["value"]
    assert lr.tolist() == pytest.approx([1e-3, 1e-3, 5e-4, 5e-4])  # sgd's default lr


# ---- the spec's schedule block ---------------------------------------------------------------

DIGITS = {
    "name": "sched",
    "workload": {"name": "digits-mlp", "options": {"epochs": 3, "batch_size": 512, "hidden": 8}},
    "optimizers": {"adam": {}, "sgd": {"schedule": {"kind": "step", "gamma": 0.5, "every": 0.5}}},
    "budget": {"trials": 4},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 1},
    "seed": 3,
    "device": "cpu",
    "schedule": True,
}


def test_specs_without_schedule_normalise_as_before_and_with_it_carry_it():
    plain = {k: v for k, v in DIGITS.items() if k != "schedule"}
    plain["optimizers"] = ["adam", "sgd"]
    assert "schedule" not in parse_spec(plain).normalized()
    assert all(e.load_space().to_schedule({}) is None for e in parse_spec(plain).optimizers)
    normalized = parse_spec(DIGITS).normalized()
    assert normalized["schedule"] is True
    assert normalized["optimizers"]["sgd"]["schedule"] == DIGITS["optimizers"]["sgd"]["schedule"]
    assert "schedule" not in normalized["optimizers"]["adam"]
    assert parse_spec(DIGITS).spec_hash != parse_spec({**DIGITS, "schedule": False}).spec_hash


@pytest.mark.parametrize(
    ("change", "key", "allowed"),
    [
        ({"schedule": {"warmup": [0, 1.5]}}, "schedule.warmup", "[0, 1)"),
        ({"schedule": {"kinds": ["cosine", "linear"]}}, "schedule.kinds", "constant, step, cosine"),
        ({"schedule": {"kinds": ["cosine"], "gamma": 0.5}}, "schedule.gamma", "only for 'step'"),
        ({"schedule": {"decay": 0.5}}, "schedule.decay", "allowed: kind, kinds, warmup"),
        ({"schedule": "cosine"}, "schedule", "must be true, search, false, or a mapping"),
        (
            {"optimizers": {"adam": {"schedule": {"min_lr_ratio": "low"}}}},
            "optimizers.adam.schedule.min_lr_ratio",
            "a number or a range [low, high]",
        ),
    ],
)
def test_a_bad_schedule_block_names_the_key(change, key, allowed):
    with pytest.raises(SpecError) as info:
        parse_spec({**DIGITS, **change})
    assert f": {key}: " in str(info.value)
    assert allowed in str(info.value)


def test_the_schedule_params_are_search_params_but_not_hyperparameters():
    spaces = parse_spec(DIGITS).load_spaces()
    adam, sgd = spaces["adam"], spaces["sgd"]
    assert {"schedule.kind", "schedule.warmup", "schedule.min_lr_ratio"} <= set(adam.params)
    assert adam.params["schedule.min_lr_ratio"].when == {"schedule.kind": ("cosine",)}
    assert adam.params["schedule.gamma"].when == {"schedule.kind": ("step",)}
    assert [n for n in sgd.params if n.startswith("schedule.")] == ["schedule.warmup"]
    params = {**adam.default_params(), "schedule.kind": "cosine", "schedule.min_lr_ratio": 0.1}
    assert adam.to_hyperparameters(params) == {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8}
    assert adam.to_schedule(params) == {"kind": "cosine", "warmup": 0.0, "min_lr_ratio": 0.1}
    assert sgd.to_schedule({"schedule.warmup": 0.05}) == {
        "kind": "step",
        "warmup": 0.05,
        "gamma": 0.5,
        "every": 0.5,
    }


# ---- a digits campaign with a searched schedule, exported and rebuilt -------------------------


@pytest.fixture(scope="module")
def campaign(tmp_path_factory) -> tuple[str, Any]:
    folder = tmp_path_factory.mktemp("sched")
    spec = load_spec(write_spec(folder, DIGITS))
    url = f"sqlite:///{folder / 'c.db'}"
    # A fixed worker index: the random sampler's trials (its seed includes the worker's index,
    # by default derived from the process id) are the same every run.
    run_campaign(spec, RunnerConfig(storage=url, threads=1, worker_index=0))
    return url, spec


def _steps_per_epoch(row: Any) -> int:
    return math.ceil(
        row["extras"]["split_sizes"]["train"] / DIGITS["workload"]["options"]["batch_size"]
    )


def test_the_campaigns_trials_search_the_schedule_and_the_runs_follow_it(campaign):
    url, spec = campaign
    spaces = spec.load_spaces()
    runs = runs_frame(url, "sched")
    curves = curves_frame(url, "sched")
    assert set(runs["status"]) == {"complete"} and len(runs) == 2 * (4 + 1)
    kinds = set()
    for label, space in spaces.items():
        study = optuna.load_study(study_name=f"sched/{label}", storage=url)
        trials = {t.number: t.params for t in study.trials}
        assert len(trials) == 4
        for params in trials.values():
            assert "schedule.warmup" in params
            if label == "adam":
                kind = params["schedule.kind"]
                kinds.add(kind)
                assert ("schedule.min_lr_ratio" in params) == (kind == "cosine")
                assert ("schedule.gamma" in params) == (kind == "step")
        for _, row in runs[runs["optimizer"] == label].iterrows():
            params = trials[int(row["trial_number"])]
            schedule = space.to_schedule(params)
            assert row["extras"]["schedule"] == schedule
            assert not any(k.startswith("schedule") for k in row["hyperparameters"])
            per_epoch = _steps_per_epoch(row)
            f = lr_lambda(schedule, 3 * per_epoch)
            lr = curves[(curves["run_id"] == row["run_id"]) & (curves["metric"] == "lr")]
            lr = lr.sort_values("epoch")["value"].tolist()
            base = row["hyperparameters"]["lr"]
            assert lr == pytest.approx([base * f(e * per_epoch) for e in range(3)])
    assert len(kinds) >= 2  # the default config's constant and at least one sampled kind


def test_export_writes_the_schedule_and_load_schedule_rebuilds_it(campaign, tmp_path):
    url, _ = campaign
    written = export_configs(url, "sched", output=tmp_path / "best")
    runs = runs_frame(url, "sched")
    for path in written:
        doc = yaml.safe_load(path.read_text())
        label = doc["optimizer"]
        confirm = runs[(runs["optimizer"] == label) & (runs["phase"] == "confirm")].iloc[0]
        assert doc["schedule"] == confirm["extras"]["schedule"]
        assert "hvadam.load_schedule" in path.read_text()
        total = 3 * _steps_per_epoch(confirm)
        model = torch.nn.Linear(64, 10)
        optimizer = hvadam.load_optimizer(model.parameters(), path)
        scheduler = hvadam.load_schedule(optimizer, path, total)
        expected = lr_lambda(confirm["extras"]["schedule"], total)
        base = doc["hyperparameters"]["lr"]
        for step in range(total):
            assert optimizer.param_groups[0]["lr"] == pytest.approx(base * expected(step))
            optimizer.step()
            scheduler.step()
        # and from the document as a mapping, the same multipliers
        again = hvadam.load_schedule(
            torch.optim.SGD(model.parameters(), lr=1.0), hvadam.load_config(path), total
        )
        assert [again.lr_lambdas[0](s) for s in range(total)] == [expected(s) for s in range(total)]
