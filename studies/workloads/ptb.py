"""Penn Treebank word-level language modelling with 1-3 layer AWD-LSTMs (the AdaBelief/HVAdam setting).

Settings of the published runs (all defaults): embedding 400, hidden 1150, tied weights,
batch 20, BPTT 70 with AWD-LSTM's random sequence lengths (and the learning rate scaled by
seq_len / bptt for that batch), dropouts 0.4 (output) / 0.25 (between layers) / 0.4 (input) /
0.1 (embedding words) / 0.5 (DropConnect on the hidden-to-hidden weights), activation
regularisation alpha=2 and temporal beta=1, gradient-norm clipping at 0.25, 200 epochs with
the learning rate divided by 10 after epochs 100 and 145. Weight decay (1.2e-6 in the published
runs) is the optimizer's hyperparameter, left to the search space.

Data: `ptb.train.txt`, `ptb.valid.txt`, `ptb.test.txt` (or `train.txt`, ... as in AWD-LSTM's
data/penn) in `data_dir`: one sentence per line, words separated by spaces; `<eos>` is
appended to each line. The vocabulary is built from the three files, as in AWD-LSTM.

Metric: `val_perplexity` on the validation file after each epoch (minimise). The published
per-epoch curves evaluate on the test file; here the test file is used once, at the end:
`test_perplexity` is that of the model with the best validation perplexity (as published).
"""

from __future__ import annotations

import functools
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar, cast

import numpy as np
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

SPLITS = ("train", "valid", "test")


@dataclass(frozen=True)
class Corpus:
    """Token ids of the three splits (1-D int64 CPU tensors) and the vocabulary."""

    train: torch.Tensor
    valid: torch.Tensor
    test: torch.Tensor
    vocabulary: tuple[str, ...]


def find_files(data_dir: str | os.PathLike[str]) -> dict[str, Path]:
    """The three PTB files under `data_dir`; `DataNotFoundError` naming what is missing."""
    root = Path(data_dir).expanduser()
    found, missing = {}, []
    for split in SPLITS:
        for name in (f"ptb.{split}.txt", f"{split}.txt"):
            if (root / name).is_file():
                found[split] = root / name
                break
        else:
            missing.append(f"ptb.{split}.txt")
    if missing:
        raise DataNotFoundError(
            f"Penn Treebank data not found: expected the directory {root} with the files "
            "ptb.train.txt, ptb.valid.txt, ptb.test.txt (or train.txt, valid.txt, test.txt); "
            f"missing: {', '.join(missing)}. Set the workload option data_dir (or "
            "HVADAM_DATA_DIR) to the directory that contains them."
        )
    return found


def load_corpus(data_dir: str | os.PathLike[str]) -> Corpus:
    """Tokenise the PTB files (cached per process while the files are unchanged)."""
    files = find_files(data_dir)
    stamp = tuple((str(p.resolve()), p.stat().st_mtime_ns) for p in files.values())
    return _load_cached(stamp)


@functools.lru_cache(maxsize=2)
def _load_cached(stamp: tuple[tuple[str, int], ...]) -> Corpus:
    index: dict[str, int] = {}
    splits = []
    for path, _ in stamp:
        ids: list[int] = []
        with open(path, encoding="utf-8") as f:
            for line in f:
                for word in [*line.split(), "<eos>"]:
                    ids.append(index.setdefault(word, len(index)))
        splits.append(torch.tensor(ids, dtype=torch.int64))
    if min(len(s) for s in splits) < 3:
        raise DataNotFoundError(
            f"Penn Treebank files too small to train on: {[p for p, _ in stamp]}"
        )
    train, valid, test = splits
    return Corpus(train, valid, test, vocabulary=tuple(index))


def batchify(ids: torch.Tensor, batch_size: int) -> torch.Tensor:
    """(T*B,) -> (T, B): B parallel streams, the remainder dropped (as in AWD-LSTM)."""
    steps = len(ids) // batch_size
    if steps < 2:
        raise OptionError(
            f"batch size {batch_size} leaves fewer than 2 tokens per stream ({len(ids)} tokens)"
        )
    return ids[: steps * batch_size].view(batch_size, steps).t().contiguous()


def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Variational dropout: one mask per sequence, shared across time steps."""
    if not training or p == 0:
        return x
    mask = x.new_empty(1, x.size(1), x.size(2)).bernoulli_(1 - p) / (1 - p)
    return x * mask


def embedded_dropout(
    embed: nn.Embedding, words: torch.Tensor, p: float, training: bool
) -> torch.Tensor:
    """Drop whole words (rows of the embedding matrix) for this batch."""
    weight = embed.weight
    if training and p > 0:
        mask = weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p)
        weight = weight * mask
    return F.embedding(words, weight)


class AWDLSTM(nn.Module):
    """AWD-LSTM (Merity et al. 2018): stacked LSTMs with weight-dropped recurrences, tied weights."""

    def __init__(
        self,
        ntoken: int,
        emsize: int,
        nhid: int,
        nlayers: int,
        *,
        dropout: float,
        dropouth: float,
        dropouti: float,
        dropoute: float,
        wdrop: float,
    ) -> None:
        super().__init__()
        self.encoder = nn.Embedding(ntoken, emsize)
        sizes = (
            [emsize] + [nhid] * (nlayers - 1) + [emsize]
        )  # the last layer feeds the tied decoder
        self.rnns = nn.ModuleList(nn.LSTM(sizes[i], sizes[i + 1], 1) for i in range(nlayers))
        self.decoder = nn.Linear(emsize, ntoken)
        self.decoder.weight = self.encoder.weight
        self.dropout, self.dropouth, self.dropouti, self.dropoute, self.wdrop = (
            dropout,
            dropouth,
            dropouti,
            dropoute,
            wdrop,
        )
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)
        nn.init.zeros_(self.decoder.bias)

    def init_hidden(self, batch_size: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        weight = self.encoder.weight
        return [
            (
                weight.new_zeros(1, batch_size, rnn.hidden_size),
                weight.new_zeros(1, batch_size, rnn.hidden_size),
            )
            for rnn in self.lstms
        ]

    @property
    def lstms(self) -> list[nn.LSTM]:
        """The recurrent layers, bottom first (`rnns`, typed)."""
        return [cast(nn.LSTM, rnn) for rnn in self.rnns]

    def _recur(
        self, rnn: nn.LSTM, x: torch.Tensor, hidden: tuple[torch.Tensor, torch.Tensor]
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        if not (self.training and self.wdrop > 0):
            return rnn(x, hidden)
        # DropConnect on the recurrent weights: the dropped matrix replaces the parameter for
        # this call only, so gradients flow to the raw weight.
        dropped = {
            "weight_hh_l0": F.dropout(
                rnn.get_parameter("weight_hh_l0"), p=self.wdrop, training=True
            )
        }
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=".*contiguous chunk of memory.*")
            return torch.func.functional_call(rnn, dropped, (x, hidden), strict=False)

    def forward(
        self, words: torch.Tensor, hidden: list[tuple[torch.Tensor, torch.Tensor]]
    ) -> tuple[torch.Tensor, list[tuple[torch.Tensor, torch.Tensor]], torch.Tensor, torch.Tensor]:
        """Logits (T, B, V), the new hidden state, and the last layer's raw and dropped outputs."""
        x = embedded_dropout(self.encoder, words, self.dropoute, self.training)
        x = locked_dropout(x, self.dropouti, self.training)
        new_hidden = []
        for i, rnn in enumerate(self.lstms):
            raw, h = self._recur(rnn, x, hidden[i])
            new_hidden.append(h)
            last = i == len(self.rnns) - 1
            x = locked_dropout(raw, self.dropout if last else self.dropouth, self.training)
        return self.decoder(x), new_hidden, raw, x


def _detach(
    hidden: list[tuple[torch.Tensor, torch.Tensor]],
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [(h.detach(), c.detach()) for h, c in hidden]


class PennTreebank(Workload):
    """PTB language modelling with an AWD-LSTM of 1, 2 or 3 layers (`ptb-lstm1` ... `ptb-lstm3`)."""

    metric = "val_perplexity"
    direction = "minimize"
    unit = "epoch"
    OPTIONS: ClassVar[dict[str, Option]] = {
        "layers": Option(3, "int", "LSTM layers", low=1, high=3),
        "data_dir": Option(None, "str", "directory holding ptb.{train,valid,test}.txt (null: $HVADAM_DATA_DIR/ptb, else ./data/ptb)", nullable=True),
        "epochs": Option(200, "int", "training epochs", low=1),
        "batch_size": Option(20, "int", "training streams (batch size)", low=1),
        "eval_batch_size": Option(10, "int", "validation streams", low=1),
        "test_batch_size": Option(1, "int", "test streams", low=1),
        "bptt": Option(70, "int", "mean back-propagation-through-time length", low=2),
        "variable_bptt": Option(True, "bool", "AWD-LSTM's random sequence lengths (with lr scaled by seq_len/bptt)"),
        "emsize": Option(400, "int", "embedding size", low=1),
        "nhid": Option(1150, "int", "hidden units per LSTM layer", low=1),
        "dropout": Option(0.4, "float", "output dropout", low=0.0, high=0.99),
        "dropouth": Option(0.25, "float", "dropout between LSTM layers", low=0.0, high=0.99),
        "dropouti": Option(0.4, "float", "input (embedding output) dropout", low=0.0, high=0.99),
        "dropoute": Option(0.1, "float", "word (embedding row) dropout", low=0.0, high=0.99),
        "wdrop": Option(0.5, "float", "DropConnect on hidden-to-hidden weights", low=0.0, high=0.99),
        "alpha": Option(2.0, "float", "activation regularisation", low=0.0),
        "beta": Option(1.0, "float", "temporal activation regularisation", low=0.0),
        "clip": Option(0.25, "float", "gradient-norm clipping (0: none)", low=0.0),
        "lr_milestones": Option(None, "int_list", "epochs after which the learning rate is multiplied by lr_gamma (null: [50%, 72.5%] of epochs)", low=1, nullable=True),
        "lr_gamma": Option(0.1, "float", "learning-rate factor at each milestone", low=0.0, high=1.0),
        "max_batches": Option(None, "int", "at most this many batches per epoch (smoke runs)", low=1, nullable=True),
    }  # fmt: skip

    def _configure(self) -> None:
        o = self.options
        if o["data_dir"] is None:
            o["data_dir"] = os.path.join(os.environ.get("HVADAM_DATA_DIR", "data"), "ptb")
        if o["lr_milestones"] is None:
            o["lr_milestones"] = sorted(
                {max(1, round(0.5 * o["epochs"])), max(1, round(0.725 * o["epochs"]))}
            )
        if sorted(o["lr_milestones"]) != o["lr_milestones"]:
            raise OptionError(
                f"option 'lr_milestones' must be increasing, got {o['lr_milestones']}"
            )
        self.max_epochs = o["epochs"]

    def data(self) -> Corpus:
        return load_corpus(self.options["data_dir"])

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
        corpus = self.data()
        seed_everything(seed)
        train = batchify(corpus.train, o["batch_size"]).to(dev)
        valid = batchify(corpus.valid, o["eval_batch_size"]).to(dev)
        test = batchify(corpus.test, o["test_batch_size"]).to(dev)

        model = AWDLSTM(
            len(corpus.vocabulary), o["emsize"], o["nhid"], o["layers"],
            dropout=o["dropout"], dropouth=o["dropouth"], dropouti=o["dropouti"],
            dropoute=o["dropoute"], wdrop=o["wdrop"],
        ).to(dev)  # fmt: skip
        params = list(model.parameters())
        optimizer = make_optimizer(params)
        # A searched schedule (per step; the count estimated at the mean BPTT length) replaces
        # the built-in step decay (per epoch).
        per_epoch = math.ceil((train.size(0) - 2) / o["bptt"])
        if o["max_batches"] is not None:
            per_epoch = min(per_epoch, o["max_batches"])
        schedule = lr_schedule(make_optimizer, optimizer, self.max_epochs * max(1, per_epoch))
        scheduler = None
        if not schedule.active:
            scheduler = torch.optim.lr_scheduler.MultiStepLR(
                optimizer, milestones=o["lr_milestones"], gamma=o["lr_gamma"]
            )
        lengths = np.random.default_rng(int(seed))  # the random BPTT lengths

        @torch.no_grad()
        def evaluate(source: torch.Tensor) -> float:
            model.eval()
            hidden = model.init_hidden(source.size(1))
            total = torch.zeros((), device=dev)
            for i in range(0, source.size(0) - 1, o["bptt"]):
                n = min(o["bptt"], source.size(0) - 1 - i)
                logits, hidden, _, _ = model(source[i : i + n], hidden)
                total += n * F.cross_entropy(
                    logits.view(-1, logits.size(-1)), source[i + 1 : i + 1 + n].reshape(-1)
                )
            return float(total) / (source.size(0) - 1)

        best_loss, best_state, best_epoch = math.inf, None, 0
        for epoch in range(1, self.max_epochs + 1):
            model.train()
            hidden = model.init_hidden(o["batch_size"])
            total = torch.zeros((), device=dev)
            batches, i = 0, 0
            lr_used = current_lr(optimizer)
            watch = Stopwatch(dev)
            with watch:
                while i < train.size(0) - 2:
                    if o["max_batches"] is not None and batches >= o["max_batches"]:
                        break
                    seq_len = o["bptt"]
                    if o["variable_bptt"]:
                        bptt = o["bptt"] if lengths.random() < 0.95 else o["bptt"] / 2
                        seq_len = min(max(5, int(lengths.normal(bptt, 5))), o["bptt"] + 40)
                    seq_len = min(seq_len, train.size(0) - 1 - i)
                    base_lrs = [g["lr"] for g in optimizer.param_groups]
                    for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                        group["lr"] = lr * seq_len / o["bptt"]
                    hidden = _detach(hidden)
                    logits, hidden, raw, dropped = model(train[i : i + seq_len], hidden)
                    raw_loss = F.cross_entropy(
                        logits.view(-1, logits.size(-1)), train[i + 1 : i + 1 + seq_len].reshape(-1)
                    )
                    loss = raw_loss
                    if o["alpha"]:
                        loss = loss + o["alpha"] * dropped.pow(2).mean()
                    if o["beta"] and seq_len > 1:
                        loss = loss + o["beta"] * (raw[1:] - raw[:-1]).pow(2).mean()
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    if o["clip"]:
                        torch.nn.utils.clip_grad_norm_(params, o["clip"])
                    optimizer.step()
                    for group, lr in zip(optimizer.param_groups, base_lrs, strict=True):
                        group["lr"] = lr
                    schedule.step()
                    total += raw_loss.detach()
                    batches += 1
                    i += seq_len
            train_loss = float(total) / max(1, batches)
            check_finite(train_loss, epoch=epoch, what="training loss")
            val_loss = evaluate(valid)
            check_finite(val_loss, epoch=epoch, what="validation loss")
            value = math.exp(min(val_loss, 700.0))
            if val_loss < best_loss:
                best_loss, best_epoch = val_loss, epoch
                best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            metrics = epoch_metrics(
                optimizer,
                train_loss=train_loss,
                step_time=watch.total / max(1, batches),
                val_perplexity=value,
                val_loss=val_loss,
                train_perplexity=math.exp(min(train_loss, 700.0)),
                epoch_time=watch.total,
            )
            metrics["lr"] = lr_used
            if scheduler is not None:
                scheduler.step()
            report(on_epoch, epoch, value, metrics)

        final_test = evaluate(test)
        if best_state is not None:
            model.load_state_dict(best_state)
        test_loss = evaluate(test)
        final = {
            "val_perplexity": value,
            "best_val_perplexity": math.exp(min(best_loss, 700.0)),
            "best_epoch": float(best_epoch),
            "test_perplexity": math.exp(min(test_loss, 700.0)),
            "final_test_perplexity": math.exp(min(final_test, 700.0)),
            "train_loss": train_loss,
        }
        extras: dict[str, Any] = {
            "vocabulary": len(corpus.vocabulary),
            "tokens": {
                "train": len(corpus.train),
                "valid": len(corpus.valid),
                "test": len(corpus.test),
            },
            "parameters": sum(p.numel() for p in params),
        }
        return RunResult(value=value, metrics=final, extras=extras)
