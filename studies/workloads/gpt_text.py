"""`gpt-text`: a GPT-style decoder trained on byte-level text (the Anon paper's language modelling).

The model: learned token (256 bytes) and position embeddings, `n_layer` pre-norm blocks of
causal self-attention (`scaled_dot_product_attention`, flash/SDPA kernels on CUDA) and a 4x GELU
MLP, a final LayerNorm and an output layer tied to the token embedding (nanoGPT's layout; weights
N(0, 0.02), residual projections scaled by 1/sqrt(2 n_layer)). Weight decay applies to the
matrices only: the optimizer gets two param groups, the second (embeddings' positions, biases,
norms) with `weight_decay: 0`. Learning rate: linear warm-up, then cosine decay.

Data: every `.txt` file under `data_dir` (recursively), as bytes; a file goes to validation when
the SHA-256 of its relative path falls in the first `val_percent` of the hash range, so the
split is fixed by the names alone. With `data_dir` null, the corpus is the Python standard
library's own source (`*.py` directly in `sysconfig`'s stdlib directory): real text that ships
on every machine (it differs between Python versions, so numbers compare within one).

Training windows of `context + 1` bytes are drawn uniformly from the concatenated training
bytes (the seed drives the draws and the initialisation). Metric: `val_loss`, the mean
cross-entropy in nats per byte over `eval_batches` x `batch_size` fixed validation windows (the
same windows for every run); `val_bpb` is the same in bits per byte.
"""

from __future__ import annotations

import functools
import hashlib
import math
import os
import sysconfig
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
from studies.workloads._steps import (
    autocast,
    report_steps,
    step_options,
    step_schedule,
    total_steps,
    use_bf16,
)

VOCAB = 256


def stdlib_files() -> list[Path]:
    """The standard library's top-level `.py` files, sorted (the default corpus)."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise DataNotFoundError(f"no Python standard library sources found in {root}")
    return files


def corpus_files(data_dir: str | os.PathLike[str] | None) -> tuple[Path, list[Path]]:
    """The corpus root and its files: `.txt` under `data_dir`, else the stdlib's `.py`."""
    if data_dir is None:
        files = stdlib_files()
        return files[0].parent, files
    root = Path(data_dir).expanduser()
    files = sorted(p for p in root.rglob("*.txt") if p.is_file()) if root.is_dir() else []
    if not files:
        raise DataNotFoundError(
            f"gpt-text data not found: expected .txt files under the directory {root}; set "
            "the workload option data_dir to a directory of text files (or leave it null for "
            "the Python standard library's sources)"
        )
    return root, files


def in_validation(relative: str, val_percent: float) -> bool:
    """Whether a file (by its path relative to the corpus root) belongs to the validation split."""
    digest = int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big")
    return digest / 2**64 * 100 < val_percent


def load_corpus(data_dir: str | None, val_percent: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(train, validation) bytes as uint8 CPU tensors (cached per process while files are unchanged)."""
    root, files = corpus_files(data_dir)
    stamp = tuple((str(p), p.stat().st_mtime_ns) for p in files)
    return _load_cached(str(root), stamp, val_percent)


@functools.lru_cache(maxsize=2)
def _load_cached(
    root: str, stamp: tuple[tuple[str, int], ...], val_percent: float
) -> tuple[torch.Tensor, torch.Tensor]:
    parts: dict[bool, list[bytes]] = {False: [], True: []}
    for path, _ in stamp:
        relative = Path(path).relative_to(root).as_posix()
        parts[in_validation(relative, val_percent)].append(Path(path).read_bytes())
    train, val = (b"\n".join(parts[k]) for k in (False, True))
    if not parts[True] or not parts[False]:
        which = "validation" if not parts[True] else "training"
        raise DataNotFoundError(
            f"gpt-text data in {root}: no file falls in the {which} split ({len(stamp)} files, "
            f"val_percent={val_percent}); add files or change val_percent"
        )
    as_tensor = lambda b: torch.frombuffer(bytearray(b), dtype=torch.uint8)  # noqa: E731
    return as_tensor(train), as_tensor(val)


class Block(nn.Module):
    def __init__(self, d_model: int, n_head: int) -> None:
        super().__init__()
        self.n_head = n_head
        self.ln1 = nn.LayerNorm(d_model)
        self.qkv = nn.Linear(d_model, 3 * d_model)
        self.proj = nn.Linear(d_model, d_model)
        self.ln2 = nn.LayerNorm(d_model)
        self.fc = nn.Linear(d_model, 4 * d_model)
        self.out = nn.Linear(4 * d_model, d_model)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (z.view(b, t, self.n_head, c // self.n_head).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(F.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """A small GPT over bytes: tied embeddings, learned positions, pre-norm blocks."""

    def __init__(self, *, n_layer: int, n_head: int, d_model: int, context: int) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, d_model)
        self.pos = nn.Embedding(context, d_model)
        self.blocks = nn.ModuleList(Block(d_model, n_head) for _ in range(n_layer))
        self.ln = nn.LayerNorm(d_model)
        self.head = nn.Linear(d_model, VOCAB, bias=False)
        self.head.weight = self.tok.weight
        for name, p in self.named_parameters():
            if name.endswith("bias"):
                nn.init.zeros_(p)
            elif p.dim() >= 2:
                std = (
                    0.02 / math.sqrt(2 * n_layer)
                    if name.endswith(("proj.weight", "out.weight"))
                    else 0.02
                )
                nn.init.normal_(p, 0.0, std)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1], device=idx.device))
        for block in self.blocks:
            x = block(x)
        return self.head(self.ln(x))


def param_groups(model: nn.Module) -> list[dict[str, Any]]:
    """Matrices (decayed) and the rest (no weight decay), as in nanoGPT-style training.

    The tied embedding/output matrix is a matrix; position embeddings are not decayed.
    """
    decay: list[nn.Parameter] = []
    no_decay: list[nn.Parameter] = []
    for name, p in model.named_parameters():
        (decay if p.dim() >= 2 and not name.startswith("pos.") else no_decay).append(p)
    return [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]


def sample_windows(
    data: torch.Tensor, count: int, length: int, generator: torch.Generator
) -> torch.Tensor:
    starts = torch.randint(0, len(data) - length + 1, (count,), generator=generator)
    return torch.stack([data[s : s + length] for s in starts.tolist()]).long()


class GPTText(Workload):
    """Byte-level GPT language modelling on a directory of text (or the stdlib's sources)."""

    metric = "val_loss"
    direction = "minimize"
    unit = "step"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "data_dir": Option(None, "str", "directory of .txt files (null: the Python standard library's sources)", nullable=True),
        "val_percent": Option(10.0, "float", "share of files (by name hash) in the validation split, percent", low=0.1, high=90.0),
        "n_layer": Option(2, "int", "transformer blocks", low=1),
        "n_head": Option(2, "int", "attention heads", low=1),
        "d_model": Option(64, "int", "model width", low=2),
        "context": Option(64, "int", "context length in bytes", low=2),
        "batch_size": Option(16, "int", "sequences per step", low=1),
        **step_options(steps=300, report_every=50, warmup=30),
        "eval_batches": Option(4, "int", "validation batches (fixed windows) per evaluation", low=1),
        "clip": Option(1.0, "float", "gradient-norm clipping (0: none)", low=0.0),
    }  # fmt: skip

    def _configure(self) -> None:
        o = self.options
        if o["d_model"] % o["n_head"]:
            raise OptionError(
                f"option 'd_model' = {o['d_model']} must be a multiple of 'n_head' = {o['n_head']}"
            )
        self.max_epochs = report_steps(o)

    def prepare(self) -> None:
        load_corpus(self.options["data_dir"], self.options["val_percent"])

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
        train, val = load_corpus(o["data_dir"], o["val_percent"])
        length = o["context"] + 1
        for name, data in (("training", train), ("validation", val)):
            if len(data) < length:
                raise DataNotFoundError(
                    f"gpt-text {name} split has {len(data)} bytes, fewer than context + 1 = {length}"
                )
        fixed = torch.Generator().manual_seed(1234)  # the same validation windows for every run
        val_windows = sample_windows(val, o["eval_batches"] * o["batch_size"], length, fixed).to(
            dev
        )
        draws = torch.Generator().manual_seed(int(seed))
        bf16 = use_bf16(o, dev)

        model = GPT(
            n_layer=o["n_layer"], n_head=o["n_head"], d_model=o["d_model"], context=o["context"]
        ).to(dev)
        optimizer = make_optimizer(param_groups(model))
        schedule = step_schedule(make_optimizer, optimizer, o)  # searched, else warm-up + cosine

        @torch.no_grad()
        def evaluate() -> float:
            model.eval()
            total = 0.0
            for batch in val_windows.split(o["batch_size"]):
                with autocast(dev, bf16):
                    logits = model(batch[:, :-1])
                total += float(
                    F.cross_entropy(logits.float().reshape(-1, VOCAB), batch[:, 1:].reshape(-1))
                ) * len(batch)
            model.train()
            return total / len(val_windows)

        steps, every = total_steps(o), o["report_every"]
        value, best, train_loss = float("nan"), math.inf, float("nan")
        epoch, step = 0, 0
        while step < steps:
            epoch += 1
            chunk = min(every, steps - step)
            total = torch.zeros((), device=dev)
            watch = Stopwatch(dev)
            lr_used = current_lr(optimizer)
            with watch:
                for _ in range(chunk):
                    batch = sample_windows(train, o["batch_size"], length, draws).to(dev)
                    with autocast(dev, bf16):
                        logits = model(batch[:, :-1])
                    loss = F.cross_entropy(
                        logits.float().reshape(-1, VOCAB), batch[:, 1:].reshape(-1)
                    )
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if o["clip"] > 0:
                        nn.utils.clip_grad_norm_(model.parameters(), o["clip"])
                    optimizer.step()
                    schedule.step()
                    total += loss.detach()
            step += chunk
            train_loss = float(total) / chunk
            check_finite(train_loss, epoch=epoch, what="training loss")
            value = evaluate()
            check_finite(value, epoch=epoch, what="validation loss")
            best = min(best, value)
            metrics = epoch_metrics(optimizer, train_loss=train_loss, step_time=watch.total / chunk,
                                    val_loss=value, val_bpb=value / math.log(2))  # fmt: skip
            metrics["lr"] = lr_used
            metrics["step"] = float(step)
            report(on_epoch, epoch, value, metrics)

        final = {
            "val_loss": value,
            "val_bpb": value / math.log(2),
            "best_val_loss": best,
            "train_loss": train_loss,
            "steps": float(step),
        }
        return RunResult(
            value=value,
            metrics=final,
            extras={
                "train_bytes": len(train),
                "val_bytes": len(val),
                "parameters": sum(p.numel() for p in model.parameters()),
                "amp": "bf16" if bf16 else "off",
                "corpus": o["data_dir"] or "python-stdlib",
            },
        )
