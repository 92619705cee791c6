"""Optimizer config files: YAML/JSON round trips, building optimizers from them, clear errors."""

from __future__ import annotations

import json

import pytest
import torch
import yaml
from torch import nn

import hvadam
from hvadam.config import FORMAT, ConfigError, dump_config, load_config, load_optimizer

CONFIG = {
    "format": FORMAT,
    "optimizer": "anon",
    "hyperparameters": {"lr": 0.003, "betas": (0.8, 0.99), "adaptivity": 1.5, "refresh": "every"},
    "workload": {"name": "digits-mlp", "options": {"hidden": 64}},
    "metric": {"name": "val_accuracy", "direction": "maximize", "mean": 0.97, "std": 0.004},
    "provenance": {"campaign": "c1", "study": "c1/anon", "trial": 12},
}


@pytest.mark.parametrize("suffix", [".yaml", ".yml", ".json"])
def test_config_round_trips_through_files(tmp_path, suffix):
    path = tmp_path / f"best{suffix}"
    dump_config(CONFIG, path)
    loaded = load_config(path)
    expected = dict(CONFIG, hyperparameters={**CONFIG["hyperparameters"], "betas": [0.8, 0.99]})
    assert loaded == expected
    # and the second trip is a fixed point
    again = tmp_path / f"again{suffix}"
    dump_config(loaded, again)
    assert load_config(again) == loaded


def test_tuples_are_written_as_lists(tmp_path):
    dump_config(CONFIG, tmp_path / "c.yaml")
    dump_config(CONFIG, tmp_path / "c.json")
    from_yaml = yaml.safe_load((tmp_path / "c.yaml").read_text())
    from_json = json.loads((tmp_path / "c.json").read_text())
    assert from_yaml["hyperparameters"]["betas"] == [0.8, 0.99]
    assert from_json == from_yaml


@pytest.mark.parametrize("suffix", [".yaml", ".json"])
def test_optimizer_built_from_a_file_has_the_files_hyperparameters(tmp_path, suffix):
    path = tmp_path / f"best{suffix}"
    dump_config(CONFIG, path)
    model = nn.Linear(3, 2)
    opt = load_optimizer(model.parameters(), path)
    assert type(opt).__name__ == "Anon"
    group = opt.param_groups[0]
    for key, value in CONFIG["hyperparameters"].items():
        assert group[key] == value, key
    assert group["betas"] == (0.8, 0.99)  # a tuple again
    assert group["eps"] == 1e-16  # unspecified values are the defaults


def test_package_level_load_optimizer_accepts_a_dict_without_format():
    opt = hvadam.load_optimizer(
        [nn.Parameter(torch.zeros(2))],
        {"optimizer": "SGD", "hyperparameters": {"lr": 0.1, "momentum": 0.9, "nesterov": True}},
    )
    assert type(opt) is torch.optim.SGD
    assert opt.param_groups[0]["nesterov"] is True
    assert opt.param_groups[0]["momentum"] == 0.9


def test_empty_hyperparameters_mean_defaults(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("optimizer: adam\nhyperparameters:\n")
    opt = load_optimizer([nn.Parameter(torch.zeros(2))], path)
    assert opt.param_groups[0]["lr"] == 1e-3


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"hyperparameters": {}}, "missing required key 'optimizer'"),
        ({"optimizer": "adam"}, "missing required key 'hyperparameters'"),
        (
            {"format": "hvadam-config/2", "optimizer": "adam", "hyperparameters": {}},
            "key 'format' must be 'hvadam-config/1'",
        ),
        ({"optimizer": "adamm", "hyperparameters": {}}, "unknown optimizer 'adamm'"),
        ({"optimizer": 3, "hyperparameters": {}}, "key 'optimizer' must be a name"),
        ({"optimizer": "adam", "hyperparameters": [0.1]}, "key 'hyperparameters' must map"),
        ({"optimizer": "adam", "hyperparameters": {"momentum": 0.9}}, "'momentum'"),
        ({"optimizer": "adam", "hyperparameters": {}, "hyperparamters": {}}, "unknown key(s)"),
        ({"optimizer": "adam", "hyperparameters": {}, "metric": 0.9}, "key 'metric' must be"),
    ],
)
def test_invalid_configs_name_the_file_and_the_key(tmp_path, document, message):
    with pytest.raises(ConfigError) as info:
        load_config(document)
    assert message in str(info.value)
    path = tmp_path / "bad.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError) as info:
        load_optimizer([nn.Parameter(torch.zeros(2))], path)
    assert str(path) in str(info.value) and message in str(info.value)


def test_unreadable_files_raise_config_errors(tmp_path):
    broken = tmp_path / "broken.yaml"
    broken.write_text("optimizer: [adam\n")
    with pytest.raises(ConfigError, match=r"broken\.yaml: not valid YAML"):
        load_config(broken)
    broken_json = tmp_path / "broken.json"
    broken_json.write_text("{")
    with pytest.raises(ConfigError, match=r"broken\.json: not valid JSON"):
        load_config(broken_json)
    with pytest.raises(ConfigError, match=r"missing\.yaml: cannot read"):
        load_config(tmp_path / "missing.yaml")
    with pytest.raises(ConfigError, match=r"unknown config file type '\.toml'"):
        load_config(tmp_path / "c.toml")
    with pytest.raises(ConfigError, match=r"unknown config file type '\.txt'"):
        dump_config(CONFIG, tmp_path / "c.txt")
    with pytest.raises(ConfigError, match="a config must be a mapping"):
        broken.write_text("- adam\n")
        load_config(broken)
