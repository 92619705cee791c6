"""Milliseconds per optimizer step on a model's parameter shapes, as ratios to fused Adam.

Every optimizer steps the same shapes with fixed random gradients, after warm-up (which also
pays HVAdam's one-off torch.compile); ratios are to torch.optim.Adam(fused=True) measured in the
same run. On CUDA the timed steps run under torch.cuda.set_sync_debug_mode("error"), so a step
that synchronises host and device fails the benchmark instead of hiding in the numbers; the
readable reference paths (``foreach=False`` of HVAdam and Anon) read their decisions on the host
by design, so they are timed without that check (marked in the table).

On a CPU the title names the CPU model and torch's CPU capability (the instruction set its
kernels, and HVAdam's and Anon's C++ kernels, are built for). ``--threads N`` sets torch's
threads (as ``OMP_NUM_THREADS=N`` does); ``--runs R`` repeats the interleaved measurement R times
in one process and adds the median over runs of each run's ratio (a shared machine's noise moves
single runs); ``--only`` times a subset (fused Adam is always timed).

    PYTHONPATH=$PWD python benchmarks/step_time.py [--device cpu|cuda] [--steps N]
        [--warmup N] [--threads N] [--runs R] [--only NAME,NAME] [--markdown]
        [--shapes resnet18|transformer-350m]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time
from collections.abc import Callable

import torch

from hvadam import _fastpath
from hvadam._hvadam import HVAdam

try:  # Anon may not be available in every checkout
    from hvadam._anon import Anon
except ImportError:
    Anon = None


def resnet18_shapes() -> list[torch.Size]:
    import torchvision

    return [p.shape for p in torchvision.models.resnet18().parameters()]


def transformer_shapes(
    layers: int = 24, width: int = 1024, vocab: int = 50304, context: int = 1024
) -> list[torch.Size]:
    """A GPT-2-medium-like decoder's parameter shapes (292 tensors, about 355 M parameters)."""
    shapes = [torch.Size([vocab, width]), torch.Size([context, width])]
    for _ in range(layers):
        shapes += [torch.Size([width]), torch.Size([width])]  # layer norm
        shapes += [torch.Size([3 * width, width]), torch.Size([3 * width])]  # qkv
        shapes += [torch.Size([width, width]), torch.Size([width])]  # attention out
        shapes += [torch.Size([width]), torch.Size([width])]  # layer norm
        shapes += [torch.Size([4 * width, width]), torch.Size([4 * width])]  # mlp in
        shapes += [torch.Size([width, 4 * width]), torch.Size([width])]  # mlp out
    return [*shapes, torch.Size([width]), torch.Size([width])]


SHAPES = {"resnet18": resnet18_shapes, "transformer-350m": transformer_shapes}


def make_params(shapes: list[torch.Size], device: str, seed: int = 0) -> list[torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    params = []
    for shape in shapes:
        p = torch.randn(shape, generator=gen).to(device).requires_grad_()
        p.grad = (torch.randn(shape, generator=gen) * 1e-2).to(device)
        params.append(p)
    return params


class _FlatPassHVAdam(HVAdam):
    """HVAdam whose CPU fast path runs the compiled flat-buffer passes (the path CUDA takes),
    not the C++ kernel."""

    def step(self, closure=None):  # type: ignore[override]
        with _fastpath.overrides(cpu_kernel=False):
            return super().step(closure)


def candidates() -> dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]]:
    found: dict[str, Callable[[list[torch.Tensor]], torch.optim.Optimizer]] = {
        "Adam fused": lambda ps: torch.optim.Adam(ps, lr=1e-3, fused=True),
        "Adam foreach": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=True),
        "Adam for-loop": lambda ps: torch.optim.Adam(ps, lr=1e-3, foreach=False),
        "HVAdam default": lambda ps: HVAdam(ps, lr=1e-3),
        "HVAdam flat passes": lambda ps: _FlatPassHVAdam(ps, lr=1e-3),
        "HVAdam foreach=False": lambda ps: HVAdam(ps, lr=1e-3, foreach=False),
    }
    if Anon is not None:
        found["Anon default"] = lambda ps: Anon(ps, lr=1e-3)
        found["Anon foreach=False"] = lambda ps: Anon(ps, lr=1e-3, foreach=False)
    return found


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def sync_checked(name: str) -> bool:
    """Whether a candidate's steps must be free of host-device synchronisation."""
    return not (name.startswith(("HVAdam", "Anon")) and name.endswith("foreach=False"))


def time_steps(
    opt: torch.optim.Optimizer, device: str, steps: int, check_sync: bool = True
) -> list[float]:
    """Seconds per step, one sample per step; synchronisation only outside the timed steps."""
    samples = []
    cuda = device.startswith("cuda")
    for _ in range(steps):
        _sync(device)
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            torch.cuda.set_sync_debug_mode("error" if check_sync else "default")
            start.record()
            opt.step()
            end.record()
            torch.cuda.set_sync_debug_mode("default")
            end.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            opt.step()
            samples.append(time.perf_counter() - t0)
    return samples


def cpu_model() -> str:
    """The CPU's model name (Linux's /proc/cpuinfo, else what platform knows)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine(device: str) -> str:
    """The machine in words: CPU model and capability, or the GPU's name."""
    if device.startswith("cuda"):
        return torch.cuda.get_device_name(torch.device(device))
    capability = torch.backends.cpu.get_cpu_capability()
    return f"{cpu_model()}, torch CPU capability {capability}"


def run(
    device: str,
    steps: int,
    warmup: int,
    runs: int = 1,
    only: list[str] | None = None,
    shapes: list[torch.Size] | None = None,
) -> list[tuple[str, float, float, float, float]]:
    """(name, best ms, median ms, best / best of fused Adam, median over runs of that ratio)."""
    shapes = resnet18_shapes() if shapes is None else shapes
    opts = {}
    for name, factory in candidates().items():
        if only and name != "Adam fused" and name not in only:
            continue
        params = make_params(shapes, device)
        opt = factory(params)
        for _ in range(warmup):
            opt.step()
        _sync(device)
        opts[name] = opt
    samples: dict[str, list[float]] = {name: [] for name in opts}
    ratios: dict[str, list[float]] = {name: [] for name in opts}
    rounds = max(1, steps // 5)
    for _ in range(runs):
        # Interleave the optimizers so a slow patch of a shared machine hits all of them alike.
        this_run: dict[str, list[float]] = {name: [] for name in opts}
        for _ in range(rounds):
            for name, opt in opts.items():
                this_run[name] += time_steps(
                    opt, device, max(1, steps // rounds), sync_checked(name)
                )
        # The best step is the least disturbed by other work on a shared machine.
        for name, s in this_run.items():
            samples[name] += s
            ratios[name].append(min(s) / min(this_run["Adam fused"]))
    best = {name: min(s) * 1e3 for name, s in samples.items()}
    base = best["Adam fused"]
    return [
        (
            name,
            ms,
            statistics.median(samples[name]) * 1e3,
            ms / base,
            statistics.median(ratios[name]),
        )
        for name, ms in best.items()
    ]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--threads", type=int, help="torch threads (default: torch's choice)")
    parser.add_argument("--runs", type=int, default=1, help="repeat the measurement R times")
    parser.add_argument("--only", help="comma-separated optimizer names (fused Adam is kept)")
    parser.add_argument("--markdown", action="store_true", help="print a markdown table")
    parser.add_argument("--shapes", choices=sorted(SHAPES), default="resnet18")
    args = parser.parse_args(argv)
    if args.threads is not None:
        if args.threads < 1:
            parser.error(f"--threads must be at least 1, got {args.threads}")
        torch.set_num_threads(args.threads)
    if args.runs < 1:
        parser.error(f"--runs must be at least 1, got {args.runs}")
    only = [name.strip() for name in args.only.split(",")] if args.only else None
    unknown = sorted(set(only or []) - set(candidates()))
    if unknown:
        parser.error(f"--only: unknown optimizer(s) {unknown}; known: {list(candidates())}")
    if args.device.startswith("cuda"):
        print("sync-checked (set_sync_debug_mode('error')): every row but the reference paths")
    shapes = SHAPES[args.shapes]()
    n_params = sum(s.numel() for s in shapes)
    rows = run(args.device, args.steps, args.warmup, args.runs, only, shapes)
    title = (
        f"step time on {args.device} ({machine(args.device)}), {args.shapes} shapes "
        f"({len(shapes)} tensors, {n_params / 1e6:.1f} M params), best and median of {args.steps} steps x {args.runs} "
        f"run(s) after {args.warmup} warm-up, torch {torch.__version__}, "
        f"{torch.get_num_threads()} threads"
    )
    if args.markdown:
        print(f"{title}\n")
        print(
            "| optimizer | best ms / step | median ms | x fused Adam (best) | x fused (median of runs) |"
        )
        print("|---|---:|---:|---:|---:|")
        for name, ms, median, ratio, run_ratio in rows:
            print(f"| {name} | {ms:.2f} | {median:.2f} | {ratio:.2f} | {run_ratio:.2f} |")
    else:
        print(title)
        print(f"{'optimizer':<22}{'best ms':>10}{'median ms':>11}{'x fused':>9}{'x runs':>8}")
        for name, ms, median, ratio, run_ratio in rows:
            print(f"{name:<22}{ms:>10.2f}{median:>11.2f}{ratio:>9.2f}{run_ratio:>8.2f}")


if __name__ == "__main__":
    main()
