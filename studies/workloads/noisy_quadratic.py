"""An ill-conditioned quadratic with additive Gaussian gradient noise (the noisy quadratic model).

    L(θ) = ½ Σ_i h_i (q_i·θ)²,   h_i log-spaced from 1 to `condition`,
    gradient seen by the optimizer: ∇L(θ) + ξ,   ξ ~ N(0, noise² D)

with D = I (`noise_structure="isotropic"`) or D = diag(h) in the eigenbasis
(`"curvature"`, the mini-batch noise model of Zhang et al. 2019). The eigenbasis q is the
identity, or a random rotation (`rotate=true`, fixed by `problem_seed`) that makes the problem
non-axis-aligned, which matters to diagonal preconditioners. The loss the optimizer is judged
on is L itself: the expected loss over the noise, since the noise has mean zero. This is the
workload for studying HVAdam's noise parameter `gamma`.

The start point (all ones in the eigenbasis) and the problem are the same for every seed; the
seed drives the noise only.
"""

from __future__ import annotations

import math
import time
from typing import ClassVar

import torch

from studies.workloads._base import (
    MakeOptimizer,
    OnEpoch,
    Option,
    RunResult,
    Workload,
    check_finite,
    current_lr,
    epoch_metrics,
    report,
    resolve_device,
    seed_everything,
)
from studies.workloads._schedule import lr_schedule


class NoisyQuadratic(Workload):
    """The noisy quadratic model; the metric is the final expected loss L(θ)."""

    metric = "expected_loss"
    direction = "minimize"
    unit = "step"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "dim": Option(100, "int", "number of dimensions", low=1, high=100_000),
        "condition": Option(1000.0, "float", "condition number h_max / h_min", low=1.0),
        "noise": Option(0.1, "float", "standard deviation of the gradient noise", low=0.0),
        "noise_structure": Option("isotropic", "str", "noise covariance shape", choices=("isotropic", "curvature")),
        "rotate": Option(False, "bool", "use a random orthogonal eigenbasis instead of the axes"),
        "problem_seed": Option(0, "int", "seed of the rotation (fixed across runs)", low=0),
        "steps": Option(2000, "int", "optimizer steps", low=1),
        "report_every": Option(100, "int", "steps per report (one 'epoch')", low=1),
    }  # fmt: skip

    def _configure(self) -> None:
        self.max_epochs = math.ceil(self.options["steps"] / self.options["report_every"])

    def curvatures(self) -> torch.Tensor:
        """The eigenvalues h_i (float64), from 1 up to the condition number."""
        o = self.options
        return torch.logspace(0.0, math.log10(o["condition"]), o["dim"], dtype=torch.float64)

    def basis(self) -> torch.Tensor | None:
        """The orthogonal eigenbasis (rows), or None for the coordinate axes."""
        if not self.options["rotate"]:
            return None
        gen = torch.Generator().manual_seed(self.options["problem_seed"])
        dim = self.options["dim"]
        q, r = torch.linalg.qr(torch.randn(dim, dim, generator=gen, dtype=torch.float64))
        return q * torch.sign(torch.diagonal(r))  # a uniformly random rotation

    def run(
        self,
        make_optimizer: MakeOptimizer,
        *,
        seed: int,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
    ) -> RunResult:
        seed_everything(seed)
        dev = resolve_device(device)
        o = self.options
        h = self.curvatures().to(dev)
        q = self.basis()
        q = None if q is None else q.to(dev)
        noise_scale = o["noise"] * (h.sqrt() if o["noise_structure"] == "curvature" else 1.0)
        gen = torch.Generator(device=dev).manual_seed(int(seed))

        # θ lives in the original coordinates; z = q θ are the eigen-coordinates.
        start = torch.ones(o["dim"], dtype=torch.float64, device=dev)
        theta = torch.nn.Parameter(start if q is None else q.T @ start)
        optimizer = make_optimizer([theta])
        schedule = lr_schedule(make_optimizer, optimizer, o["steps"])

        def to_eigen(v: torch.Tensor) -> torch.Tensor:
            return v if q is None else q @ v

        def from_eigen(v: torch.Tensor) -> torch.Tensor:
            return v if q is None else q.T @ v

        def expected_loss() -> float:
            with torch.no_grad():
                return float(0.5 * (h * to_eigen(theta) ** 2).sum())

        steps, every = o["steps"], o["report_every"]
        value = expected_loss()
        for chunk in range(1, self.max_epochs + 1):
            first, last = (chunk - 1) * every + 1, min(chunk * every, steps)
            losses = torch.zeros((), dtype=torch.float64, device=dev)
            elapsed = 0.0
            lr_used = current_lr(optimizer)
            for _ in range(first, last + 1):
                t0 = time.perf_counter()
                with torch.no_grad():
                    z = to_eigen(theta)
                    losses += 0.5 * (h * z**2).sum()
                    xi = torch.randn(o["dim"], generator=gen, dtype=torch.float64, device=dev)
                    theta.grad = from_eigen(h * z + noise_scale * xi)
                optimizer.step()
                schedule.step()
                elapsed += time.perf_counter() - t0
            n = last - first + 1
            train_loss = float(losses) / n
            check_finite(train_loss, epoch=chunk, what="training loss")
            value = expected_loss()
            check_finite(value, epoch=chunk, what="expected loss")
            metrics = epoch_metrics(
                optimizer,
                train_loss=train_loss,
                step_time=elapsed / n,
                expected_loss=value,
                step=last,
            )
            metrics["lr"] = lr_used
            report(on_epoch, chunk, value, metrics)

        with torch.no_grad():
            part = 0.5 * h * to_eigen(theta) ** 2
            tenth = max(1, part.numel() // 10)
            final = {
                "expected_loss": value,
                "distance": float(to_eigen(theta).norm()),
                # where the error sits: the flattest and the sharpest tenth of the spectrum
                "loss_low_curvature": float(part[:tenth].sum()),
                "loss_high_curvature": float(part[-tenth:].sum()),
            }
        return RunResult(
            value=value, metrics=final, extras={"curvature_range": [1.0, o["condition"]]}
        )
