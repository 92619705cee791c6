"""A user workload as one function: fit y = sin(3x) + noise with a small MLP.

Tune it with `hvadam tune examples/my_tasks.yaml` (the spec names `my_tasks:train`; this
directory, the spec's, is searched first). See docs/workloads.md for the contract.
"""

import torch
from torch import nn


def train(make_optimizer, *, seed, device, options, report):
    g = torch.Generator().manual_seed(0)  # the data is fixed; the seed drives the model
    x = torch.rand(512, 1, generator=g) * 4 - 2
    y = torch.sin(3 * x) + 0.1 * torch.randn(512, 1, generator=g)
    x, y = x.to(device), y.to(device)
    (x_train, x_val), (y_train, y_val) = x.split([384, 128]), y.split([384, 128])
    hidden = options["hidden"]
    model = nn.Sequential(nn.Linear(1, hidden), nn.Tanh(), nn.Linear(hidden, 1)).to(device)
    opt = make_optimizer(model.parameters())  # or a list of param-group dicts
    for epoch in range(options["epochs"]):
        for batch in torch.randperm(384, device=device).split(options["batch_size"]):
            opt.zero_grad()
            loss = nn.functional.mse_loss(model(x_train[batch]), y_train[batch])
            loss.backward()
            opt.step()
        with torch.no_grad():
            val_loss = nn.functional.mse_loss(model(x_val), y_val).item()
        report(epoch + 1, val_loss, train_loss=loss.item())  # may raise to prune the trial
    return val_loss
