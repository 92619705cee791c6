"""What the step-counted workloads (gpt-text, ddpm-*, gan-*) share: their length options, the
warm-up + cosine learning-rate schedule, and the bf16 autocast switch.

A run trains `steps` optimizer steps (the schedule's length), capped by `max_steps` for smoke
runs, and reports every `report_every` steps and after the last one; a report is one "epoch" of
the pruners and schedulers.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from studies.workloads._base import MakeOptimizer, Option
from studies.workloads._schedule import LrSchedule, lr_schedule

__all__ = [
    "autocast",
    "cosine_lambda",
    "report_steps",
    "step_options",
    "step_schedule",
    "total_steps",
    "use_bf16",
]


def step_options(steps: int, report_every: int, warmup: int) -> dict[str, Option]:
    return {
        "steps": Option(steps, "int", "optimizer steps (the learning-rate schedule's length)", low=1),
        "report_every": Option(report_every, "int", "steps per report (one 'epoch')", low=1),
        "max_steps": Option(None, "int", "stop after this many steps, schedule unchanged (smoke runs)", low=1, nullable=True),
        "warmup": Option(warmup, "int", "linear learning-rate warm-up steps", low=0),
        "cosine": Option(True, "bool", "cosine decay of the learning rate to min_lr_ratio after warm-up"),
        "min_lr_ratio": Option(0.1, "float", "final learning rate / peak learning rate", low=0.0, high=1.0),
        "amp": Option("auto", "str", "mixed precision: auto (bf16 on CUDA), bf16, off", choices=("auto", "bf16", "off")),
    }  # fmt: skip


def total_steps(options: dict[str, Any]) -> int:
    cap = options.get("max_steps")
    return options["steps"] if cap is None else min(options["steps"], cap)


def report_steps(options: dict[str, Any]) -> int:
    """How many reports a run makes: one every `report_every` steps and one after the last."""
    return math.ceil(total_steps(options) / options["report_every"])


def cosine_lambda(options: dict[str, Any]) -> Any:
    """The learning-rate multiplier by step (for `LambdaLR`): linear warm-up, then cosine."""
    steps, warmup = options["steps"], options["warmup"]
    floor, cosine = options["min_lr_ratio"], options["cosine"]

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if not cosine:
            return 1.0
        progress = min(1.0, (step - warmup) / max(1, steps - warmup))
        return floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * progress))

    return factor


def step_schedule(
    make_optimizer: MakeOptimizer, optimizer: torch.optim.Optimizer, options: dict[str, Any]
) -> LrSchedule:
    """The run's learning-rate schedule, stepped after every optimizer step: a searched one
    (`lr_schedule`) replaces the built-in warm-up + cosine one (`cosine_lambda`)."""
    schedule = lr_schedule(make_optimizer, optimizer, options["steps"])
    if schedule.active:
        return schedule
    return LrSchedule(torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_lambda(options)))


def use_bf16(options: dict[str, Any], device: torch.device) -> bool:
    return options["amp"] == "bf16" or (options["amp"] == "auto" and device.type == "cuda")


def autocast(device: torch.device, enabled: bool) -> torch.autocast:
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=enabled)
