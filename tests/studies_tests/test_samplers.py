"""The samplers and pruners table (studies/samplers.py): spec validation and the factories."""

from __future__ import annotations

import optuna
import pytest

from search_spaces import load_space
from studies.samplers import SAMPLERS, grid_space, make_sampler
from studies.spec import SpecError, parse_spec

BASE = {
    "name": "s",
    "workload": {"name": "valley2d", "options": {"steps": 20, "report_every": 5}},
    "optimizers": ["sgd"],
    "budget": {"trials": 2},
}


def test_grid_points_are_a_spec_setting_and_the_default_keeps_the_hash():
    plain = parse_spec({**BASE, "sampler": "grid"})
    same = parse_spec({**BASE, "sampler": {"name": "grid", "points": 3}})
    five = parse_spec({**BASE, "sampler": {"name": "grid", "points": 5}})
    assert plain.spec_hash == same.spec_hash != five.spec_hash
    assert five.normalized()["sampler"] == {"name": "grid", "points": 5}
    space = load_space("sgd")
    sampler = make_sampler(five.sampler, space, 0, five.sampler_options)
    assert isinstance(sampler, optuna.samplers.GridSampler)
    lr = grid_space(space, 5)["lr"]
    assert len(lr) == 5 and lr == sorted(lr)


@pytest.mark.parametrize(
    ("sampler", "needle"),
    [
        ({"name": "grid", "points": 1}, "sampler.points: must be an integer >= 2, got 1"),
        ({"name": "tpe", "points": 4}, "sampler.points: unknown option of the tpe sampler"),
        ({"name": "qmc", "qmc_type": "lhs"}, "sampler.qmc_type: must be one of sobol, halton"),
        ("sobol", "unknown sampler 'sobol'; allowed: tpe, random, cmaes, gp, grid, qmc"),
    ],
)
def test_bad_sampler_settings_name_the_key_and_what_is_allowed(sampler, needle):
    with pytest.raises(SpecError, match="sampler") as info:
        parse_spec({**BASE, "sampler": sampler})
    assert needle in str(info.value)


def test_qmc_sampler_draws_quasi_random_points_reproducibly():
    spec = parse_spec({**BASE, "sampler": "qmc"})
    assert "qmc" in SAMPLERS and spec.sampler == "qmc"
    space = load_space("sgd")

    def draws(seed: int) -> list[float]:
        study = optuna.create_study(sampler=make_sampler("qmc", space, seed))
        study.optimize(lambda t: space.suggest(t)["lr"], n_trials=4)
        return [t.params["lr"] for t in study.trials]

    assert draws(3) == draws(3) and len(set(draws(3))) == 4


def test_first_line_of_a_remote_error_is_its_first_line():
    from studies.ray_backend.driver import _first_line

    error = RuntimeError("\n  ValueError: the cause\n  traceback line\nlast line\n")
    assert _first_line(error).strip() == "ValueError: the cause"
    assert _first_line(RuntimeError("")) == "RuntimeError"
