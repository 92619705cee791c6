"""On a CUDA device: HVAdam's fast path never synchronises, and matches the reference path.

Runs the fast path (compiled, then eager) under torch.cuda.set_sync_debug_mode("error"), with
several groups, a parameter without a gradient and a zero-gradient group (skips), then compares
20 float64 steps against the reference path on the same device.

    PYTHONPATH=$PWD python benchmarks/cuda_sync_check.py
"""

from __future__ import annotations

import copy
import time

import torch
from torch import nn

from hvadam import _hvadam
from hvadam._hvadam import HVAdam


def build(dtype: torch.dtype, foreach: bool) -> tuple[nn.Module, torch.Tensor, HVAdam]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3), nn.Linear(3, 3))
    model = model.to("cuda", dtype)
    dead = torch.zeros(5, device="cuda", dtype=dtype, requires_grad=True)
    params = list(model.parameters())
    groups = [
        {"params": params[:2], "restart_threshold": 0.99, "weight_decay": 0.01},
        {
            "params": params[2:],
            "gamma": 0.3,
            "adaptivity": 0.7,
            "amsgrad": True,
            "decoupled_weight_decay": True,
            "weight_decay": 0.05,
        },
        {"params": [dead], "maximize": True},
    ]
    return model, dead, HVAdam(groups, lr=1e-2, foreach=foreach)


def train(model: nn.Module, dead: torch.Tensor, opt: HVAdam, steps: int, sync_check: bool) -> None:
    gen = torch.Generator(device="cuda").manual_seed(1)
    dtype = dead.dtype
    for i in range(steps):
        x = torch.randn(8, 6, device="cuda", generator=gen, dtype=dtype)
        opt.zero_grad()
        model[3].weight.grad = None  # a parameter without a gradient at odd steps
        out = model[:3](x) if i % 2 else model(x)
        (out.pow(2).mean() + (dead * 0.0).sum()).backward()
        if sync_check:
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            torch.cuda.set_sync_debug_mode("default")


def main() -> None:
    print(torch.__version__, torch.cuda.get_device_name())
    for mode in ("auto", "eager"):
        _hvadam._COMPILE_MODE = mode
        for dtype in (torch.float32, torch.float64):
            model, dead, opt = build(dtype, foreach=True)
            t0 = time.perf_counter()
            train(model, dead, opt, 1, sync_check=False)  # compile outside the check
            torch.cuda.synchronize()
            first = time.perf_counter() - t0
            train(model, dead, opt, 20, sync_check=True)
            print(
                f"sync-free OK: mode={mode} dtype={dtype} first step {first:.1f}s {opt.internals()}"
            )
        ref_model, ref_dead, ref = build(torch.float64, foreach=False)
        model, dead, opt = build(torch.float64, foreach=True)
        train(ref_model, ref_dead, ref, 20, sync_check=False)
        train(model, dead, opt, 20, sync_check=False)
        worst = max(
            ((a - b).abs().max() / a.abs().max()).item()
            for a, b in zip(ref_model.parameters(), model.parameters(), strict=True)
        )
        states = [copy.deepcopy(g["hv_state"]) for g in opt.param_groups]
        print(f"fast vs reference float64 (mode={mode}): max rel diff {worst:.3g}; {states}")
        assert worst < 1e-10, worst
    print("ALL OK")


if __name__ == "__main__":
    main()
