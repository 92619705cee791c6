"""Tiny data sets in the real on-disk formats (CIFAR pickles, PTB text), for the workload tests."""

from __future__ import annotations

import random
from pathlib import Path

from studies.workloads.cifar import DATASETS, synthetic_cifar, write_cifar


def write_tiny_cifar(root: Path, dataset: str, *, train: int = 256, test: int = 100) -> Path:
    """A learnable CIFAR look-alike (each class its own mean colour) under `root`."""
    classes = DATASETS[dataset][2]
    write_cifar(
        root,
        dataset,
        train=synthetic_cifar(train, classes, seed=0),
        test=synthetic_cifar(test, classes, seed=1),
    )
    return root


def _sentence(rng: random.Random) -> str:
    # A tiny grammar (det noun verb prep det noun) so that a language model can learn it.
    det = ("the", "a")
    return " ".join(
        (
            rng.choice(det),
            rng.choice(("cat", "dog", "bird")),
            rng.choice(("sat", "ran", "slept")),
            rng.choice(("on", "near")),
            rng.choice(det),
            rng.choice(("mat", "<unk>", "N")),
        )
    )


def write_tiny_ptb(root: Path, *, sentences: tuple[int, int, int] = (400, 60, 60)) -> Path:
    """ptb.train.txt / ptb.valid.txt / ptb.test.txt in PTB's format (leading space, one sentence a line)."""
    rng = random.Random(0)
    root.mkdir(parents=True, exist_ok=True)
    for split, count in zip(("train", "valid", "test"), sentences, strict=True):
        lines = "".join(f" {_sentence(rng)} \n" for _ in range(count))
        (root / f"ptb.{split}.txt").write_text(lines, encoding="utf-8")
    return root
