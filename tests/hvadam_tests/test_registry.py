"""The optimizer registry: every entry builds and trains, defaults are complete, errors name options."""

from __future__ import annotations

import inspect
import subprocess
import sys

import pytest
import torch
from torch import nn

from hvadam.registry import (
    IMPLEMENTATION_FLAGS,
    available_optimizers,
    create_optimizer,
    optimizer_class,
    optimizer_defaults,
    resolve_hyperparameters,
)

REQUIRED = {
    "hvadam",
    "anon",
    "sgd",
    "adam",
    "adamw",
    "amsgrad",
    "radam",
    "nadam",
    "adabelief",
    "lion",
    "yogi",
    "adabound",
}


def test_required_optimizers_are_registered():
    assert set(available_optimizers()) >= REQUIRED
    assert available_optimizers()[:2] == ["hvadam", "anon"]
    assert all(name == name.lower() for name in available_optimizers())


@pytest.mark.parametrize("name", available_optimizers())
def test_every_optimizer_trains_from_its_defaults(name):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    data = torch.randn(64, 4)
    target = data @ torch.tensor([[1.0], [-2.0], [0.5], [3.0]])
    opt = create_optimizer(name, model.parameters())
    before = [p.detach().clone() for p in model.parameters()]

    def loss_fn():
        return ((model(data) - target) ** 2).mean()

    with torch.no_grad():
        initial = loss_fn().item()
    for _ in range(5):
        opt.zero_grad()
        loss_fn().backward()
        opt.step()
    with torch.no_grad():
        final = loss_fn().item()
    assert final < initial
    assert all(not torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("name", available_optimizers())
def test_defaults_are_complete_and_exclude_implementation_flags(name):
    defaults = optimizer_defaults(name)
    assert not set(defaults) & IMPLEMENTATION_FLAGS
    assert "params" not in defaults
    opt = create_optimizer(name, [nn.Parameter(torch.zeros(3))])
    group = opt.param_groups[0]
    # What the optimizer records per group is our hyperparameters plus its implementation flags
    # (AdamW records the decoupling it hard-wires).
    extra = set(group) - set(defaults) - IMPLEMENTATION_FLAGS - {"params"}
    assert extra <= ({"decoupled_weight_decay"} if name == "adamw" else set())
    for key, value in defaults.items():
        if key in group:
            assert group[key] == value, key
    # Every constructor argument with a default is either a hyperparameter or a flag.
    signature = inspect.signature(optimizer_class(name)).parameters
    named = {
        k
        for k, p in signature.items()
        if p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL) and k != "params"
    }
    assert named == set(defaults) | (named & IMPLEMENTATION_FLAGS)


def test_defaults_come_from_the_constructors_with_fixed_overrides():
    assert optimizer_defaults("adam") == {
        "lr": 1e-3,
        "betas": (0.9, 0.999),
        "eps": 1e-8,
        "weight_decay": 0,
        "amsgrad": False,
        "maximize": False,
        "decoupled_weight_decay": False,
    }
    assert optimizer_defaults("amsgrad") == {**optimizer_defaults("adam"), "amsgrad": True}
    sgd = optimizer_defaults("sgd")
    assert {"momentum", "nesterov", "dampening"} <= set(sgd)
    assert optimizer_defaults("anon") == {
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
    assert optimizer_defaults("lion")["betas"] == (0.9, 0.99)


def test_amsgrad_entry_builds_adam_with_amsgrad_and_refuses_to_unset_it():
    opt = create_optimizer("amsgrad", [nn.Parameter(torch.zeros(2))])
    assert type(opt) is torch.optim.Adam
    assert opt.param_groups[0]["amsgrad"] is True
    with pytest.raises(ValueError, match=r"fixes amsgrad=True"):
        create_optimizer("amsgrad", [nn.Parameter(torch.zeros(2))], amsgrad=False)


def test_names_are_case_insensitive():
    p = [nn.Parameter(torch.zeros(2))]
    assert type(create_optimizer("AdamW", p)) is torch.optim.AdamW
    assert type(create_optimizer(" ANON ", p)).__name__ == "Anon"
    assert optimizer_defaults("SGD") == optimizer_defaults("sgd")


def test_unknown_optimizer_name_lists_the_known_ones():
    with pytest.raises(ValueError) as info:
        create_optimizer("adamm", [nn.Parameter(torch.zeros(2))])
    message = str(info.value)
    assert "'adamm'" in message
    for name in available_optimizers():
        assert name in message
    with pytest.raises(ValueError, match="known optimizers"):
        optimizer_defaults("nope")


def test_unknown_hyperparameter_names_the_optimizer_and_what_it_accepts():
    with pytest.raises(ValueError) as info:
        create_optimizer("sgd", [nn.Parameter(torch.zeros(2))], lr=0.1, betas=(0.9, 0.99))
    message = str(info.value)
    assert "'betas'" in message and "'sgd'" in message
    for name in optimizer_defaults("sgd"):
        assert name in message
    # implementation flags are not hyperparameters
    with pytest.raises(ValueError, match="'foreach'"):
        resolve_hyperparameters("adam", foreach=True)


def test_resolve_overlays_defaults_and_turns_lists_into_tuples():
    resolved = resolve_hyperparameters("Adam", lr=0.01, betas=[0.8, 0.95])
    assert resolved == {**optimizer_defaults("adam"), "lr": 0.01, "betas": (0.8, 0.95)}
    opt = create_optimizer("anon", [nn.Parameter(torch.zeros(2))], betas=[0.5, 0.6], lr=0.2)
    assert opt.param_groups[0]["betas"] == (0.5, 0.6)
    assert opt.param_groups[0]["lr"] == 0.2


def test_create_accepts_param_groups():
    a, b = nn.Parameter(torch.zeros(2)), nn.Parameter(torch.zeros(3))
    opt = create_optimizer("sgd", [{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1)
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.5]


def test_hvadam_entry_is_the_projects_hvadam():
    from hvadam._hvadam import HVAdam

    assert optimizer_class("hvadam") is HVAdam
    defaults = optimizer_defaults("hvadam")
    assert defaults["hv_step_range"] == (1e-3, 1e3)
    assert defaults["eps"] == 1e-16


def test_importing_the_registry_imports_no_optimizer_library():
    code = (
        "import sys, hvadam.registry as r; r.available_optimizers();"
        "assert 'pytorch_optimizer' not in sys.modules; assert 'hvadam._hvadam' not in sys.modules;"
        "assert 'torch' not in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
