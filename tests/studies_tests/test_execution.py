"""Execution settings in specs (resources, concurrency, Ray scheduler) and the checkpoint hook."""

from __future__ import annotations

import math

import pytest
import torch

from studies.execution import Execution, parse_execution
from studies.spec import SpecError, parse_spec
from studies.workloads import get_workload
from studies.workloads._base import restore_optimizer

BASE = {
    "name": "ex",
    "workload": {"name": "valley2d", "options": {"steps": 20, "report_every": 5}},
    "optimizers": ["adam"],
    "budget": {"trials": 3},
}


def test_execution_keys_are_parsed_with_defaults():
    spec = parse_spec(
        {
            **BASE,
            "resources": {"cpus": 2, "gpus": 0.25},
            "max_concurrent": 4,
            "ray": {"scheduler": "pbt", "perturbation_interval": 3},
        }
    )
    assert spec.execution == Execution(
        cpus=2.0, gpus=0.25, max_concurrent=4, scheduler="pbt", perturbation_interval=3
    )
    assert parse_spec(BASE).execution == Execution()
    assert Execution().scheduler is None and Execution().gpus == 0.0


def test_pruner_none_means_fifo_unless_a_scheduler_is_named():
    # The Ray backend stops trials early only when the spec's pruner allows it (or when the
    # spec or --scheduler names a scheduler): `pruner: none` must not bring ASHA back.
    assert Execution().for_pruner("none").scheduler == "fifo"
    assert Execution().for_pruner("median").scheduler == "asha"
    assert Execution().for_pruner("hyperband").scheduler == "asha"
    named = parse_execution({"ray": {"scheduler": "asha", "grace_period": 2}})
    assert named.for_pruner("none") == named
    from_cli = Execution().with_changes(scheduler="pbt")
    assert from_cli.for_pruner("none").scheduler == "pbt"
    assert parse_execution({"ray": {"grace_period": 2}}).scheduler is None
    with pytest.raises(ValueError, match=r"ray\.scheduler: unknown scheduler None"):
        parse_execution({"ray": {"scheduler": None}})


def test_execution_keys_are_not_part_of_the_spec_hash():
    plain = parse_spec(BASE)
    placed = parse_spec({**BASE, "resources": {"gpus": 1}, "max_concurrent": 8})
    assert plain.spec_hash == placed.spec_hash
    assert "resources" not in placed.normalized()


@pytest.mark.parametrize(
    ("changes", "key"),
    [
        ({"resources": {"gpu": 1}}, "resources.gpu"),
        ({"resources": {"cpus": 0}}, "resources.cpus"),
        ({"resources": {"gpus": 1.5}}, "resources.gpus"),
        ({"resources": {"gpus": -0.5}}, "resources.gpus"),
        ({"resources": [1, 2]}, "resources"),
        ({"max_concurrent": 0}, "max_concurrent"),
        ({"max_concurrent": True}, "max_concurrent"),
        ({"ray": {"scheduler": "hyperband"}}, "ray.scheduler"),
        ({"ray": {"reduction_factor": 1}}, "ray.reduction_factor"),
        ({"ray": {"quantile_fraction": 0.9}}, "ray.quantile_fraction"),
        ({"ray": {"population": 4}}, "ray.population"),
    ],
)
def test_bad_execution_keys_name_the_key(changes, key):
    with pytest.raises(SpecError, match=rf"spec <dict>: {key}: "):
        parse_spec({**BASE, **changes})


def test_whole_gpus_and_fractions_are_allowed():
    assert parse_execution({"resources": {"gpus": 2}}).gpus == 2.0
    assert parse_execution({"resources": {"gpus": 0.5}}).gpus == 0.5


def test_command_line_overrides_keep_unset_fields():
    base = parse_execution({"resources": {"cpus": 3}, "ray": {"scheduler": "pbt"}})
    changed = base.with_changes(max_concurrent=2, scheduler=None, gpus=0.5)
    assert changed == Execution(cpus=3.0, gpus=0.5, max_concurrent=2, scheduler="pbt")
    with pytest.raises(ValueError, match="max_concurrent"):
        base.with_changes(max_concurrent=0)


# ---- the workload checkpoint hook -----------------------------------------------------------


def adam(lr: float):
    return lambda params: torch.optim.Adam(params, lr=lr)


def test_digits_resumed_from_a_saved_epoch_equals_the_uninterrupted_run():
    torch.set_num_threads(1)
    workload = get_workload("digits-mlp", epochs=4, hidden=16, batch_size=64)
    assert workload.supports_checkpoints
    full = []
    result = workload.run(adam(3e-3), seed=7, on_epoch=lambda r: full.append(r.value))

    saved = {}

    def keep(rep):
        if rep.epoch == 2:
            import copy

            saved.update(copy.deepcopy(rep.state()))

    workload.run(adam(3e-3), seed=7, on_epoch=keep)
    assert saved["epoch"] == 2 and math.isclose(saved["value"], full[1])
    resumed = []
    again = workload.run(adam(3e-3), seed=7, on_epoch=lambda r: resumed.append(r), resume=saved)
    assert [r.epoch for r in resumed] == [3, 4]
    assert [r.value for r in resumed] == full[2:]
    assert again.value == result.value
    assert again.metrics["test_accuracy"] == result.metrics["test_accuracy"]


def test_restored_optimizer_keeps_the_new_hyperparameters_and_the_saved_moments():
    weights = torch.nn.Parameter(torch.ones(3))
    old = torch.optim.Adam([weights], lr=0.1, betas=(0.8, 0.9))
    weights.grad = torch.full((3,), 2.0)
    old.step()
    state = old.state_dict()
    fresh = torch.optim.Adam([weights], lr=0.01, betas=(0.5, 0.6))
    restore_optimizer(fresh, state)
    group = fresh.param_groups[0]
    assert group["lr"] == 0.01 and group["betas"] == (0.5, 0.6)
    moment = fresh.state[weights]["exp_avg"]
    assert torch.allclose(moment, torch.full((3,), 0.4))  # (1 - 0.8) * 2 from the saved step
