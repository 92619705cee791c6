"""Learning-rate schedules: each kind's multiplier against its formula, warm-up, validation,
and `hvadam.load_schedule` from a config mapping and from a written file."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import hvadam
from hvadam.config import ConfigError, dump_config
from hvadam.schedules import ScheduleError, check_schedule, lr_lambda, warmup_steps

T = 100  # total steps of the runs below


def multipliers(schedule, total=T):
    f = lr_lambda(schedule, total)
    return [f(s) for s in range(total)]


def test_constant_is_one_at_every_step():
    assert multipliers({"kind": "constant"}) == [1.0] * T
    assert multipliers({}) == [1.0] * T  # the kind defaults to constant


@pytest.mark.parametrize("step", [0, 1, 37, 50, 99])
def test_cosine_follows_the_half_cosine_to_min_lr_ratio(step):
    f = lr_lambda({"kind": "cosine", "min_lr_ratio": 0.1}, T)
    expected = 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * step / T))
    assert f(step) == pytest.approx(expected, abs=1e-12)


def test_cosine_values_by_hand():
    f = lr_lambda({"kind": "cosine"}, 4)  # min_lr_ratio 0: 1, (1+cos(pi/4))/2, 1/2, ...
    assert [f(s) for s in range(4)] == pytest.approx(
        [1.0, (1 + math.sqrt(0.5)) / 2, 0.5, (1 - math.sqrt(0.5)) / 2]
    )


def test_step_decays_by_gamma_each_every_of_the_run():
    got = multipliers({"kind": "step", "gamma": 0.5, "every": 0.25})
    # progress s/100: decays at steps 25, 50 and 75
    expected = [0.5 ** (s // 25) for s in range(T)]
    assert got == pytest.approx(expected)
    assert got[24] == 1.0 and got[25] == 0.5 and got[75] == 0.125


def test_step_defaults_decay_once_at_half_by_ten():
    got = multipliers({"kind": "step"})
    assert got[49] == 1.0 and got[50] == pytest.approx(0.1) and got[99] == pytest.approx(0.1)


def test_warmup_is_linear_then_the_schedule_runs_over_the_remaining_steps():
    schedule = {"kind": "cosine", "warmup": 0.1, "min_lr_ratio": 0.0}
    got = multipliers(schedule)
    assert warmup_steps(schedule, T) == 10
    assert got[:10] == pytest.approx([(s + 1) / 10 for s in range(10)])
    for s in (10, 30, 55, 99):
        assert got[s] == pytest.approx(0.5 * (1 + math.cos(math.pi * (s - 10) / 90)))


def test_warmup_with_a_step_schedule_counts_progress_after_the_warmup():
    got = multipliers({"kind": "step", "warmup": 0.2, "gamma": 0.1, "every": 0.5})
    assert got[19] == 1.0 and got[20] == 1.0  # warm-up ends at 1, then the step phase begins
    assert got[59] == 1.0 and got[60] == pytest.approx(0.1)  # 20 + 0.5 * 80


def test_warmup_fraction_transfers_between_run_lengths():
    schedule = {"kind": "constant", "warmup": 0.05}
    assert warmup_steps(schedule, 1000) == 50 and warmup_steps(schedule, 40) == 2
    assert multipliers(schedule, 40)[:3] == [0.5, 1.0, 1.0]


def test_steps_past_the_end_keep_the_last_multiplier():
    f = lr_lambda({"kind": "cosine", "min_lr_ratio": 0.2}, 10)
    assert f(10) == f(9) == f(500)


@pytest.mark.parametrize(
    ("schedule", "field", "allowed"),
    [
        ({"kind": "linear"}, "schedule.kind", "constant, step, cosine"),
        ({"kind": "cosine", "warmup": 1.0}, "schedule.warmup", "[0, 1)"),
        ({"kind": "cosine", "warmup": "10%"}, "schedule.warmup", "[0, 1)"),
        ({"kind": "cosine", "min_lr_ratio": 1.5}, "schedule.min_lr_ratio", "[0, 1]"),
        ({"kind": "step", "gamma": 0}, "schedule.gamma", "(0, 1]"),
        ({"kind": "step", "every": 2}, "schedule.every", "(0, 1]"),
        ({"kind": "constant", "gamma": 0.5}, "schedule.gamma", "allowed: kind, warmup"),
        ({"kind": "cosine", "every": 0.5}, "schedule.every", "min_lr_ratio"),
    ],
)
def test_bad_schedules_name_the_field_and_what_is_allowed(schedule, field, allowed):
    with pytest.raises(ScheduleError) as info:
        lr_lambda(schedule, T)
    assert str(info.value).startswith(f"{field}:")
    assert allowed in str(info.value)


def test_bad_total_steps_and_non_mappings_are_refused():
    with pytest.raises(ScheduleError, match="total_steps: must be an integer >= 1"):
        lr_lambda({"kind": "constant"}, 0)
    with pytest.raises(ScheduleError, match="schedule: must be a mapping"):
        check_schedule("cosine")


def test_check_schedule_fills_in_the_defaults():
    assert check_schedule({"kind": "step"}) == {
        "kind": "step",
        "warmup": 0.0,
        "gamma": 0.1,
        "every": 0.5,
    }


CONFIG = {
    "optimizer": "adam",
    "hyperparameters": {"lr": 0.01},
    "schedule": {"kind": "cosine", "warmup": 0.1, "min_lr_ratio": 0.2},
}


def learning_rates(scheduler, optimizer, steps):
    rates = []
    for _ in range(steps):
        rates.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    return rates


def test_load_schedule_from_a_mapping_steps_the_optimizers_learning_rate():
    model = nn.Linear(2, 1)
    opt = hvadam.load_optimizer(model.parameters(), CONFIG)
    scheduler = hvadam.load_schedule(opt, CONFIG, 20)
    assert isinstance(scheduler, torch.optim.lr_scheduler.LambdaLR)
    f = lr_lambda(CONFIG["schedule"], 20)
    assert learning_rates(scheduler, opt, 20) == pytest.approx([0.01 * f(s) for s in range(20)])


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_load_schedule_from_a_written_config_file(tmp_path, suffix):
    path = tmp_path / f"best{suffix}"
    dump_config(CONFIG, path)
    assert hvadam.load_config(path)["schedule"] == {
        "kind": "cosine",
        "warmup": 0.1,
        "min_lr_ratio": 0.2,
    }
    model = nn.Linear(2, 1)
    opt = hvadam.load_optimizer(model.parameters(), path)
    rates = learning_rates(hvadam.load_schedule(opt, path, 10), opt, 10)
    assert rates[0] == pytest.approx(0.01)  # warm-up of round(0.1 * 10) = 1 step: 1/1
    assert rates[1] == pytest.approx(0.01)  # cosine starts at 1
    assert rates[9] == pytest.approx(0.01 * (0.2 + 0.8 * 0.5 * (1 + math.cos(math.pi * 8 / 9))))


def test_a_config_without_schedule_gives_a_constant_one():
    model = nn.Linear(2, 1)
    config = {"optimizer": "sgd", "hyperparameters": {"lr": 0.1}}
    opt = hvadam.load_optimizer(model.parameters(), config)
    assert learning_rates(hvadam.load_schedule(opt, config, 5), opt, 5) == [0.1] * 5


def test_a_config_with_a_bad_schedule_names_the_key(tmp_path):
    bad = {**CONFIG, "schedule": {"kind": "cosine", "min_lr_ratio": -1}}
    with pytest.raises(ConfigError, match=r"schedule\.min_lr_ratio: must be a number in \[0, 1\]"):
        hvadam.load_config(bad)
    with pytest.raises(ConfigError, match=r"bad\.yaml: key schedule\.kind"):
        dump_config({**CONFIG, "schedule": {"kind": "exp"}}, tmp_path / "bad.yaml")
