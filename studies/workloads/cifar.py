"""CIFAR-10/100 image classification with VGG11, ResNet34 or DenseNet121 (the AdaBelief/HVAdam protocol).

Protocol (the published one, all defaults): batch 128, 200 epochs, the learning rate multiplied
by 0.1 after epoch 150 (a `MultiStepLR` on the optimizer; `lr_milestones` defaults to 75% of
`epochs`), random crop 32 with padding 4 plus horizontal flip, cross-entropy. Weight decay
(5e-4 in the published runs) is a hyperparameter of the optimizer, so it belongs to the search
space, not to this workload.

Metric: `val_accuracy` is the accuracy on the *test* set after each epoch, as in the published
protocol (their numbers are the best test accuracy over the 200 epochs, reported here as
`best_val_accuracy`). For an honest hyperparameter search set `holdout=5000`: that many training
images are then held out (fixed by `split_seed`) as the validation set, and the test accuracy
is reported only once, at the end, as `test_accuracy`.

Data: read from `data_dir` in CIFAR's usual on-disk format (`cifar-10-batches-py/` or
`cifar-100-python/`, the pickled Python batches), through torchvision's dataset classes with
`download=False`. The whole data set is kept on the device as uint8; cropping and flipping run
batched on the device (no per-sample Python, no DataLoader workers), the same code on CPU and
GPU. On CUDA the model runs in channels-last layout under bf16 autocast by default.
"""

from __future__ import annotations

import functools
import math
import os
import pickle
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
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
    seed_everything,
)
from studies.workloads._schedule import lr_schedule
from studies.workloads.cifar_models import MODELS, build_model

# dataset -> (folder, files, classes, per-channel mean, per-channel std)
DATASETS: dict[str, tuple[str, tuple[str, ...], int, tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": (
        "cifar-10-batches-py",
        ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4", "data_batch_5", "test_batch", "batches.meta"),
        10,
        (0.4914, 0.4822, 0.4465),
        (0.2023, 0.1994, 0.2010),
    ),
    "cifar100": (
        "cifar-100-python",
        ("train", "test", "meta"),
        100,
        (0.5071, 0.4865, 0.4409),
        (0.2673, 0.2564, 0.2762),
    ),
}  # fmt: skip


@dataclass(frozen=True)
class CifarArrays:
    """A CIFAR data set as uint8 NCHW images and int64 labels (CPU tensors)."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    classes: tuple[str, ...]


def check_data_dir(data_dir: str | os.PathLike[str], dataset: str) -> Path:
    """The dataset's folder under `data_dir`; `DataNotFoundError` naming what is missing."""
    folder, files, *_ = DATASETS[dataset]
    root = Path(data_dir).expanduser() / folder
    missing = [f for f in files if not (root / f).is_file()]
    if missing:
        raise DataNotFoundError(
            f"{dataset} data not found: expected the directory {root} with the files "
            f"{', '.join(files)} (CIFAR's python version, as unpacked from "
            f"{'cifar-10-python.tar.gz' if dataset == 'cifar10' else 'cifar-100-python.tar.gz'}); "
            f"missing: {', '.join(missing)}. Set the workload option data_dir (or HVADAM_DATA_DIR) "
            "to the directory that contains it."
        )
    return root


# What CIFAR's pickled batches hold: dicts, lists, strings, bytes and NumPy arrays. Nothing
# else may be named in them (a pickle can name any function, and loading it calls it).
_DATA_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy.core.multiarray", "scalar"),
    ("numpy._core.multiarray", "scalar"),
}


class _DataUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _DATA_GLOBALS:
            raise pickle.UnpicklingError(
                f"{module}.{name} is not allowed in a data file (only arrays, lists, dicts, "
                f"strings and numbers)"
            )
        return super().find_class(module, name)


def load_data_pickle(path: str | os.PathLike[str]) -> Any:
    """A CIFAR batch or meta file, read without running code from it.

    Data directories are often shared (a cluster's scratch space): an unchecked pickle there
    would run whatever its writer put in it. `DataNotFoundError` names a file that asks for more.
    """
    with open(path, "rb") as fh:
        try:
            return _DataUnpickler(fh, encoding="latin1").load()
        except (pickle.UnpicklingError, EOFError, ValueError) as exc:
            raise DataNotFoundError(f"{path}: not a CIFAR data file: {exc}") from None


def torchvision_dataset(dataset: str, *, verify_checksums: bool = False) -> type:
    """torchvision's CIFAR10/CIFAR100 class; without `verify_checksums`, one that skips the MD5 check."""
    from torchvision.datasets import CIFAR10, CIFAR100

    base = CIFAR10 if dataset == "cifar10" else CIFAR100
    if verify_checksums:
        return base

    class Unverified(base):  # type: ignore[misc, valid-type]
        """torchvision's reader without the MD5 check (which only accepts the official files).

        Without the check any file could be there, so the batches are read with
        `load_data_pickle` (data only), not torchvision's plain `pickle.load`.
        """

        def __init__(self, root: str, train: bool = True, download: bool = False) -> None:
            import numpy as np

            self.root = root
            self.train = train
            self.transform = self.target_transform = None
            if not self._check_integrity():
                raise RuntimeError("Dataset not found or corrupted.")
            data, targets = [], []
            for name, _ in self.train_list if train else self.test_list:
                entry = load_data_pickle(os.path.join(root, self.base_folder, name))
                data.append(entry["data"])
                targets.extend(entry["labels"] if "labels" in entry else entry["fine_labels"])
            self.data = np.vstack(data).reshape(-1, 3, 32, 32).transpose((0, 2, 3, 1))
            self.targets = targets
            self._load_meta()

        def _check_integrity(self) -> bool:
            names = [n for n, _ in self.train_list + self.test_list]
            return all(os.path.isfile(os.path.join(self.root, self.base_folder, n)) for n in names)

        def _load_meta(self) -> None:
            path = os.path.join(self.root, self.base_folder, self.meta["filename"])
            self.classes = load_data_pickle(path)[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    return Unverified


def load_cifar(
    data_dir: str | os.PathLike[str], dataset: str, *, verify_checksums: bool = False
) -> CifarArrays:
    """Read CIFAR-10/100 from its usual on-disk format (cached per process)."""
    root = check_data_dir(data_dir, dataset)
    stamp = tuple((f, (root / f).stat().st_mtime_ns) for f in DATASETS[dataset][1])
    return _load_cached(str(root.parent.resolve()), dataset, verify_checksums, stamp)


@functools.lru_cache(maxsize=2)
def _load_cached(root: str, dataset: str, verify: bool, stamp: tuple[Any, ...]) -> CifarArrays:
    klass = torchvision_dataset(dataset, verify_checksums=verify)
    parts = []
    for train in (True, False):
        try:
            ds = klass(root=root, train=train, download=False)
        except RuntimeError as exc:  # torchvision's "not found or corrupted" (checksums)
            raise DataNotFoundError(f"{dataset} under {root}: {exc}") from None
        images = torch.from_numpy(ds.data).permute(0, 3, 1, 2).contiguous()  # NHWC -> NCHW
        labels = torch.as_tensor(ds.targets, dtype=torch.int64)
        if images.dtype != torch.uint8 or images.shape[1:] != (3, 32, 32):
            raise DataNotFoundError(f"{dataset} under {root}: images are not uint8 3x32x32")
        parts += [images, labels]
    train_x, train_y, test_x, test_y = parts
    return CifarArrays(train_x, train_y, test_x, test_y, classes=tuple(ds.classes))


def augment(images: torch.Tensor, generator: torch.Generator, pad: int = 4) -> torch.Tensor:
    """Random crop (zero padding `pad`) and random horizontal flip of a uint8 NCHW batch.

    One gather over the padded batch: per image a random offset and a flip decide which padded
    pixel lands where. Same distribution as torchvision's RandomCrop(32, padding=4) followed by
    RandomHorizontalFlip().
    """
    n, _, h, w = images.shape
    dev = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    oy = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=dev)
    ox = torch.randint(0, 2 * pad + 1, (n, 1), generator=generator, device=dev)
    flip = torch.rand((n, 1), generator=generator, device=dev) < 0.5
    ar_h = torch.arange(h, device=dev)
    ar_w = torch.arange(w, device=dev)
    rows = oy + ar_h  # (n, h)
    cols = ox + torch.where(flip, (w - 1) - ar_w, ar_w)  # (n, w)
    batch = torch.arange(n, device=dev)[:, None, None, None]
    chan = torch.arange(images.shape[1], device=dev)[None, :, None, None]
    return padded[batch, chan, rows[:, None, :, None], cols[:, None, None, :]]


class Normalize(nn.Module):
    """uint8 images -> normalised float images (the first layer of every model here)."""

    scale: torch.Tensor
    shift: torch.Tensor

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]) -> None:
        super().__init__()
        std_t = torch.tensor(std).view(1, -1, 1, 1)
        self.register_buffer("scale", 1.0 / (255.0 * std_t), persistent=False)
        self.register_buffer(
            "shift", -torch.tensor(mean).view(1, -1, 1, 1) / std_t, persistent=False
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.addcmul(self.shift, x.float(), self.scale)


class Cifar(Workload):
    """CIFAR-10/100 with VGG11, ResNet34 or DenseNet121 (registered as `cifar10-resnet34` etc.)."""

    metric = "val_accuracy"
    direction = "maximize"
    unit = "epoch"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "dataset": Option("cifar10", "str", "data set", choices=tuple(DATASETS)),
        "model": Option("resnet34", "str", "network", choices=MODELS),
        "data_dir": Option(None, "str", "directory holding cifar-10-batches-py/ or cifar-100-python/ (null: $HVADAM_DATA_DIR, else ./data)", nullable=True),
        "epochs": Option(200, "int", "training epochs", low=1),
        "batch_size": Option(128, "int", "mini-batch size", low=2),
        "lr_milestones": Option(None, "int_list", "epochs after which the learning rate is multiplied by lr_gamma (null: [75% of epochs])", low=1, nullable=True),
        "lr_gamma": Option(0.1, "float", "learning-rate factor at each milestone", low=0.0, high=1.0),
        "max_batches": Option(None, "int", "at most this many batches per epoch (smoke runs)", low=1, nullable=True),
        "holdout": Option(0, "int", "training images held out as validation set (0: validate on the test set, as published)", low=0),
        "split_seed": Option(0, "int", "seed of the holdout split", low=0),
        "augment": Option(True, "bool", "random crop (pad 4) and horizontal flip"),
        "width": Option(1.0, "float", "channel multiplier (1.0 is the published model)", low=0.01, high=4.0),
        "amp": Option("auto", "str", "mixed precision: auto (bf16 on CUDA), bf16, off", choices=("auto", "bf16", "off")),
        "channels_last": Option(None, "bool", "channels-last memory layout (null: on for CUDA)", nullable=True),
        "eval_batch_size": Option(1000, "int", "batch size for evaluation", low=1),
        "verify_checksums": Option(False, "bool", "check the official MD5 sums of the files"),
    }  # fmt: skip

    def _configure(self) -> None:
        o = self.options
        if o["data_dir"] is None:
            o["data_dir"] = os.environ.get("HVADAM_DATA_DIR", "data")
        if o["lr_milestones"] is None:
            o["lr_milestones"] = [max(1, round(0.75 * o["epochs"]))]
        if sorted(o["lr_milestones"]) != o["lr_milestones"]:
            raise OptionError(
                f"option 'lr_milestones' must be increasing, got {o['lr_milestones']}"
            )
        self.max_epochs = o["epochs"]

    def data(self) -> CifarArrays:
        """The data set read from `data_dir` (raises `DataNotFoundError` when missing)."""
        o = self.options
        return load_cifar(o["data_dir"], o["dataset"], verify_checksums=o["verify_checksums"])

    def prepare(self) -> None:
        self.data()

    def run(
        self,
        make_optimizer: MakeOptimizer,
        *,
        seed: int,
        device: str = "cpu",
        on_epoch: OnEpoch | None = None,
    ) -> RunResult:
        o = self.options
        dev = resolve_device(device)
        arrays = self.data()
        seed_everything(seed)
        _, _, num_classes, mean, std = DATASETS[o["dataset"]]
        if int(arrays.train_y.max()) >= num_classes or int(arrays.test_y.min()) < 0:
            raise DataNotFoundError(
                f"{o['dataset']} labels outside 0..{num_classes - 1} in {o['data_dir']}"
            )

        train_x, train_y = arrays.train_x, arrays.train_y
        if o["holdout"]:
            if o["holdout"] >= len(train_y) - 1:
                raise OptionError(
                    f"option 'holdout' = {o['holdout']} leaves no training data ({len(train_y)} images)"
                )
            perm = torch.randperm(
                len(train_y), generator=torch.Generator().manual_seed(o["split_seed"])
            )
            keep, held = perm[: -o["holdout"]], perm[-o["holdout"] :]
            val_x, val_y = train_x[held], train_y[held]
            train_x, train_y = train_x[keep], train_y[keep]
        else:
            val_x, val_y = arrays.test_x, arrays.test_y
        train_x, train_y = train_x.to(dev), train_y.to(dev)
        val_x, val_y = val_x.to(dev), val_y.to(dev)

        cuda = dev.type == "cuda"
        use_bf16 = o["amp"] == "bf16" or (o["amp"] == "auto" and cuda)
        channels_last = cuda if o["channels_last"] is None else o["channels_last"]
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        if cuda:
            torch.backends.cudnn.benchmark = True

        net = build_model(o["model"], num_classes=num_classes, width=o["width"])
        model = nn.Sequential(Normalize(mean, std), net).to(dev).to(memory_format=memory_format)
        optimizer = make_optimizer(model.parameters())
        loss_fn = nn.CrossEntropyLoss()
        order = torch.Generator().manual_seed(int(seed))
        crops = torch.Generator(device=dev).manual_seed(int(seed))

        def autocast() -> torch.autocast:
            return torch.autocast(dev.type, dtype=torch.bfloat16, enabled=use_bf16)

        @torch.no_grad()
        def evaluate(x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
            model.eval()
            correct = torch.zeros((), device=dev)
            loss = torch.zeros((), device=dev)
            for i in range(0, len(y), o["eval_batch_size"]):
                xb = x[i : i + o["eval_batch_size"]].contiguous(memory_format=memory_format)
                with autocast():
                    out = model(xb)
                loss += F.cross_entropy(out.float(), y[i : i + len(xb)], reduction="sum")
                correct += (out.argmax(dim=1) == y[i : i + len(xb)]).sum()
            return float(correct) / len(y), float(loss) / len(y)

        n, bs = len(train_y), o["batch_size"]
        batches = math.ceil(n / bs)
        if n % bs == 1:
            batches -= 1  # batch norm cannot train on a last batch of one image
        if o["max_batches"] is not None:
            batches = min(batches, o["max_batches"])
        # A searched schedule (per step) replaces the built-in step decay (per epoch).
        schedule = lr_schedule(make_optimizer, optimizer, self.max_epochs * batches)
        scheduler = None
        if not schedule.active:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=o["lr_milestones"], gamma=o["lr_gamma"]
            )

        best, best_epoch, value, epoch_times = -1.0, 0, 0.0, []
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            perm = torch.randperm(n, generator=order).to(dev)
            total = torch.zeros((), device=dev)
            correct = torch.zeros((), device=dev)
            seen = 0
            watch = Stopwatch(dev)
            lr_used = current_lr(optimizer)
            with watch:
                for b in range(batches):
                    idx = perm[b * bs : (b + 1) * bs]
                    xb = train_x[idx]
                    if o["augment"]:
                        xb = augment(xb, crops)
                    xb = xb.contiguous(memory_format=memory_format)
                    yb = train_y[idx]
                    with autocast():
                        out = model(xb)
                        loss = loss_fn(out.float(), yb)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    schedule.step()
                    total += loss.detach() * len(idx)
                    correct += (out.detach().argmax(dim=1) == yb).sum()
                    seen += len(idx)
            epoch_times.append(watch.total)
            train_loss = float(total) / seen
            check_finite(train_loss, epoch=epoch, what="training loss")
            value, val_loss = evaluate(val_x, val_y)
            if value > best:
                best, best_epoch = value, epoch
            metrics = epoch_metrics(
                optimizer,
                train_loss=train_loss,
                step_time=watch.total / batches,
                val_accuracy=value,
                val_loss=val_loss,
                train_accuracy=float(correct) / seen,
                epoch_time=watch.total,
            )
            metrics["lr"] = lr_used
            if scheduler is not None:
                scheduler.step()
            report(on_epoch, epoch, value, metrics)

        if o["holdout"]:
            test_accuracy, test_loss = evaluate(arrays.test_x.to(dev), arrays.test_y.to(dev))
        else:
            test_accuracy, test_loss = value, val_loss
        final = {
            "val_accuracy": value,
            "best_val_accuracy": best,
            "best_epoch": float(best_epoch),
            "test_accuracy": test_accuracy,
            "test_loss": test_loss,
            "train_loss": train_loss,
            "epoch_time": sum(epoch_times) / len(epoch_times),
        }
        extras = {
            "dataset": o["dataset"],
            "model": o["model"],
            "train_images": n,
            "validation": "holdout" if o["holdout"] else "test set (published protocol)",
            "parameters": sum(p.numel() for p in net.parameters()),
            "amp": "bf16" if use_bf16 else "off",
            "channels_last": channels_last,
        }
        return RunResult(value=value, metrics=final, extras=extras)


# ---- writing the on-disk format (synthetic data for tests, smoke runs and benchmarks) -----------


class _Python2Pickler(pickle._Pickler):
    """Pickles text and bytes as Python 2 `str`, like the official CIFAR files.

    Read back with `encoding="latin1"` (torchvision) the keys are `str`; with
    `encoding="bytes"` (the CIFAR website's recipe) they are `b"data"`, `b"labels"`, ...
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def _save_py2_str(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else bytes(obj)
        pickler: Any = self  # the pure-Python pickler's write and memoize are not in typeshed
        if len(data) < 256:
            pickler.write(pickle.SHORT_BINSTRING + bytes([len(data)]) + data)
        else:
            pickler.write(pickle.BINSTRING + len(data).to_bytes(4, "little") + data)
        pickler.memoize(obj)

    # typeshed types the table's functions as taking an Unpickler
    dispatch[str] = _save_py2_str  # type: ignore[assignment]
    dispatch[bytes] = _save_py2_str  # type: ignore[assignment]


def _dump(path: Path, obj: Any) -> None:
    with open(path, "wb") as f:
        _Python2Pickler(f, protocol=2).dump(obj)


def write_cifar(
    data_dir: str | os.PathLike[str],
    dataset: str,
    *,
    train: tuple[Any, Any],
    test: tuple[Any, Any],
    classes: list[str] | None = None,
) -> Path:
    """Write images and labels in CIFAR's on-disk format under `data_dir`; returns the folder.

    `train` and `test` are (images, labels) with images uint8 of shape (N, 3, 32, 32) (NumPy
    or torch) and integer labels. CIFAR-10 gets five training batches, CIFAR-100 one file.
    """
    import numpy as np

    folder, _, num_classes, _, _ = DATASETS[dataset]
    root = Path(data_dir) / folder
    root.mkdir(parents=True, exist_ok=True)
    classes = classes or [f"class_{i}" for i in range(num_classes)]
    label_key = "labels" if dataset == "cifar10" else "fine_labels"

    def batch(images: Any, labels: Any, name: str) -> dict[str, Any]:
        x = np.asarray(images, dtype=np.uint8).reshape(len(images), 3 * 32 * 32)
        y = [int(v) for v in np.asarray(labels)]
        entry = {"batch_label": name, label_key: y, "data": x}
        entry["filenames"] = [f"image_{i:05d}.png" for i in range(len(y))]
        if dataset == "cifar100":
            entry["coarse_labels"] = [v // 5 for v in y]
        return entry

    train_x, train_y = train
    if dataset == "cifar10":
        splits = np.array_split(np.arange(len(train_y)), 5)
        for i, idx in enumerate(splits, start=1):
            name = f"training batch {i} of 5"
            _dump(
                root / f"data_batch_{i}",
                batch(np.asarray(train_x)[idx], np.asarray(train_y)[idx], name),
            )
        _dump(root / "test_batch", batch(*test, "testing batch 1 of 1"))
        _dump(
            root / "batches.meta",
            {"num_cases_per_batch": len(splits[0]), "label_names": classes, "num_vis": 3072},
        )
    else:
        _dump(root / "train", batch(*train, "training batch 1 of 1"))
        _dump(root / "test", batch(*test, "testing batch 1 of 1"))
        coarse = [f"superclass_{i}" for i in range(20)]
        _dump(root / "meta", {"fine_label_names": classes, "coarse_label_names": coarse})
    return root


def synthetic_cifar(
    n: int, num_classes: int, *, seed: int = 0, learnable: bool = True
) -> tuple[Any, Any]:
    """Random uint8 images and labels; with `learnable`, each class has its own mean colour."""
    import numpy as np

    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, size=n)
    images = rng.integers(0, 256, size=(n, 3, 32, 32), dtype=np.uint8)
    if learnable:
        # uint8 throughout (the full 50000-image set stays small): noise/4 + 3/4 class colour
        colours = np.random.default_rng(1234).integers(0, 256, size=(num_classes, 3, 1, 1))
        images //= 4
        images += (colours * 3 // 4).astype(np.uint8)[labels]
    return images, labels
