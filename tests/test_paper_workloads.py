"""The papers' transformer, diffusion and GAN workloads: data, models, metrics, divergence,
and a real 2-optimizer x 2-trial campaign each, on tiny files the tests write."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
import yaml

from studies.results import runs_frame
from studies.runner import RunnerConfig, run_campaign
from studies.spec import load_spec
from studies.workloads import DataNotFoundError, Diverged, OptionError, get_workload


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def adam(lr: float = 3e-3):
    return lambda params: torch.optim.Adam(params, lr=lr)


def run(workload, make_optimizer, seed=0):
    reports = []
    result = workload.run(make_optimizer, seed=seed, device="cpu", on_epoch=reports.append)
    return result, reports


def tiny_campaign(tmp_path: Path, name: str, workload: dict) -> list[dict]:
    """A real 2-optimizer x 2-trial campaign (one confirm seed); returns its runs."""
    data = {
        "name": name,
        "workload": workload,
        "optimizers": ["hvadam", "adamw"],
        "budget": {"trials": 2},
        "sampler": "random",
        "pruner": "none",
        "confirm": {"seeds": 1},
        "seed": 0,
        "device": "cpu",
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(data))
    url = f"sqlite:///{tmp_path / 'c.db'}"
    run_campaign(load_spec(path), RunnerConfig(storage=url, threads=1))
    runs = runs_frame(url, name).to_dict("records")
    assert len(runs) == 2 * (2 + 1)
    assert {r["optimizer"] for r in runs} == {"hvadam", "adamw"}
    return runs


# ---- gpt-text ----------------------------------------------------------------------------------


def write_text_corpus(root: Path, files: int = 12) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    words = ["alpha", "beta", "gamma", "delta", "optimizer", "step", "loss", "the", "of"]
    for i in range(files):
        text = " ".join(words[(i * 7 + j * j) % len(words)] for j in range(300))
        (root / ("sub" if i % 2 else "") / f"doc{i}.txt").parent.mkdir(exist_ok=True)
        (root / ("sub" if i % 2 else "") / f"doc{i}.txt").write_text(text + "\n")
    return root


GPT_TINY = {"n_layer": 1, "n_head": 2, "d_model": 16, "context": 16, "batch_size": 4,
            "steps": 40, "report_every": 10, "warmup": 4, "eval_batches": 2}  # fmt: skip


def test_gpt_text_learns_bytes_of_a_text_directory(tmp_path):
    from studies.workloads.gpt_text import in_validation, load_corpus

    root = write_text_corpus(tmp_path / "text")
    w = get_workload("gpt-text", data_dir=str(root), **GPT_TINY)
    assert w.max_epochs == 4 and w.unit == "step"
    result, reports = run(w, adam(1e-2))
    assert [r.epoch for r in reports] == [1, 2, 3, 4]
    # from ln(256) = 5.55 nats (uniform bytes) to well below it on this 10-letter text
    assert reports[0].metrics["train_loss"] < math.log(256)
    assert result.value < 3.0 and result.value < reports[0].value
    assert result.metrics["val_bpb"] == pytest.approx(result.value / math.log(2))
    # the split is by file name hash; validation bytes are exactly those files'
    train, val = load_corpus(str(root), 10.0)
    names = sorted(p.relative_to(root).as_posix() for p in root.rglob("*.txt"))
    val_files = [n for n in names if in_validation(n, 10.0)]
    assert 0 < len(val_files) < len(names)
    assert len(val) == sum(len((root / n).read_bytes()) for n in val_files) + len(val_files) - 1
    assert result.extras["val_bytes"] == len(val) and result.extras["train_bytes"] == len(train)


def test_gpt_text_defaults_to_the_python_standard_library_sources():
    import sysconfig

    from studies.workloads.gpt_text import load_corpus, stdlib_files

    files = stdlib_files()
    assert Path(sysconfig.get_paths()["stdlib"]) / "os.py" in files
    train, val = load_corpus(None, 10.0)
    total = sum(f.stat().st_size for f in files)
    assert len(train) + len(val) == total + len(files) - 2  # newline-joined, two splits
    assert len(val) > 0.02 * total
    w = get_workload("gpt-text", **{**GPT_TINY, "max_steps": 10})
    result, reports = run(w, adam())
    assert len(reports) == 1 and result.metrics["steps"] == 10
    assert result.extras["corpus"] == "python-stdlib"


def test_gpt_text_weight_decay_applies_to_matrices_only():
    from studies.workloads.gpt_text import GPT, param_groups

    model = GPT(n_layer=2, n_head=2, d_model=8, context=4)
    decay, rest = param_groups(model)
    assert rest["weight_decay"] == 0.0 and "weight_decay" not in decay
    assert all(p.dim() == 2 for p in decay["params"])
    assert any(p is model.tok.weight for p in decay["params"])  # tied with the output layer
    assert model.head.weight is model.tok.weight
    assert any(p is model.pos.weight for p in rest["params"])
    n = sum(p.numel() for g in (decay, rest) for p in g["params"])
    assert n == sum(p.numel() for p in model.parameters())


def test_gpt_text_attention_is_causal():
    from studies.workloads.gpt_text import GPT

    torch.manual_seed(0)
    model = GPT(n_layer=2, n_head=2, d_model=8, context=6).eval()
    x = torch.randint(0, 256, (1, 6))
    y = x.clone()
    y[0, 4:] = (y[0, 4:] + 1) % 256
    with torch.no_grad():
        a, b = model(x), model(y)
    assert torch.equal(a[:, :4], b[:, :4]) and not torch.allclose(a[:, 4:], b[:, 4:])


def test_gpt_text_same_seed_same_numbers_and_divergence(tmp_path):
    root = write_text_corpus(tmp_path / "text")
    w = get_workload("gpt-text", data_dir=str(root), **{**GPT_TINY, "max_steps": 20})
    a, _ = run(w, adam(), seed=3)
    b, _ = run(w, adam(), seed=3)
    c, _ = run(w, adam(), seed=4)
    assert a.value == b.value and a.value != c.value
    huge = get_workload("gpt-text", data_dir=str(root), **{**GPT_TINY, "clip": 0.0})
    with pytest.raises(Diverged, match="diverged at epoch"):
        run(huge, lambda p: torch.optim.SGD(p, lr=1e12))


def test_gpt_text_bad_data_and_options_are_clear(tmp_path):
    with pytest.raises(DataNotFoundError, match=r"expected \.txt files under the directory"):
        get_workload("gpt-text", data_dir=str(tmp_path / "none")).run(adam(), seed=0)
    with pytest.raises(OptionError, match="'d_model' = 10 must be a multiple of 'n_head' = 4"):
        get_workload("gpt-text", d_model=10, n_head=4)


@pytest.mark.slow
def test_gpt_text_campaign(tmp_path):
    root = write_text_corpus(tmp_path / "text")
    runs = tiny_campaign(
        tmp_path, "gpt", {"name": "gpt-text", "options": {**GPT_TINY, "data_dir": str(root),
                                                          "max_steps": 20}})  # fmt: skip
    assert all(r["status"] == "complete" for r in runs), [r["reason"] for r in runs]
    assert all(0 < r["value"] < math.log(256) + 1 for r in runs)


def test_shipped_cpu_specs_load():
    for name in ("gpt-text",):
        spec = load_spec(name)
        assert spec.device == "cpu"
        assert {"hvadam", "anon", "adamw"} <= set(spec.labels) and len(spec.labels) >= 4
