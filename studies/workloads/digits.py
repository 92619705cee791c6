"""scikit-learn's bundled handwritten digits (8x8, 10 classes) with a small MLP or CNN.

The project's embedded default: real data that ships with scikit-learn, seconds on a CPU.
The 1797 images are split once, stratified, into train/validation/test (60/20/20 by default,
fixed by `split_seed` so that every run sees the same split) and standardised with the training
set's per-pixel mean and standard deviation. The run's seed drives the model's initialisation
and the order of the mini-batches. Metric: validation accuracy (maximise); the test accuracy
of the final model is in the final metrics.
"""

from __future__ import annotations

import functools
import importlib.util
from collections.abc import Mapping
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from studies.workloads._base import (
    DataNotFoundError,
    MakeOptimizer,
    OnEpoch,
    Option,
    OptionError,
    RunResult,
    Stopwatch,
    Workload,
    check_finite,
    current_lr,
    epoch_metrics,
    report,
    resolve_device,
    restore_optimizer,
    seed_everything,
)
from studies.workloads._schedule import lr_schedule


def digits_file() -> Path:
    """scikit-learn's bundled `digits.csv.gz` (1797 rows: 64 pixel values, then the label)."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        raise DataNotFoundError(
            "the digits workloads read scikit-learn's bundled digits; install scikit-learn"
        )
    path = Path(next(iter(spec.submodule_search_locations))) / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():
        raise DataNotFoundError(f"scikit-learn's bundled digits are missing: {path}")
    return path


@functools.lru_cache(maxsize=1)
def load_digits() -> tuple[np.ndarray, np.ndarray]:
    """The 1797 digits as (x float32 [n, 64] with pixel values 0..16, y int64 [n]).

    The same data as `sklearn.datasets.load_digits`, read straight from its CSV file: importing
    scikit-learn takes about 2 s, more than a whole digits trial.
    """
    data = np.loadtxt(digits_file(), delimiter=",", dtype=np.float64)
    return data[:, :-1].astype(np.float32), data[:, -1].astype(np.int64)


def stratified_split(y: np.ndarray, fractions: tuple[float, ...], seed: int) -> list[np.ndarray]:
    """Split the indices of `y` into parts of the given fractions (the first part takes the
    rest), each with every class in the same proportion up to rounding; sorted indices."""
    rng = np.random.default_rng(seed)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for label in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == label))
        counts = [round(f * len(members)) for f in fractions]
        start = 0
        for part, count in zip(parts[1:], counts, strict=True):
            part.append(members[start : start + count])
            start += count
        parts[0].append(members[start:])
    return [np.sort(np.concatenate(p)) for p in parts]


@functools.lru_cache(maxsize=4)
def load_split(
    split_seed: int, val_fraction: float, test_fraction: float
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """The standardised digits split as float32 arrays: {"train"|"val"|"test": (x, y)}."""
    x, y = load_digits()
    train, val, test = stratified_split(y, (val_fraction, test_fraction), split_seed)
    mean = x[train].mean(axis=0)
    std = x[train].std(axis=0)
    std[std == 0] = 1.0  # border pixels that are always 0 in the training set
    return {
        name: (((x[idx] - mean) / std).astype(np.float32), y[idx])
        for name, idx in (("train", train), ("val", val), ("test", test))
    }


def build_model(kind: str, hidden: int) -> nn.Module:
    if kind == "mlp":
        return nn.Sequential(nn.Linear(64, hidden), nn.ReLU(), nn.Linear(hidden, 10))
    # Small CNN on the 1x8x8 image: two 3x3 convolutions, one 2x2 pooling, a linear head.
    return nn.Sequential(
        nn.Unflatten(1, (1, 8, 8)),
        nn.Conv2d(1, hidden // 2, 3, padding=1),
        nn.ReLU(),
        nn.Conv2d(hidden // 2, hidden, 3, padding=1),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(hidden * 16, 10),
    )


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    model.eval()
    return float((model(x).argmax(dim=1) == y).float().mean())


class Digits(Workload):
    """Digits classification with an MLP (`digits-mlp`) or a small CNN (`digits-cnn`)."""

    metric = "val_accuracy"
    direction = "maximize"
    unit = "epoch"
    supports_checkpoints = True
    OPTIONS: ClassVar[dict[str, Option]] = {
        "model": Option("mlp", "str", "network", choices=("mlp", "cnn")),
        "epochs": Option(None, "int", "training epochs (null: 20 for mlp, 15 for cnn)", low=1, nullable=True),
        "batch_size": Option(32, "int", "mini-batch size", low=1),
        "hidden": Option(None, "int", "hidden units (mlp) / channels of the last conv (cnn); null: 128 / 32", low=2, nullable=True),
        "split_seed": Option(0, "int", "seed of the train/validation/test split", low=0),
        "val_fraction": Option(0.2, "float", "validation share of the data", low=0.05, high=0.45),
        "test_fraction": Option(0.2, "float", "test share of the data", low=0.05, high=0.45),
    }  # fmt: skip

    def _configure(self) -> None:
        o = self.options
        if o["epochs"] is None:
            o["epochs"] = 20 if o["model"] == "mlp" else 15
        if o["hidden"] is None:
            o["hidden"] = 128 if o["model"] == "mlp" else 32
        if o["val_fraction"] + o["test_fraction"] > 0.6:
            raise OptionError(
                "options 'val_fraction' + 'test_fraction' must leave at least 40% for training, "
                f"got {o['val_fraction']} + {o['test_fraction']}"
            )
        self.max_epochs = o["epochs"]

    def prepare(self) -> None:
        o = self.options
        load_split(o["split_seed"], o["val_fraction"], o["test_fraction"])

    def run(
        self,
        make_optimizer: MakeOptimizer,
        *,
        seed: int,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
        resume: Mapping[str, Any] | None = None,
    ) -> RunResult:
        seed_everything(seed)
        dev = resolve_device(device)
        o = self.options
        split = load_split(o["split_seed"], o["val_fraction"], o["test_fraction"])
        data = {
            k: (torch.from_numpy(x).to(dev), torch.from_numpy(y).to(dev))
            for k, (x, y) in split.items()
        }
        x_train, y_train = data["train"]

        model = build_model(o["model"], o["hidden"]).to(dev)
        optimizer = make_optimizer(model.parameters())
        loss_fn = nn.CrossEntropyLoss()
        order = torch.Generator().manual_seed(int(seed))
        n, bs = len(y_train), o["batch_size"]

        best, value, train_loss, start = -1.0, 0.0, float("nan"), 1
        if resume is not None:
            model.load_state_dict(resume["model"])
            restore_optimizer(optimizer, resume["optimizer"])
            order.set_state(resume["order"])
            torch.set_rng_state(resume["rng"])
            best, value, train_loss = resume["best"], resume["value"], resume["train_loss"]
            start = int(resume["epoch"]) + 1
        per_epoch = -(-n // bs)
        schedule = lr_schedule(
            make_optimizer,
            optimizer,
            self.max_epochs * per_epoch,
            start_step=(start - 1) * per_epoch,
        )

        for epoch in range(start, self.max_epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=order).to(dev)
            total = torch.zeros((), device=dev)
            watch = Stopwatch(dev)
            steps = 0
            lr_used = current_lr(optimizer)
            with watch:
                for i in range(0, n, bs):
                    idx = perm[i : i + bs]
                    optimizer.zero_grad(set_to_none=True)
                    loss = loss_fn(model(x_train[idx]), y_train[idx])
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total += loss.detach() * len(idx)
                    steps += 1
            train_loss = float(total) / n
            check_finite(train_loss, epoch=epoch, what="training loss")
            value = accuracy(model, *data["val"])
            best = max(best, value)
            metrics = epoch_metrics(
                optimizer,
                train_loss=train_loss,
                step_time=watch.total / steps,
                val_accuracy=value,
            )
            metrics["lr"] = lr_used  # the learning rate of the epoch's first step

            def state(
                epoch: int = epoch,
                value: float = value,
                best: float = best,
                loss: float = train_loss,
            ) -> dict[str, Any]:
                return {
                    "epoch": epoch,
                    "model": model.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "order": order.get_state(),
                    "rng": torch.get_rng_state(),
                    "best": best,
                    "value": value,
                    "train_loss": loss,
                }

            report(on_epoch, epoch, value, metrics, state)

        final = {
            "val_accuracy": value,
            "test_accuracy": accuracy(model, *data["test"]),
            "train_accuracy": accuracy(model, *data["train"]),
            "best_val_accuracy": best,
            "train_loss": train_loss,
        }
        return RunResult(
            value=value,
            metrics=final,
            extras={"split_sizes": {k: len(v[1]) for k, v in split.items()}},
        )
