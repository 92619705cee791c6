"""On a CUDA device: the fast paths never synchronise, match the reference, and launch a number
of kernels per step that does not grow with the number of tensors.

1. Sync-freedom: HVAdam (compiled and eager) and Anon step under
   torch.cuda.set_sync_debug_mode("error"), with several groups, a parameter without a gradient
   at odd steps, a zero-gradient group (skips) and a group whose parameters lack gradients in
   turn (the masked pass).
2. Exactness: 20 float64 steps of the same setting against the reference path on the device.
3. Kernel launches per step (profiler, CUDA activity) at 10 and 200 tensors.

    PYTHONPATH=$PWD python benchmarks/cuda_sync_check.py
"""

from __future__ import annotations

import argparse
import time

import torch
from torch import nn

from hvadam import _fastpath
from hvadam._anon import Anon
from hvadam._hvadam import HVAdam

# `--device cpu` runs the same checks on a CPU (no sync mode, no kernel count): a smoke test of
# this script where no GPU is at hand.
DEVICE = "cuda"


def build(kind: str, dtype: torch.dtype, foreach: bool):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 32), nn.Tanh(), nn.Linear(32, 3), nn.Linear(3, 3))
    model = model.to(DEVICE, dtype)
    dead = torch.zeros(5, device=DEVICE, dtype=dtype, requires_grad=True)
    many = [torch.randn(3, device=DEVICE, dtype=dtype, requires_grad=True) for _ in range(12)]
    params = list(model.parameters())
    if kind == "anon":
        groups = [
            {"params": params[:2], "adaptivity": 1.0},
            {"params": params[2:], "adaptivity": 0.5, "refresh": "every", "weight_decay": 0.1},
            {"params": many},
        ]
        return model, dead, many, Anon(groups, lr=1e-2, foreach=foreach)
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
        {"params": many, "restart_threshold": 0.5},
    ]
    return model, dead, many, HVAdam(groups, lr=1e-2, foreach=foreach)


def train(model, dead, many, opt, steps: int, sync_check: bool, seed: int = 1) -> None:
    gen = torch.Generator(device=DEVICE).manual_seed(seed)
    dtype = dead.dtype
    for i in range(steps):
        x = torch.randn(8, 6, device=DEVICE, generator=gen, dtype=dtype)
        opt.zero_grad()
        out = model[:3](x) if i % 2 else model(x)  # the last layer has no gradient at odd steps
        loss = out.pow(2).mean() + (dead * 0.0).sum()
        # every other tensor of `many` lacks a gradient at odd steps: more segments than
        # MAX_SEGMENTS, the masked pass
        loss = loss + sum((t**2).sum() for j, t in enumerate(many) if not (i % 2 and j % 2))
        loss.backward()
        if sync_check and DEVICE == "cuda":
            torch.cuda.set_sync_debug_mode("error")
        try:
            opt.step()
        finally:
            if DEVICE == "cuda":
                torch.cuda.set_sync_debug_mode("default")


def check(kind: str, compiled: bool) -> None:
    label = f"{kind} {'compiled' if compiled else 'eager'}"
    for dtype in (torch.float32, torch.float64):
        model, dead, many, opt = build(kind, dtype, foreach=True)
        t0 = time.perf_counter()
        train(model, dead, many, opt, 2, sync_check=False)  # compile outside the check
        _sync()
        first = time.perf_counter() - t0
        train(model, dead, many, opt, 20, sync_check=True)
        print(f"sync-free OK: {label} {dtype} (first steps {first:.1f}s) {opt.internals()}")
    ref = build(kind, torch.float64, foreach=False)
    fast = build(kind, torch.float64, foreach=True)
    train(*ref, 20, sync_check=False)
    train(*fast, 20, sync_check=False)
    worst = 0.0
    ref_params = [*ref[0].parameters(), ref[1], *ref[2]]
    fast_params = [*fast[0].parameters(), fast[1], *fast[2]]
    for a, b in zip(ref_params, fast_params, strict=True):
        worst = max(worst, ((a - b).abs().max() / a.abs().max().clamp_min(1e-30)).item())
    print(f"fast vs reference float64 ({label}): max rel diff {worst:.3g}")
    assert worst < 1e-10, worst


def launches(kind: str, n: int) -> int:
    """CUDA kernels launched by one step over n small tensors."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    params = [
        torch.randn(1 + i % 12, device=DEVICE, generator=gen).requires_grad_() for i in range(n)
    ]
    for p in params:
        p.grad = torch.randn(p.shape, device=DEVICE, generator=gen)
    opt = (HVAdam if kind == "hvadam" else Anon)(params, foreach=True)
    for _ in range(3):
        opt.step()
    torch.cuda.synchronize()
    activity = [torch.profiler.ProfilerActivity.CUDA]
    with torch.profiler.profile(activities=activity) as prof:
        opt.step()
        torch.cuda.synchronize()
    return sum(1 for e in prof.events() if e.device_type == torch.autograd.DeviceType.CUDA)


def _sync() -> None:
    if DEVICE == "cuda":
        torch.cuda.synchronize()


def main(argv: list[str] | None = None) -> None:
    global DEVICE
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda", choices=["cuda", "cpu"])
    DEVICE = parser.parse_args(argv).device
    name = torch.cuda.get_device_name() if DEVICE == "cuda" else "cpu"
    print(torch.__version__, name)
    for compiled in (True, False):
        with _fastpath.overrides(compile=compiled):
            check("hvadam", compiled)
            if not compiled:
                check("anon", compiled)
    for compiled in (True, False) if DEVICE == "cuda" else ():
        with _fastpath.overrides(compile=compiled):
            for kind in ("hvadam", "anon"):
                counts = {n: launches(kind, n) for n in (10, 62, 200)}
                mode = "compiled" if compiled else "eager"
                print(f"kernel launches per step, {kind} {mode}: {counts}")
    print("ALL OK")


if __name__ == "__main__":
    main()
