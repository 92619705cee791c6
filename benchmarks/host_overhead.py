"""Host cost of one optimizer step on many tiny tensors, as ratios to fused Adam.

62 parameter tensors of at most 12 elements (ResNet-18's count of tensors, with the arithmetic
made negligible): what remains is the per-operation cost on the host, the regime of a GPU step,
where every operation is a kernel launch. Each path is timed in the same run as torch's fused
Adam, interleaved, best of several rounds (the machine is shared and noisy); the op count per
step (eager, counted with a TorchDispatchMode) is printed beside it.

    PYTHONPATH=$PWD python benchmarks/host_overhead.py [--tensors 62] [--steps 200] [--rounds 7]

Goals (issue #9): HVAdam and Anon <= 2x fused Adam compiled, <= 3x eager.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from hvadam import _fastpath
from hvadam._anon import Anon
from hvadam._hvadam import HVAdam


class _OpCounter(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):  # type: ignore[no-untyped-def]
        self.count += 1
        return func(*args, **(kwargs or {}))


def tiny_params(n: int, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for i in range(n):
        size = 1 + i % 12
        p = torch.randn(size, generator=gen).requires_grad_()
        p.grad = torch.randn(size, generator=gen) * 1e-2
        params.append(p)
    return params


def candidates() -> dict[str, tuple[Callable[[list[torch.Tensor]], torch.optim.Optimizer], dict]]:
    """name -> (factory, fast-path settings while it steps)."""
    eager = {"compile": False, "cpu_kernel": False}
    compiled = {"compile": True, "cpu_kernel": False}
    return {
        "Adam fused": (lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True), {}),
        "Adam foreach": (lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True), {}),
        "HVAdam eager": (lambda ps: HVAdam(ps, lr=1e-3, foreach=True), eager),
        "HVAdam compiled": (lambda ps: HVAdam(ps, lr=1e-3, foreach=True), compiled),
        "Anon eager": (lambda ps: Anon(ps, lr=1e-3, foreach=True), eager),
        "Anon compiled": (lambda ps: Anon(ps, lr=1e-3, foreach=True), compiled),
    }


def ops_per_step(opt: torch.optim.Optimizer) -> int:
    counter = _OpCounter()
    with counter:
        opt.step()
    return counter.count


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tensors", type=int, default=62)
    parser.add_argument("--steps", type=int, default=200, help="steps per timed round")
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args(argv)
    opts, settings, ops = {}, {}, {}
    for name, (factory, changes) in candidates().items():
        opt = factory(tiny_params(args.tensors))
        with _fastpath.overrides(**changes):
            for _ in range(5):  # warm-up: state, compiling
                opt.step()
            ops[name] = ops_per_step(opt) if "compiled" not in name else None
        opts[name], settings[name] = opt, changes
    best = dict.fromkeys(opts, float("inf"))
    for _ in range(args.rounds):  # interleaved, so a noisy patch hits every candidate alike
        for name, opt in opts.items():
            with _fastpath.overrides(**settings[name]):
                start = time.perf_counter()
                for _ in range(args.steps):
                    opt.step()
                best[name] = min(best[name], (time.perf_counter() - start) / args.steps)
    base = best["Adam fused"]
    print(
        f"host cost per step, {args.tensors} tensors of <= 12 elements, CPU, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__}, best of {args.rounds} "
        f"rounds of {args.steps} steps"
    )
    print(f"{'optimizer':<18}{'us/step':>10}{'x fused Adam':>14}{'ops/step':>10}")
    for name, seconds in best.items():
        count = "" if ops.get(name) is None else str(ops[name])
        print(f"{name:<18}{seconds * 1e6:>10.1f}{seconds / base:>14.2f}{count:>10}")


if __name__ == "__main__":
    main()
