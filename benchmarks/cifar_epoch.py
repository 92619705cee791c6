"""One CIFAR-10 ResNet-34 epoch: the workload's on-device pipeline against a torchvision DataLoader.

Both pipelines train the same model with the same optimizer (HVAdam when the `hvadam` package
provides it, else torch.optim.Adam) and the same precision settings (bf16 autocast and
channels-last on CUDA); only the input pipeline differs:

- workload: `cifar10-resnet34` as a campaign runs it (whole data set on the device as uint8,
  crop+flip batched on the device);
- dataloader: torchvision.datasets.CIFAR10 + RandomCrop/RandomHorizontalFlip/ToTensor/Normalize
  in a DataLoader with `--workers` processes.

It times the last of `--epochs` training epochs (the first includes cuDNN autotuning) and samples
GPU utilisation during it. Without `--data-dir` it writes 50000 + 10000 synthetic images in
CIFAR's on-disk format to a temporary directory.

    python benchmarks/cifar_epoch.py --device cuda                      # the real measurement
    python benchmarks/cifar_epoch.py --device cpu --max-batches 3 --width 0.25 --train-images 2000
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch
from torch import nn

from studies.workloads import get_workload
from studies.workloads.cifar import (
    DATASETS,
    synthetic_cifar,
    torchvision_dataset,
    write_cifar,
)
from studies.workloads.cifar_models import build_model


def make_optimizer_factory():
    try:
        from hvadam import HVAdam

        return "hvadam.HVAdam", lambda params: HVAdam(params, lr=1e-3, weight_decay=5e-4)
    except (ImportError, AttributeError):
        return "torch.optim.Adam (hvadam.HVAdam not available)", lambda params: torch.optim.Adam(
            params, lr=1e-3, weight_decay=5e-4
        )


class GpuSampler:
    """Samples GPU utilisation (%) every 0.2 s in a background thread, with timestamps."""

    def __init__(self, device: torch.device) -> None:
        self.samples: list[tuple[float, float]] = []
        self.source = "n/a"
        self._stop = threading.Event()
        self._read = None
        if device.type != "cuda":
            return
        index = device.index if device.index is not None else torch.cuda.current_device()
        if shutil.which("nvidia-smi"):
            self.source = "nvidia-smi"

            def read() -> float:
                out = subprocess.run(
                    ["nvidia-smi", "--query-gpu=utilization.gpu", "--format=csv,noheader,nounits", f"--id={index}"],
                    capture_output=True, text=True, timeout=5, check=True,
                )  # fmt: skip
                return float(out.stdout.strip().splitlines()[0])

            self._read = read
        else:
            with contextlib.suppress(Exception):
                torch.cuda.utilization(index)
                self.source = "torch.cuda.utilization"
                self._read = lambda: float(torch.cuda.utilization(index))
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while not self._stop.is_set():
            with contextlib.suppress(Exception):
                self.samples.append((time.perf_counter(), self._read()))
            self._stop.wait(0.2)

    def __enter__(self) -> GpuSampler:
        if self._read is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._read is not None:
            self._thread.join()

    def mean(self, start: float, end: float) -> float | None:
        window = [u for t, u in self.samples if start <= t <= end]
        return sum(window) / len(window) if window else None


def run_workload(args, data_dir: str, make_opt, device: torch.device) -> dict:
    w = get_workload(
        "cifar10-resnet34", data_dir=data_dir, epochs=args.epochs, batch_size=args.batch_size,
        max_batches=args.max_batches, width=args.width, eval_batch_size=1000,
    )  # fmt: skip
    epochs: list[tuple[float, float, float]] = []  # (end, seconds, step_time)

    def on_epoch(report) -> None:
        # the report comes after evaluation; the training epoch ended before it
        epochs.append(
            (time.perf_counter(), report.metrics["epoch_time"], report.metrics["step_time"])
        )

    with GpuSampler(device) as gpu:
        w.run(make_opt, seed=0, device=str(device), on_epoch=on_epoch)
    seconds = epochs[-1][1]
    batches = round(seconds / epochs[-1][2])
    # evaluation follows the training epoch; approximate the window by its duration
    util = gpu.mean(epochs[-1][0] - seconds - 5.0, epochs[-1][0]) if gpu.samples else None
    return {"seconds": seconds, "batches": batches, "util": util, "util_source": gpu.source}


def run_dataloader(args, data_dir: str, make_opt, device: torch.device) -> dict:
    from torch.utils.data import DataLoader
    from torchvision import transforms

    _, _, classes, mean, std = DATASETS["cifar10"]
    transform = transforms.Compose(
        [
            transforms.RandomCrop(32, padding=4),
            transforms.RandomHorizontalFlip(),
            transforms.ToTensor(),
            transforms.Normalize(mean, std),
        ]
    )
    dataset = torchvision_dataset("cifar10")(
        root=data_dir, train=True, download=False, transform=transform
    )
    cuda = device.type == "cuda"
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, num_workers=args.workers,
        pin_memory=cuda, persistent_workers=args.workers > 0, drop_last=False,
    )  # fmt: skip
    torch.manual_seed(0)
    memory_format = torch.channels_last if cuda else torch.contiguous_format
    if cuda:
        torch.backends.cudnn.benchmark = True
    # the same model; Normalize is the identity here except for its (tiny) cost, so leave it out
    model = build_model("resnet34", num_classes=classes, width=args.width).to(
        device, memory_format=memory_format
    )
    optimizer = make_opt(model.parameters())
    loss_fn = nn.CrossEntropyLoss()
    times = []
    with GpuSampler(device) as gpu:
        for _ in range(args.epochs):
            model.train()
            if cuda:
                torch.cuda.synchronize(device)
            start = time.perf_counter()
            batches = 0
            for x, y in loader:
                if args.max_batches is not None and batches >= args.max_batches:
                    break
                x = x.to(device, non_blocking=True).contiguous(memory_format=memory_format)
                y = y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16, enabled=cuda):
                    loss = loss_fn(model(x).float(), y)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                batches += 1
            if cuda:
                torch.cuda.synchronize(device)
            end = time.perf_counter()
            times.append((start, end, batches))
    start, end, batches = times[-1]
    return {
        "seconds": end - start,
        "batches": batches,
        "util": gpu.mean(start, end),
        "util_source": gpu.source,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--max-batches", type=int, default=None, help="batches per epoch (quick checks)"
    )
    parser.add_argument(
        "--data-dir", default=None, help="directory with cifar-10-batches-py/ (else synthetic)"
    )
    parser.add_argument(
        "--workers", type=int, default=min(8, os.cpu_count() or 1), help="DataLoader workers"
    )
    parser.add_argument(
        "--epochs", type=int, default=2, help="epochs per pipeline; the last is timed"
    )
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument(
        "--width", type=float, default=1.0, help="channel multiplier (1.0: the real ResNet-34)"
    )
    parser.add_argument("--train-images", type=int, default=50000, help="synthetic training images")
    args = parser.parse_args()
    device = torch.device(args.device)

    name, make_opt = make_optimizer_factory()
    print(f"optimizer: {name}; device: {device}; torch {torch.__version__}")
    with tempfile.TemporaryDirectory(prefix="hvadam-cifar-") as tmp:
        data_dir = args.data_dir
        if data_dir is None:
            t0 = time.perf_counter()
            write_cifar(
                tmp, "cifar10",
                train=synthetic_cifar(args.train_images, 10, seed=0),
                test=synthetic_cifar(10000 * args.train_images // 50000 or 100, 10, seed=1),
            )  # fmt: skip
            data_dir = tmp
            print(
                f"wrote synthetic CIFAR-10 ({args.train_images} train images) in {time.perf_counter() - t0:.1f} s"
            )
        results = {
            "workload (on-device)": run_workload(args, data_dir, make_opt, device),
            f"DataLoader ({args.workers} workers)": run_dataloader(
                args, data_dir, make_opt, device
            ),
        }
    ours = results["workload (on-device)"]["seconds"]
    print(
        f"\n{'pipeline':<26} {'batches':>8} {'s/epoch':>9} {'img/s':>9} {'GPU util %':>11} {'time / workload':>16}"
    )
    for label, r in results.items():
        util = "n/a" if r["util"] is None else f"{r['util']:.0f}"
        images = r["batches"] * args.batch_size
        print(
            f"{label:<26} {r['batches']:>8} {r['seconds']:>9.2f} {images / r['seconds']:>9.0f} "
            f"{util:>11} {r['seconds'] / ours:>15.2f}x"
        )
    print(
        f"(GPU utilisation from {results['workload (on-device)']['util_source']}; last of {args.epochs} epochs timed)"
    )


if __name__ == "__main__":
    main()
