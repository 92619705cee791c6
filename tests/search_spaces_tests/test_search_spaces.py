"""Tests for search_spaces: the shipped files, the schema's validation, Optuna and Ray Tune views."""

from __future__ import annotations

import inspect
import math
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import pytest
import torch
from helpers import missing_component

from hvadam.registry import (
    available_optimizers,
    create_optimizer,
    optimizer_class,
    optimizer_defaults,
)
from search_spaces import SearchSpace, SpaceError, available_spaces, load_space

optuna.logging.set_verbosity(optuna.logging.WARNING)

# Every registered optimizer ships a space: a new baseline without one fails here.
SHIPPED = available_optimizers()

# The published defaults (docs/algorithms.md, docs/architecture.md), checked against the
# classes of the project's own optimizers.
HVADAM_DEFAULTS = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-16,
    "gamma": 0.0,
    "adaptivity": 1.0,
    "restart_threshold": 0.1,
    "hv_step_range": (1e-3, 1e3),
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "amsgrad": False,
    "maximize": False,
}
ANON_DEFAULTS = {
    "lr": 1e-3,
    "betas": (0.9, 0.999),
    "eps": 1e-16,
    "adaptivity": 0.0,
    "idu_beta": 0.5,
    "refresh": "doubling",
    "weight_decay": 0.0,
    "decoupled_weight_decay": False,
    "maximize": False,
}


def signature_defaults(cls: type) -> dict[str, Any]:
    return {
        name: p.default
        for name, p in inspect.signature(cls.__init__).parameters.items()
        if p.default is not inspect.Parameter.empty
    }


def reference_defaults(name: str) -> dict[str, Any]:
    """The optimizer's own defaults, read from its constructor's signature."""
    found = signature_defaults(optimizer_class(name))
    published = {"hvadam": HVADAM_DEFAULTS, "anon": ANON_DEFAULTS}.get(name)
    if published is not None:
        assert {k: found[k] for k in published} == published
    return found


def as_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def write(tmp_path: Path, text: str, name: str = "space.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


# A user's file exercising every kind of parameter.
ALL_KINDS = """
optimizer: myopt
description: every kind of parameter
params:
  lr: {kind: float, low: 1e-5, high: 1e-1, log: true, default: 1e-3}
  momentum: {kind: float, low: 0.0, high: 0.9, step: 0.05, default: 0.5}
  warmup: {kind: int, low: 0, high: 100, step: 10, default: 0}
  layers: {kind: int, low: 1, high: 8, default: 2}
  width: {kind: int, low: 16, high: 1024, log: true, default: 64}
  mode: {kind: categorical, choices: [a, b, null, 3, 2.5], default: a}
  use_clip: {kind: categorical, choices: [false, true], default: false, search_only: true}
  clip: {kind: float, low: 0.1, high: 10.0, log: true, when: {use_clip: true}}
  clip_mode: {kind: categorical, choices: [norm, value], default: norm, when: {use_clip: true}}
  clip_power: {kind: int, low: 1, high: 3, when: {clip_mode: [value], use_clip: true}}
  shape.0: {kind: int, low: 1, high: 4, default: 1}
fixed:
  eps: 1e-8
  shape.1: 7
  names: [x, y]
"""


# ------------------------------------------------------------------------------------------
# The shipped files


def test_available_spaces_are_the_shipped_files() -> None:
    assert sorted(available_spaces()) == sorted(SHIPPED)


@pytest.mark.parametrize("name", SHIPPED)
def test_shipped_space_loads_and_names_its_optimizer(name: str) -> None:
    space = load_space(name)
    assert isinstance(space, SearchSpace)
    assert space.optimizer == name
    assert space.params["lr"].log
    assert space.source == f"{name}.yaml"


def test_hvadam_space_searches_its_own_hyperparameters() -> None:
    space = load_space("hvadam")
    names = set(space.params)
    assert {
        "lr",
        "betas.0",
        "betas.1",
        "gamma",
        "adaptivity",
        "restart_threshold",
        "hv_step_range.0",
        "hv_step_range.1",
        "weight_decay",
        "decoupled_weight_decay",
    } <= names
    assert space.params["hv_step_range.0"].log and space.params["hv_step_range.1"].log
    assert space.params["adaptivity"].low == -0.5 and space.params["adaptivity"].high == 1.5
    # gamma = 0 stays reachable: it is the value when the noise-aware switch is off.
    assert space.params["gamma"].when == {"noise_aware": (True,)}
    off = space.to_hyperparameters({**space.default_params(), "noise_aware": False})
    assert "gamma" not in off  # the optimizer's default, 0.0, applies
    assert space.params["decoupled_weight_decay"].choices == (False, True)


def test_anon_space_searches_adaptivity_idu_and_refresh() -> None:
    space = load_space("anon")
    assert space.params["adaptivity"].low <= -0.5 and space.params["adaptivity"].high >= 2.0
    assert space.params["refresh"].choices == ("doubling", "every")
    assert "idu_beta" in space.params


def test_importing_the_package_loads_neither_optuna_nor_ray_nor_the_registry() -> None:
    code = (
        "import sys, search_spaces\n"
        "search_spaces.load_space('hvadam').default_params()\n"
        "heavy = [m for m in ('optuna', 'ray', 'torch', 'hvadam.registry') if m in sys.modules]\n"
        "print(','.join(heavy))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    assert out.stdout.strip() == ""


# ------------------------------------------------------------------------------------------
# Defaults


@pytest.mark.parametrize("name", SHIPPED)
def test_default_params_are_inside_the_space_and_map_to_the_optimizer_defaults(name: str) -> None:
    space = load_space(name)
    defaults = space.default_params()
    assert list(defaults) == space.active(defaults)
    for param, value in defaults.items():
        assert space.params[param].contains(value), (param, value)
    reference = reference_defaults(name)
    hp = space.to_hyperparameters(defaults)
    for keyword, value in hp.items():
        assert keyword in reference, f"{name}: {keyword} is not a constructor argument"
        assert as_tuple(reference[keyword]) == value, (name, keyword)
    # A keyword the space can produce but leaves out by default (a switch is off) must be one
    # whose constructor default is "off": 0 for a weight decay or gamma, or the declared default.
    for keyword in space.hyperparameter_names() - set(hp):
        assert keyword in reference, f"{name}: {keyword} is not a constructor argument"
        declared = [
            s.default for s in space.params.values() if s.keyword == keyword and s.has_default
        ]
        expected = declared[0] if declared else 0.0
        assert reference[keyword] == expected, (name, keyword)


def test_declared_defaults_of_inactive_conditional_params_are_optimizer_defaults() -> None:
    space = load_space("hvadam")
    assert space.params["decoupled_weight_decay"].default is False
    assert "decoupled_weight_decay" not in space.default_params()


# ------------------------------------------------------------------------------------------
# Optuna and Ray Tune from the same definition


def ray_converter():
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:
        missing_component(f"ray[tune] is not installed: {exc}")
    return OptunaSearch.convert_search_space


@pytest.mark.parametrize("name", [*SHIPPED, "user-file"])
def test_optuna_distributions_equal_the_ray_param_space(name: str, tmp_path: Path) -> None:
    space = load_space(write(tmp_path, ALL_KINDS) if name == "user-file" else name)
    convert = ray_converter()
    distributions = space.distributions()
    # Ray's own Ray->Optuna conversion of every sampling object gives our distributions.
    flat = space.ray_param_space(conditional="flatten")
    assert list(flat) == list(distributions)
    assert convert(flat) == distributions
    # In the default mode a conditional parameter is a sample_from around the same domain.
    exact = space.ray_param_space()
    for param, value in exact.items():
        domain = value.func.domain if param in space.conditional else value
        assert convert({param: domain}) == {param: distributions[param]}, param
    assert space.conditional == {n for n, s in space.params.items() if s.when}


def test_distributions_without_conditional_params_are_the_unconditional_view() -> None:
    space = load_space("hvadam")
    unconditional = space.distributions(include_conditional=False)
    assert set(unconditional) == set(space.params) - {
        "gamma",
        "weight_decay",
        "decoupled_weight_decay",
    }
    dist = unconditional["lr"]
    assert isinstance(dist, optuna.distributions.FloatDistribution)
    assert (dist.low, dist.high, dist.log) == (1e-5, 1.0, True)


def test_user_file_distributions_have_steps_logs_and_choices(tmp_path: Path) -> None:
    d = load_space(write(tmp_path, ALL_KINDS)).distributions()
    assert d["momentum"] == optuna.distributions.FloatDistribution(0.0, 0.9, step=0.05)
    assert d["warmup"] == optuna.distributions.IntDistribution(0, 100, step=10)
    assert d["layers"] == optuna.distributions.IntDistribution(1, 8)
    assert d["width"] == optuna.distributions.IntDistribution(16, 1024, log=True)
    assert d["mode"] == optuna.distributions.CategoricalDistribution(["a", "b", None, 3, 2.5])


# ------------------------------------------------------------------------------------------
# suggest() with real studies


def check_trial_params(space: SearchSpace, params: dict[str, Any]) -> None:
    assert list(params) == space.active(params)
    for name, value in params.items():
        assert space.params[name].contains(value), (name, value)


def run_study(space: SearchSpace, study: optuna.Study, n: int) -> list[dict[str, Any]]:
    study.enqueue_trial(space.default_params())
    seen = []

    def objective(trial: optuna.Trial) -> float:
        params = space.suggest(trial)
        assert params == trial.params
        hp = space.to_hyperparameters(params)
        seen.append(params)
        return math.log10(hp["lr"]) ** 2

    study.optimize(objective, n_trials=n)
    return seen


def test_suggest_in_memory_samples_in_range_and_honours_conditions() -> None:
    space = load_space("hvadam")
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=3))
    seen = run_study(space, study, 40)
    assert seen[0] == space.default_params()
    for params in seen:
        check_trial_params(space, params)
        assert ("gamma" in params) == params["noise_aware"]
        assert ("weight_decay" in params) == params["use_weight_decay"]
        assert ("decoupled_weight_decay" in params) == params["use_weight_decay"]
    assert {p["noise_aware"] for p in seen} == {False, True}
    assert {p["use_weight_decay"] for p in seen} == {False, True}


def test_suggest_with_a_sqlite_study_round_trips_through_the_storage(
    sqlite_url: str, tmp_path: Path
) -> None:
    space = load_space(write(tmp_path, ALL_KINDS))
    study = optuna.create_study(
        storage=sqlite_url, study_name="s", sampler=optuna.samplers.TPESampler(seed=1)
    )
    seen = run_study(space, study, 10)
    reloaded = optuna.load_study(study_name="s", storage=sqlite_url)
    stored = [t.params for t in reloaded.trials]
    assert stored == seen
    for params in stored:
        check_trial_params(space, params)
        assert ("clip" in params) == params["use_clip"]
        assert ("clip_power" in params) == (
            params["use_clip"] and params.get("clip_mode") == "value"
        )
    assert {p["use_clip"] for p in stored} == {False, True}
    for trial in reloaded.trials:
        for name, dist in trial.distributions.items():
            assert dist == space.params[name].distribution()


def test_suggest_works_as_a_ray_optunasearch_define_by_run_space() -> None:
    try:
        from ray.tune.search.optuna import OptunaSearch
    except ImportError as exc:
        missing_component(f"ray[tune] is not installed: {exc}")
    space = load_space("hvadam")
    searcher = OptunaSearch(
        space=space.suggest,
        metric="loss",
        mode="min",
        sampler=optuna.samplers.RandomSampler(seed=5),
    )
    configs = [searcher.suggest(f"t{i}") for i in range(20)]
    for config in configs:
        check_trial_params(space, config)
        hp = space.to_hyperparameters(config)
        assert ("gamma" in hp) == config["noise_aware"]
        assert isinstance(hp["betas"], tuple) and len(hp["betas"]) == 2
    assert {c["noise_aware"] for c in configs} == {False, True}


def test_ray_sample_from_honours_conditions_in_random_search() -> None:
    try:
        from ray.tune.search.variant_generator import generate_variants
    except ImportError as exc:
        missing_component(f"ray[tune] is not installed: {exc}")
    space = load_space("hvadam")
    nested = {"optimizer": space.ray_param_space(prefix=("optimizer",)), "other": 1}
    seen = []
    for i in range(20):
        # Ray's trial generator resolves {"config": param_space}; both layouts must work.
        _, spec = next(generate_variants({"config": space.ray_param_space()}, random_state=i))
        seen.append(spec["config"])
        _, spec = next(generate_variants({"config": nested}, random_state=i))
        seen.append(spec["config"]["optimizer"])
    for config in seen:
        if config["noise_aware"]:
            assert space.params["gamma"].contains(config["gamma"])
        else:
            assert config["gamma"] is None
        assert (config["weight_decay"] is None) == (not config["use_weight_decay"])
        hp = space.to_hyperparameters(config)
        assert ("gamma" in hp) == config["noise_aware"]
        for name in space.active(config):
            assert space.params[name].contains(config[name]), name
    assert {c["noise_aware"] for c in seen} == {False, True}


def test_ray_param_space_rejects_an_unknown_conditional_mode() -> None:
    with pytest.raises(ValueError, match="sample_from, flatten"):
        load_space("hvadam").ray_param_space(conditional="drop")


# ------------------------------------------------------------------------------------------
# to_hyperparameters


def test_to_hyperparameters_builds_tuples_drops_inactive_and_adds_fixed() -> None:
    space = load_space("hvadam")
    params = {
        **space.default_params(),
        "betas.0": 0.8,
        "betas.1": 0.99,
        "hv_step_range.0": 1e-4,
        "hv_step_range.1": 1e4,
        "gamma": 0.5,  # inactive: noise_aware is False
        "use_weight_decay": True,
        "weight_decay": 1e-3,
        "decoupled_weight_decay": True,
    }
    hp = space.to_hyperparameters(params)
    assert hp == {
        "lr": 1e-3,
        "betas": (0.8, 0.99),
        "adaptivity": 1.0,
        "restart_threshold": 0.1,
        "hv_step_range": (1e-4, 1e4),
        "weight_decay": 1e-3,
        "decoupled_weight_decay": True,
        "eps": 1e-16,
    }


def test_to_hyperparameters_assembles_a_tuple_from_searched_and_fixed_elements(
    tmp_path: Path,
) -> None:
    space = load_space(write(tmp_path, ALL_KINDS))
    params = {**space.default_params(), "shape.0": 3}
    hp = space.to_hyperparameters(params)
    assert hp["shape"] == (3, 7)
    assert hp["names"] == ("x", "y")
    assert "use_clip" not in hp and "clip" not in hp


def test_to_hyperparameters_turns_numpy_scalars_into_python_numbers() -> None:
    space = load_space("sgd")
    hp = space.to_hyperparameters(
        {"lr": np.float64(0.1), "momentum": np.float64(0.9), "use_weight_decay": np.bool_(False)}
    )
    assert hp == {"lr": 0.1, "momentum": 0.9, "dampening": 0.0, "nesterov": False}
    assert type(hp["lr"]) is float


def test_to_hyperparameters_rejects_unknown_and_missing_params() -> None:
    space = load_space("hvadam")
    with pytest.raises(SpaceError, match=r"'eps'.*fixed in this space"):
        space.to_hyperparameters({**space.default_params(), "eps": 1e-8})
    params = space.default_params()
    params["noise_aware"] = True
    with pytest.raises(SpaceError, match=r"'gamma'.*active but has no value"):
        space.to_hyperparameters(params)


# ------------------------------------------------------------------------------------------
# Overrides and user files


def test_override_merges_a_partial_spec() -> None:
    space = load_space("hvadam", overrides={"lr": {"low": 1e-4, "high": 1e-1}})
    lr = space.params["lr"]
    assert (lr.low, lr.high, lr.log, lr.default) == (1e-4, 1e-1, True, 1e-3)
    assert list(space.params) == list(load_space("hvadam").params)
    assert space.source == "hvadam.yaml (with overrides)"


def test_override_with_a_value_fixes_it_and_drops_the_unused_switch() -> None:
    space = load_space("hvadam", overrides={"gamma": 0.0})
    assert "gamma" not in space.params and "noise_aware" not in space.params
    assert space.fixed["gamma"] == 0.0
    assert space.to_hyperparameters(space.default_params())["gamma"] == 0.0


def test_override_fixing_a_switch_makes_its_dependents_unconditional() -> None:
    space = load_space("hvadam", overrides={"noise_aware": True, "gamma": {"default": 0.1}})
    assert "noise_aware" not in space.params and "noise_aware" not in space.fixed
    assert not space.params["gamma"].when
    hp = space.to_hyperparameters(space.default_params())
    assert hp["gamma"] == 0.1 and "noise_aware" not in hp
    # Switched off for good: the dependents disappear.
    off = load_space("hvadam", overrides={"use_weight_decay": False})
    assert not {"use_weight_decay", "weight_decay", "decoupled_weight_decay"} & set(off.params)


def test_override_with_another_kind_replaces_the_spec_and_a_new_name_is_appended() -> None:
    space = load_space(
        "hvadam",
        overrides={
            "adaptivity": {"kind": "categorical", "choices": [0.0, 0.5, 1.0], "default": 1.0},
            "amsgrad": {"kind": "categorical", "choices": [False, True], "default": False},
        },
    )
    assert space.params["adaptivity"].choices == (0.0, 0.5, 1.0)
    assert list(space.params)[-1] == "amsgrad"
    assert space.to_hyperparameters(space.default_params())["amsgrad"] is False


def test_override_errors_name_the_override_parameter_and_problem() -> None:
    with pytest.raises(SpaceError) as info:
        load_space("hvadam", overrides={"lr": {"low": 1e-2}})
    err = info.value
    assert err.source == "hvadam.yaml (with overrides)" and err.param == "lr"
    assert "default 0.001 is outside" in err.problem
    with pytest.raises(SpaceError, match=r"'lr'.*low .* must be below high"):
        load_space("adam", overrides={"lr": {"low": 1.0}})
    with pytest.raises(SpaceError, match=r"'new'.*unknown kind"):
        load_space("adam", overrides={"new": {"low": 1.0}})


def test_user_file_loads_by_path_and_reads_exponents_as_floats(tmp_path: Path) -> None:
    path = write(tmp_path, ALL_KINDS)
    for arg in (path, str(path)):
        space = load_space(arg)
        assert space.optimizer == "myopt"
        assert space.params["lr"].low == 1e-5 and isinstance(space.params["lr"].low, float)
        assert space.fixed["eps"] == 1e-8
        assert space.source == str(path)
    defaults = load_space(path).default_params()
    assert defaults == {
        "lr": 1e-3,
        "momentum": 0.5,
        "warmup": 0,
        "layers": 2,
        "width": 64,
        "mode": "a",
        "use_clip": False,
        "shape.0": 1,
    }


def test_unknown_space_name_lists_the_shipped_ones() -> None:
    with pytest.raises(SpaceError, match=r"unknown search space; shipped spaces: .*hvadam"):
        load_space("hvadamm")
    with pytest.raises(SpaceError, match="no such file"):
        load_space("/nonexistent/space.yaml")


# ------------------------------------------------------------------------------------------
# Validation errors: each names the file, the parameter and the problem

HEAD = "optimizer: x\nparams:\n"
INVALID = [
    ("  a: {kind: beta, low: 0, high: 1}\n", "a", "unknown kind 'beta'"),
    ("  a: {low: 0, high: 1}\n", "a", "unknown kind None"),
    ("  a: {kind: float, low: 1.0, high: 1.0, default: 1.0}\n", "a", "must be below high"),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, log: true, default: 0.5}\n",
        "a",
        "log scale needs low > 0",
    ),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, step: 0.3, default: 0.3}\n",
        "a",
        "does not divide the range",
    ),
    (
        "  a: {kind: float, low: 0.1, high: 0.7, step: 0.2, default: 0.3}\n",
        "a",
        "must be a multiple of step",
    ),
    ("  a: {kind: int, low: 1, high: 9, step: 3, default: 3}\n", "a", "does not divide"),
    (
        "  a: {kind: float, low: 0.1, high: 1.0, log: true, step: 0.1, default: 0.5}\n",
        "a",
        "cannot have a step",
    ),
    ("  a: {kind: float, low: 0.0, high: 1.0, default: 2.0}\n", "a", "default 2.0 is outside"),
    ("  a: {kind: categorical, choices: [x, y], default: z}\n", "a", "default 'z' is outside"),
    ("  a: {kind: float, low: 0.0, high: 1.0}\n", "a", "needs a `default`"),
    ("  a: {kind: int, low: 0.5, high: 3, default: 1}\n", "a", "low must be an integer"),
    ("  a: {kind: float, low: x, high: 1.0, default: 0.5}\n", "a", "low must be a number"),
    ("  a: {kind: float, high: 1.0, default: 0.5}\n", "a", "float needs `low`"),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5, scale: log}\n",
        "a",
        "unknown key(s) 'scale'",
    ),
    ("  a: {kind: categorical, choices: [x], low: 0, default: x}\n", "a", "unknown key(s) 'low'"),
    ("  a: {kind: categorical, choices: [], default: x}\n", "a", "non-empty list"),
    ("  a: {kind: categorical, choices: [x, x], default: x}\n", "a", "listed twice"),
    ("  a: {kind: categorical, choices: [{k: v}], default: x}\n", "a", "is not a str, int"),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5, when: {b: x}}\n",
        "a",
        "condition on unknown parameter 'b'",
    ),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5, when: {b: x}}\n"
        "  b: {kind: categorical, choices: [x, y], default: x}\n",
        "a",
        "condition on later parameter 'b'",
    ),
    (
        "  b: {kind: float, low: 0.0, high: 1.0, default: 0.5}\n"
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5, when: {b: 0.5}}\n",
        "a",
        "condition on float parameter 'b'",
    ),
    (
        "  b: {kind: categorical, choices: [x, y], default: x}\n"
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5, when: {b: [y, z]}}\n",
        "a",
        "condition value 'z' is not a value of 'b'",
    ),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5, when: {a: 1}}\n",
        "a",
        "condition on the parameter itself",
    ),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5}\n"
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5}\n",
        "a",
        "duplicate name",
    ),
    ("  a-b: {kind: float, low: 0.0, high: 1.0, default: 0.5}\n", "a-b", "invalid parameter name"),
    (
        "  betas.1: {kind: float, low: 0.9, high: 0.99, default: 0.9}\n",
        "betas.1",
        "has no element 0",
    ),
    (
        "  betas.0: {kind: float, low: 0.5, high: 0.99, default: 0.9}\n"
        "  betas.1: {kind: float, low: 0.9, high: 0.99, default: 0.9}\n"
        "fixed:\n  betas: [0.9, 0.999]\n",
        "betas.0",
        "also given whole",
    ),
    (
        "  s: {kind: categorical, choices: [false, true], default: false, search_only: true}\n"
        "  betas.0: {kind: float, low: 0.5, high: 0.99, when: {s: true}}\n"
        "  betas.1: {kind: float, low: 0.9, high: 0.99, default: 0.9}\n",
        "betas.0",
        "must share one condition",
    ),
    (
        "  s: {kind: categorical, choices: [false, true], default: false, search_only: true}\n",
        "s",
        "no `when` condition refers to",
    ),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5}\nfixed:\n  a: 0.5\n",
        "a",
        "both under `params` and under `fixed`",
    ),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5}\nfixed:\n  eps: {x: 1}\n",
        "eps",
        "a fixed value must be",
    ),
    (
        "  a: {kind: float, low: 0.0, high: 1.0, default: 0.5, when: {f: 1}}\nfixed:\n  f: 2\n",
        "a",
        "can never hold",
    ),
    ("  a: 0.5\n", "a", "must be a mapping with a `kind`"),
]


@pytest.mark.parametrize(("body", "param", "problem"), INVALID)
def test_invalid_file_error_names_file_parameter_and_problem(
    tmp_path: Path, body: str, param: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(HEAD + body)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    err = info.value
    assert isinstance(err, ValueError)
    assert (err.source, err.param) == (str(path), param)
    assert problem in err.problem
    assert str(path) in str(err) and repr(param) in str(err) and problem in str(err)


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("params: {}\n", "`optimizer` must name an optimizer"),
        ("optimizer: x\nsearch: {}\n", "unknown top-level key 'search'"),
        ("- a\n- b\n", "must be a mapping at top level"),
        ("optimizer: x\nparams: [a]\n", "`params` must be a mapping"),
        ("optimizer: x\nparams: {a: [\n", "not valid YAML"),
    ],
)
def test_invalid_file_structure_error_names_file_and_problem(
    tmp_path: Path, text: str, problem: str
) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SpaceError) as info:
        load_space(path)
    assert info.value.source == str(path) and info.value.param is None
    assert problem in str(info.value)


# ------------------------------------------------------------------------------------------
# Against the optimizer registry


@pytest.mark.parametrize("name", SHIPPED)
def test_registry_accepts_every_shipped_space(name: str) -> None:
    space = load_space(name)
    registered = optimizer_defaults(name)
    unknown = space.hyperparameter_names() - set(registered)
    assert not unknown, f"{name}: the registry does not accept {sorted(unknown)}"
    for spec in space.params.values():
        if spec.search_only or not spec.has_default:
            continue
        value = as_tuple(registered[spec.keyword])
        if spec.index is not None:
            value = value[spec.index]
        assert value == spec.default, (name, spec.name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    study.enqueue_trial(space.default_params())
    for _ in range(6):
        trial = study.ask()
        hp = space.to_hyperparameters(space.suggest(trial))
        weights = torch.nn.Parameter(torch.ones(3))
        optimizer = create_optimizer(name, [weights], **hp)
        weights.grad = torch.full((3,), 0.5)
        optimizer.step()
        assert torch.isfinite(weights).all()
        study.tell(trial, 0.0)


# ------------------------------------------------------------------------------------------
# Odds and ends


def test_documented_example_file_is_valid(tmp_path: Path) -> None:
    doc = (Path(__file__).resolve().parents[2] / "docs" / "search_spaces.md").read_text()
    example = doc.split("```yaml\n", 1)[1].split("```", 1)[0]
    space = load_space(write(tmp_path, example))
    assert space.params["gamma"].when == {"noise_aware": (True,)}
    assert space.to_hyperparameters(space.default_params())["betas"] == (0.9, 0.999)


def test_space_and_its_ray_param_space_survive_pickling() -> None:
    import pickle

    space = load_space("hvadam")
    copy = pickle.loads(pickle.dumps(space))
    assert copy.default_params() == space.default_params()
    assert dict(copy.fixed) == dict(space.fixed)
    try:
        param_space = space.ray_param_space()
    except ImportError as exc:
        missing_component(f"ray[tune] is not installed: {exc}")
    restored = pickle.loads(pickle.dumps(param_space))
    assert restored["gamma"].func({"noise_aware": False}) is None
    assert space.params["gamma"].contains(restored["gamma"].func({"noise_aware": True}))
