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
    """A real 2-optimizer x 2-trial campaign (one confirm seed); returns its runs.

    One worker with a fixed index, so the random sampler's second trial is the same every time
    (a sampler's seed includes the worker's index, by default derived from its process id).
    """
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
    run_campaign(load_spec(path), RunnerConfig(storage=url, threads=1, worker_index=0))
    runs = runs_frame(url, name).to_dict("records")
    assert len(runs) == 2 * (2 + 1)
    assert {r["optimizer"] for r in runs} == {"hvadam", "adamw"}
    return runs


def default_config_runs(runs: list[dict]) -> list[dict]:
    """The search runs of each optimizer's default config (trial 0): a sampled learning rate
    may be far from a good one, so a loss bound holds for these only."""
    picked = [r for r in runs if r["phase"] == "search" and r["trial_number"] == 0]
    assert len(picked) == 2
    return picked


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
    assert all(0 < r["value"] < math.log(256) + 1 for r in default_config_runs(runs))
    assert all(0 < r["value"] < math.inf for r in runs)


def test_shipped_cpu_specs_load():
    for name in ("gpt-text", "ddpm-digits", "gan-digits"):
        spec = load_spec(name)
        assert spec.device == "cpu"
        assert {"hvadam", "anon", "adamw"} <= set(spec.labels) and len(spec.labels) >= 4


# ---- FID ---------------------------------------------------------------------------------------


def test_frechet_distance_matches_torch_fidelity():
    from torch_fidelity.metric_fid import fid_features_to_statistics, fid_statistics_to_metric

    from studies.workloads.images import frechet_distance

    g = torch.Generator().manual_seed(0)
    for n_a, n_b, dim in ((50, 40, 20), (12, 9, 30)):  # fewer samples than dimensions too
        a = torch.randn(n_a, dim, generator=g)
        b = torch.randn(n_b, dim, generator=g) * 1.5 + 0.3
        stats = [fid_features_to_statistics(x.double()) for x in (a, b)]
        ref = fid_statistics_to_metric(*stats, False)["frechet_inception_distance"]
        assert frechet_distance(a, b) == pytest.approx(ref, rel=1e-4)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)


def test_digits_fid_separates_real_digits_from_noise():
    from studies.workloads.images import DigitsFeatures, digits_images, frechet_distance

    features, d = DigitsFeatures(), digits_images()
    real = frechet_distance(features(d["train"]), features(d["val"]))
    noise = frechet_distance(features(torch.rand(300, 1, 8, 8) * 2 - 1), features(d["val"]))
    assert features(d["val"]).shape == (len(d["val"]), 128)
    assert real < 10 < 100 * real < noise
    # deterministic: a second classifier (trained again) gives the same features
    from studies.workloads.images import _digits_classifier

    _digits_classifier.cache_clear()
    assert torch.equal(DigitsFeatures()(d["val"][:5]), features(d["val"][:5]))


def test_inception_fid_needs_a_local_weights_file(tmp_path, monkeypatch):
    from studies.workloads.images import FID_WEIGHTS_ENV, InceptionFeatures

    monkeypatch.delenv(FID_WEIGHTS_ENV, raising=False)
    with pytest.raises(
        DataNotFoundError, match=f"set the workload option fid_weights or {FID_WEIGHTS_ENV}"
    ):
        InceptionFeatures(None, torch.device("cpu"))
    missing = tmp_path / "nope.pth"
    with pytest.raises(DataNotFoundError, match=f"weights file not found: {missing}"):
        InceptionFeatures(str(missing), torch.device("cpu"))
    monkeypatch.setenv(FID_WEIGHTS_ENV, str(missing))
    with pytest.raises(
        DataNotFoundError, match=f"not found: {missing} \\(from {FID_WEIGHTS_ENV}\\)"
    ):
        InceptionFeatures(None, torch.device("cpu"))


@pytest.fixture(scope="module")
def standin_inception(tmp_path_factory) -> str:
    from studies.workloads.images import write_standin_inception_weights

    return str(write_standin_inception_weights(tmp_path_factory.mktemp("fid") / "inception.pth"))


@pytest.fixture(scope="module")
def tiny_cifar(tmp_path_factory) -> str:
    from workload_files import write_tiny_cifar

    return str(write_tiny_cifar(tmp_path_factory.mktemp("cifar"), "cifar10", train=64, test=16))


# ---- ddpm --------------------------------------------------------------------------------------

DDPM_TINY = {"width": 8, "batch_size": 8, "steps": 6, "report_every": 3, "warmup": 1,
             "timesteps": 50, "val_images": 16, "val_timesteps": 2}  # fmt: skip


def test_ddpm_digits_learns_and_its_validation_loss_is_deterministic():
    w = get_workload("ddpm-digits", **{**DDPM_TINY, "steps": 40, "report_every": 20})
    result, reports = run(w, adam(2e-3))
    assert [r.epoch for r in reports] == [1, 2]
    # predicting zero noise scores 1.0; training gets below it
    assert result.value < 0.9 and result.value < reports[0].value
    again, _ = run(w, adam(2e-3))
    assert again.value == result.value
    assert result.extras["train_images"] == 1079 and result.extras["val_images"] == 16


def test_ddpm_validation_loss_is_the_noise_mse_at_fixed_timesteps():
    from diffusers import DDPMScheduler

    w = get_workload("ddpm-digits", **{**DDPM_TINY, "steps": 1, "report_every": 1})
    # lr 0: the model stays at its initialisation, so the loss can be recomputed here
    result, _ = run(w, lambda p: torch.optim.SGD(p, lr=0.0))
    from studies.workloads.ddpm import build_unet
    from studies.workloads.images import digits_images

    torch.manual_seed(0)
    model = build_unet("digits", 8, False).eval()
    val = digits_images()["val"][:16].repeat_interleave(2, 0)
    t = torch.tensor([12, 37] * 16)
    noise = torch.randn(val.shape, generator=torch.Generator().manual_seed(1234))
    noisy = DDPMScheduler(num_train_timesteps=50).add_noise(val, noise, t)
    with torch.no_grad():
        expected = float(((model(noisy, t).sample - noise) ** 2).mean())
    assert result.value == pytest.approx(expected, rel=1e-5)


def test_ddpm_optional_fid_and_divergence():
    w = get_workload("ddpm-digits", **{**DDPM_TINY, "fid_samples": 8, "sample_steps": 5})
    result, _ = run(w, adam())
    assert result.metrics["fid"] > 0
    with pytest.raises(Diverged, match="diverged at epoch 1"):
        run(get_workload("ddpm-digits", **{**DDPM_TINY, "clip": 0.0}),
            lambda p: torch.optim.SGD(p, lr=1e15))  # fmt: skip
    with pytest.raises(OptionError, match="'sample_steps' = 60 exceeds 'timesteps' = 50"):
        get_workload("ddpm-digits", **{**DDPM_TINY, "sample_steps": 60})


@pytest.mark.slow
def test_ddpm_cifar10_trains_on_tiny_files_with_inception_fid(tiny_cifar, standin_inception):
    w = get_workload("ddpm-cifar10", data_dir=tiny_cifar, **{**DDPM_TINY, "steps": 2, "report_every": 2},
                     fid_samples=2, sample_steps=2, fid_weights=standin_inception)  # fmt: skip
    result, reports = run(w, adam())
    assert len(reports) == 1 and math.isfinite(result.metrics["fid"])
    assert 0 < result.value < 2 and result.extras["val_images"] == 16


@pytest.mark.slow
def test_ddpm_digits_campaign(tmp_path):
    runs = tiny_campaign(tmp_path, "ddpm", {"name": "ddpm-digits", "options": DDPM_TINY})
    assert all(r["status"] == "complete" for r in runs), [r["reason"] for r in runs]
    assert all(0 < r["value"] < 2 for r in default_config_runs(runs))
    assert all(0 < r["value"] < math.inf for r in runs)


# ---- gan ---------------------------------------------------------------------------------------

GAN_TINY = {"width": 4, "latent": 8, "batch_size": 8, "steps": 6, "report_every": 3,
            "fid_samples": 32, "fid_real": 64}  # fmt: skip


def test_gan_digits_reports_fid_each_report_and_improves():
    w = get_workload("gan-digits", **{**GAN_TINY, "width": 16, "steps": 150, "report_every": 75})
    result, reports = run(w, lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.5, 0.999)))
    assert [r.epoch for r in reports] == [1, 2]
    assert {"fid", "d_loss", "g_loss", "train_loss"} <= set(reports[0].metrics)
    assert result.value == reports[-1].value
    untrained, _ = run(w, lambda p: torch.optim.SGD(p, lr=0.0))
    assert result.value < 0.5 * untrained.value
    again, _ = run(w, lambda p: torch.optim.Adam(p, lr=2e-3, betas=(0.5, 0.999)))
    assert again.value == result.value


def test_gan_spectral_norm_and_divergence_is_pruned_with_reason():
    from studies.workloads.gan import build_gan

    _, d = build_gan("digits", 4, 8, spectral=True)
    assert any(hasattr(m, "weight_orig") for m in d.modules())
    w = get_workload("gan-digits", **GAN_TINY)
    with pytest.raises(
        Diverged, match=r"diverged at epoch 1: (discriminator loss|generator loss|FID)"
    ):
        run(w, lambda p: torch.optim.SGD(p, lr=1e30))


@pytest.mark.slow
def test_gan_cifar10_uses_inception_features_from_the_local_file(tiny_cifar, standin_inception):
    w = get_workload("gan-cifar10", data_dir=tiny_cifar, fid_weights=standin_inception,
                     **{**GAN_TINY, "steps": 2, "report_every": 2, "fid_samples": 4, "fid_real": 4})  # fmt: skip
    result, reports = run(w, adam(2e-4))
    assert len(reports) == 1 and math.isfinite(result.value) and result.value > 0
    assert result.extras["fid_features"] == "inception-v3"
    with pytest.raises(DataNotFoundError, match="weights file not found"):
        get_workload("gan-cifar10", data_dir=tiny_cifar, fid_weights="/nonexistent.pth").run(
            adam(), seed=0
        )


@pytest.mark.slow
def test_gan_digits_campaign(tmp_path):
    runs = tiny_campaign(tmp_path, "gan", {"name": "gan-digits", "options": GAN_TINY})
    assert all(r["status"] == "complete" for r in runs), [r["reason"] for r in runs]
    assert all(r["value"] > 0 for r in runs)
