"""A user workload as a class: the same task as my_tasks.py with declared, checked options.

A `Workload` subclass names its metric, checks its options (`OPTIONS`) and implements `run`;
the spec names it `my_workload:SineFit` (see my_workload.yaml).
"""

from typing import ClassVar

import torch
from torch import nn

from studies.workloads import Option, RunResult, Workload
from studies.workloads._base import check_finite, epoch_metrics, report


class SineFit(Workload):
    metric = "val_loss"
    direction = "minimize"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "epochs": Option(8, "int", "training epochs", low=1),
        "hidden": Option(32, "int", "hidden units", low=1),
        "batch_size": Option(32, "int", "mini-batch size", low=1),
    }

    def run(self, make_optimizer, *, seed, device="cpu", on_epoch=None):
        o = self.options
        g = torch.Generator().manual_seed(0)
        x = torch.rand(512, 1, generator=g) * 4 - 2
        y = torch.sin(3 * x) + 0.1 * torch.randn(512, 1, generator=g)
        (x_train, x_val), (y_train, y_val) = x.split([384, 128]), y.split([384, 128])
        torch.manual_seed(seed)
        model = nn.Sequential(nn.Linear(1, o["hidden"]), nn.Tanh(), nn.Linear(o["hidden"], 1))
        opt = make_optimizer(model.parameters())
        for epoch in range(1, self.max_epochs + 1):
            for batch in torch.randperm(384).split(o["batch_size"]):
                opt.zero_grad()
                loss = nn.functional.mse_loss(model(x_train[batch]), y_train[batch])
                loss.backward()
                opt.step()
            check_finite(loss.item(), epoch=epoch, what="training loss")  # NaN -> pruned
            with torch.no_grad():
                val_loss = nn.functional.mse_loss(model(x_val), y_val).item()
            metrics = epoch_metrics(opt, train_loss=loss.item(), step_time=0.0, val_loss=val_loss)
            report(on_epoch, epoch, val_loss, metrics)
        return RunResult(value=val_loss, metrics={"val_loss": val_loss})
