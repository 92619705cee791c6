"""Campaign specs: shipped specs, the normalised form and its hash, and every validation error."""

from __future__ import annotations

import copy
from pathlib import Path

import pytest
import yaml

from studies.spec import SpecError, available_specs, load_spec, parse_spec

BASE = {
    "name": "camp",
    "workload": {"name": "valley2d", "options": {"steps": 40, "report_every": 10}},
    "optimizers": ["adam", "hvadam"],
    "budget": {"trials": 4},
}


def spec_with(**changes):
    data = copy.deepcopy(BASE)
    for key, value in changes.items():
        if value is None:
            data.pop(key, None)
        else:
            data[key] = value
    return data


def test_the_five_specs_ship_and_parse():
    assert set(available_specs()) >= {
        "valley2d",
        "digits",
        "noisy-quadratic",
        "cifar10-resnet34",
        "ptb-lstm2",
    }
    for name in available_specs():
        spec = load_spec(name, check=False)
        assert spec.name == name
        assert {"hvadam", "anon"} <= set(spec.labels)
        assert spec.trials >= 1 and spec.confirm_seeds >= 1


@pytest.mark.parametrize("name", ["valley2d", "digits", "noisy-quadratic"])
def test_cpu_specs_pass_the_full_check(name):
    spec = load_spec(name)
    workload = spec.build_workload()
    assert workload.name == spec.workload
    assert set(spec.load_spaces()) == set(spec.labels)


def test_defaults_are_filled_in_and_list_and_mapping_forms_hash_alike():
    a = parse_spec(spec_with())
    b = parse_spec(spec_with(optimizers={"adam": None, "hvadam": {}}, description="other words"))
    assert a.normalized() == b.normalized()
    assert a.spec_hash == b.spec_hash and len(a.spec_hash) == 16
    n = a.normalized()
    assert n["sampler"] == "tpe" and n["pruner"] == "median"
    assert n["confirm"] == {"seeds": 3} and n["seed"] == 0 and n["device"] == "auto"
    assert n["workload"] == {"name": "valley2d", "options": {"steps": 40, "report_every": 10}}
    assert a.study_name("adam") == "camp/adam"


def test_any_change_to_what_runs_changes_the_hash():
    base = parse_spec(spec_with()).spec_hash
    changed = [
        spec_with(budget={"trials": 5}),
        spec_with(seed=1),
        spec_with(sampler="random"),
        spec_with(optimizers={"adam": {"lr": {"low": 1e-4, "high": 1e-2}}, "hvadam": {}}),
        spec_with(workload={"name": "valley2d", "options": {"steps": 50, "report_every": 10}}),
    ]
    hashes = {parse_spec(d).spec_hash for d in changed}
    assert base not in hashes and len(hashes) == len(changed)


def test_workload_options_may_be_given_flat_or_nested():
    flat = parse_spec(spec_with(workload={"name": "valley2d", "steps": 40, "report_every": 10}))
    assert flat.spec_hash == parse_spec(spec_with()).spec_hash
    assert parse_spec(spec_with(workload="valley2d")).workload_options == {}


@pytest.mark.parametrize(
    ("changes", "needle"),
    [
        ({"budgets": {"trials": 3}}, "budgets: unknown key; allowed: name, description, workload"),
        ({"budget": None}, "budget: missing (required: name, workload, optimizers, budget)"),
        ({"name": "a/b"}, "name: must be a string of letters"),
        ({"name": 3}, "name: must be a string"),
        ({"workload": "imagenet-vit"}, "workload.name: unknown workload 'imagenet-vit'; known:"),
        ({"workload": ["valley2d"]}, "workload: must be a workload name or a mapping"),
        ({"workload": {"steps": 3}}, "workload.name: missing"),
        ({"optimizers": ["adam", "adamx"]}, "optimizers.adamx: unknown optimizer 'adamx'; known:"),
        ({"optimizers": []}, "optimizers: must be a non-empty list"),
        ({"optimizers": ["adam", "adam"]}, "optimizers: lists an optimizer twice"),
        ({"optimizers": {"adam": [1, 2]}}, "optimizers.adam: must be a mapping of search-space"),
        ({"budget": {"trials": 0}}, "budget.trials: must be an integer >= 1, got 0"),
        ({"budget": {"trials": "ten"}}, "budget.trials: must be an integer >= 1, got 'ten'"),
        ({"budget": {"trials": True}}, "budget.trials: must be an integer >= 1"),
        ({"budget": {"max_epochs": 3}}, "budget.trials: missing"),
        (
            {"budget": {"trials": 3, "hours": 2}},
            "budget.hours: unknown key; allowed: trials, seconds, max_epochs",
        ),
        ({"budget": 10}, "budget: must be a mapping like {trials: 20}"),
        ({"budget": {"trials": 3, "max_epochs": -1}}, "budget.max_epochs: must be an integer >= 1"),
        (
            {"sampler": "bayes"},
            "sampler: unknown sampler 'bayes'; allowed: tpe, random, cmaes, gp, grid",
        ),
        ({"pruner": "asha"}, "pruner: unknown pruner 'asha'; allowed: hyperband, median, none"),
        ({"confirm": {"seeds": -1}}, "confirm.seeds: must be an integer in [0, 1000]"),
        ({"confirm": {"runs": 3}}, "confirm.runs: unknown key; allowed: seeds"),
        ({"seed": "zero"}, "seed: must be an integer in [0, 2**31)"),
        ({"device": "tpu"}, "device: must be one of auto, cpu, cuda, cuda:N, mps"),
    ],
)
def test_malformed_spec_names_the_key_and_what_is_allowed(changes, needle):
    with pytest.raises(SpecError) as info:
        parse_spec(spec_with(**changes), source="my.yaml")
    assert needle in str(info.value)
    assert str(info.value).startswith("spec my.yaml: ")


def test_a_spec_that_is_not_a_mapping_is_refused():
    with pytest.raises(SpecError, match="must be a mapping with keys name, workload"):
        parse_spec(["name", "x"])


def test_bad_space_override_and_bad_workload_option_fail_the_check(tmp_path):
    bad_space = parse_spec(spec_with(optimizers={"adam": {"no_such_param": {"low": 1}}}))
    with pytest.raises(SpecError, match=r"optimizers\.adam: .*no_such_param"):
        bad_space.check()
    bad_option = parse_spec(spec_with(workload={"name": "valley2d", "options": {"stepz": 3}}))
    with pytest.raises(SpecError, match=r"workload\.options: .*'stepz'"):
        bad_option.check()


def test_max_epochs_limits_epochs_or_steps():
    steps = parse_spec(spec_with(budget={"trials": 2, "max_epochs": 3}))
    assert steps.resolved_workload_options()["steps"] == 30  # 3 reports of 10 steps
    assert steps.build_workload().max_epochs == 3
    digits = parse_spec(
        spec_with(workload={"name": "digits-mlp"}, budget={"trials": 2, "max_epochs": 2})
    )
    assert digits.build_workload().max_epochs == 2


def test_env_references_expand_at_run_time_but_not_in_the_hash(monkeypatch):
    data = spec_with(workload={"name": "cifar10-resnet34", "options": {"data_dir": "${MY_DATA}/c"}})
    spec = parse_spec(data)
    monkeypatch.delenv("MY_DATA", raising=False)
    with pytest.raises(SpecError, match=r"workload.options.data_dir uses \$\{MY_DATA\}"):
        spec.resolved_workload_options()
    monkeypatch.setenv("MY_DATA", "/mnt/a")
    assert spec.resolved_workload_options()["data_dir"] == "/mnt/a/c"
    assert spec.normalized()["workload"]["options"]["data_dir"] == "${MY_DATA}/c"


def test_load_spec_takes_a_path_with_a_user_space_file_beside_it(tmp_path: Path):
    space = yaml.safe_load(
        (Path(__file__).resolve().parents[2] / "search_spaces/spaces/adam.yaml").read_text()
    )
    (tmp_path / "my_adam.yaml").write_text(yaml.safe_dump(space))
    data = spec_with(optimizers={"adam-mine": {"space": "my_adam.yaml"}, "hvadam": {}})
    (tmp_path / "camp.yaml").write_text(yaml.safe_dump(data))
    spec = load_spec(tmp_path / "camp.yaml")
    assert spec.labels == ["adam-mine", "hvadam"]
    assert spec.load_spaces()["adam-mine"].optimizer == "adam"
    # the hash covers the path as written, so a copy elsewhere hashes the same
    assert spec.normalized()["optimizers"]["adam-mine"] == {"space": "my_adam.yaml"}


def test_unknown_spec_name_lists_the_shipped_ones():
    with pytest.raises(SpecError, match=r"no campaign spec 'nope'.*shipped: .*digits"):
        load_spec("nope")


def test_invalid_yaml_is_a_spec_error(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match="not valid YAML"):
        load_spec(path)
