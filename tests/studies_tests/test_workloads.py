"""Workloads: registry and options, training behaviour, reproducibility, divergence, data formats."""

from __future__ import annotations

import json
import math
import pickle

import numpy as np
import optuna
import pytest
import torch
from workload_files import write_tiny_cifar, write_tiny_ptb

from studies.workloads import (
    DataNotFoundError,
    Diverged,
    EpochReport,
    OptionError,
    available_workloads,
    get_workload,
)
from studies.workloads.cifar import augment
from studies.workloads.digits import load_digits, load_split, stratified_split


@pytest.fixture(autouse=True)
def one_thread():
    # Small models on a shared machine: one thread is fastest and makes timings stable.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def adam(lr: float):
    return lambda params: torch.optim.Adam(params, lr=lr)


def sgd(lr: float):
    return lambda params: torch.optim.SGD(params, lr=lr)


def run(workload, make_optimizer, seed=0):
    reports: list[EpochReport] = []
    result = workload.run(make_optimizer, seed=seed, device="cpu", on_epoch=reports.append)
    return result, reports


# ---- registry and options ----------------------------------------------------------------------


def test_registry_lists_every_workload_family():
    names = available_workloads()
    for name in (
        "valley2d", "noisy-quadratic", "digits-mlp", "digits-cnn",
        "cifar10-vgg11", "cifar10-resnet34", "cifar10-densenet121",
        "cifar100-vgg11", "cifar100-resnet34", "cifar100-densenet121",
        "ptb-lstm1", "ptb-lstm2", "ptb-lstm3",
    ):  # fmt: skip
        assert name in names
    for name in names:  # building one is cheap and reads no data
        w = get_workload(name)
        assert w.direction in ("minimize", "maximize") and w.unit in ("epoch", "step")
        assert w.max_epochs >= 1
        json.dumps(w.describe())


def test_unknown_workload_lists_known_names():
    with pytest.raises(ValueError, match=r"unknown workload 'mnist'.*digits-mlp.*valley2d"):
        get_workload("mnist")


def test_unknown_option_names_it_and_the_allowed_ones():
    with pytest.raises(OptionError, match=r"'epoch'.*allowed: .*batch_size.*epochs"):
        get_workload("digits-mlp", epoch=3)


@pytest.mark.parametrize(
    ("name", "options", "match"),
    [
        ("digits-mlp", {"epochs": 0}, r"'epochs' = 0 is out of range"),
        ("digits-mlp", {"batch_size": "big"}, r"'batch_size' must be an integer"),
        (
            "valley2d",
            {"function": "himmelblau"},
            r"'function' = 'himmelblau' is not allowed.*'rosenbrock'",
        ),
        ("valley2d", {"start": [1.0]}, r"'start' must have two numbers"),
        ("noisy-quadratic", {"noise": -1.0}, r"'noise' = -1.0 is out of range"),
        ("cifar10-vgg11", {"lr_milestones": [150, 100]}, r"'lr_milestones' must be increasing"),
        ("cifar10-vgg11", {"model": "resnet34"}, r"fixed by the workload name"),
        ("ptb-lstm2", {"dropout": 1.5}, r"'dropout' = 1.5 is out of range"),
    ],
)
def test_invalid_option_values_are_rejected(name, options, match):
    with pytest.raises(OptionError, match=match):
        get_workload(name, **options)


def test_options_resolve_defaults_and_accept_command_line_strings():
    w = get_workload("cifar10-resnet34", epochs="20", data_dir="/data")
    assert w.options["epochs"] == 20 and w.max_epochs == 20
    assert w.options["lr_milestones"] == [15]  # 75% of the epochs, as 150 of 200
    assert get_workload("cifar10-resnet34").options["lr_milestones"] == [150]
    assert get_workload("ptb-lstm1").options["lr_milestones"] == [100, 145]
    assert get_workload("ptb-lstm3").options["layers"] == 3
    assert get_workload("valley2d", steps=250, report_every=100).max_epochs == 3


# ---- valley2d ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("function", "lr", "below"),
    [
        ("valley", 0.1, 1.0),
        ("rosenbrock", 0.05, 1.0),
        ("beale", 0.05, 1e-2),
        ("rastrigin", 0.05, 30.0),
    ],
)
def test_valley2d_descends_and_records_the_trajectory(function, lr, below):
    w = get_workload(
        "valley2d", function=function, steps=400, report_every=100, trajectory_points=101
    )
    result, reports = run(w, adam(lr))
    extras = result.extras
    start_value = reports[0].metrics["train_loss"]
    assert result.value < below and result.value < start_value
    assert [r.epoch for r in reports] == [1, 2, 3, 4]
    assert {"train_loss", "function_value", "lr", "step_time", "distance"} <= set(
        reports[-1].metrics
    )
    assert extras["trajectory"][0] == extras["start"]
    assert len(extras["trajectory"]) == 101 and extras["trajectory_steps"][-1] == 400
    assert extras["function"] == function and extras["minimum"]
    json.dumps(extras)


def test_valley2d_follows_gradient_descent_exactly():
    # SGD on the valley from (8, 7.5): the gradient is (4+1, -4+1) while x > y and x + y > 0.
    # (5 steps keep x - y > 0; the ridge x = y is crossed after 6.25.)
    w = get_workload("valley2d", steps=5, report_every=5, trajectory_points=6)
    result, _ = run(w, sgd(0.01))
    x, y = 8.0 - 5 * 0.01 * 5, 7.5 - 5 * 0.01 * (-3)
    assert result.extras["trajectory"][-1] == pytest.approx([x, y], abs=1e-12)
    assert result.value == pytest.approx(4 * abs(x - y) + abs(x + y), abs=1e-12)


def test_valley2d_diverges_with_a_huge_learning_rate():
    w = get_workload("valley2d", function="rosenbrock", steps=200, report_every=50)
    with pytest.raises(Diverged) as info:
        run(w, sgd(10.0))
    assert info.value.epoch == 1 and "not" not in info.value.detail


# ---- noisy quadratic -----------------------------------------------------------------------------


@pytest.mark.parametrize("rotate", [False, True])
def test_noisy_quadratic_without_noise_matches_closed_form_gradient_descent(rotate):
    w = get_workload(
        "noisy-quadratic",
        dim=20,
        condition=100.0,
        noise=0.0,
        rotate=rotate,
        steps=30,
        report_every=10,
    )
    result, reports = run(w, sgd(0.01))
    h = torch.logspace(0, 2, 20, dtype=torch.float64)
    expected = [float(0.5 * (h * (1 - 0.01 * h) ** (2 * t)).sum()) for t in (10, 20, 30)]
    assert [r.value for r in reports] == pytest.approx(expected, rel=1e-9)
    assert result.value == pytest.approx(expected[-1], rel=1e-9)


def test_noisy_quadratic_more_noise_leaves_a_higher_loss():
    finals = []
    for noise in (0.0, 0.1, 1.0):
        w = get_workload(
            "noisy-quadratic", dim=20, condition=100.0, noise=noise, steps=300, report_every=100
        )
        finals.append(run(w, sgd(0.01))[0].value)
    assert finals[0] < finals[1] < finals[2]
    assert finals[2] < 0.5 * torch.logspace(0, 2, 20).sum().item()  # still below the start


def test_noisy_quadratic_seed_drives_the_noise_only():
    w = get_workload("noisy-quadratic", dim=10, noise=0.5, steps=50, report_every=50)
    a, b, c = (run(w, adam(0.01), seed=s)[0].value for s in (1, 1, 2))
    assert a == b and a != c


# ---- digits --------------------------------------------------------------------------------------


def test_digits_mlp_learns_in_its_default_epochs():
    w = get_workload("digits-mlp")
    result, reports = run(w, adam(1e-3))
    # measured with Adam(1e-3): 0.961-0.964 validation, 0.978-0.983 test over seeds 0-2
    assert len(reports) == w.max_epochs == 20
    assert result.value > 0.93 and result.metrics["test_accuracy"] > 0.93
    assert reports[-1].value > reports[0].value
    assert reports[-1].metrics["train_loss"] < reports[0].metrics["train_loss"]
    names = set(reports[-1].metrics)
    assert {"train_loss", "val_accuracy", "lr", "step_time"} <= names
    assert reports[-1].metrics["lr"] == 1e-3 and reports[-1].metrics["step_time"] > 0
    sizes = result.extras["split_sizes"]
    assert sum(sizes.values()) == 1797
    assert abs(sizes["val"] - 0.2 * 1797) <= 10 and abs(sizes["test"] - 0.2 * 1797) <= 10


def test_digits_are_scikit_learns_bundled_digits():
    from sklearn.datasets import load_digits as sklearn_digits

    x, y = load_digits()
    x_ref, y_ref = sklearn_digits(return_X_y=True)
    assert x.dtype == np.float32 and y.dtype == np.int64
    np.testing.assert_array_equal(x, x_ref.astype(np.float32))
    np.testing.assert_array_equal(y, y_ref)


def test_stratified_split_is_a_partition_with_each_class_in_proportion():
    y = np.repeat(np.arange(4), [50, 31, 7, 12])
    train, val, test = stratified_split(y, (0.2, 0.3), seed=5)
    together = np.concatenate([train, val, test])
    assert sorted(together.tolist()) == list(range(len(y)))  # disjoint and complete
    for label, n in enumerate([50, 31, 7, 12]):
        assert (y[val] == label).sum() == round(0.2 * n)
        assert (y[test] == label).sum() == round(0.3 * n)
    again = stratified_split(y, (0.2, 0.3), seed=5)
    other = stratified_split(y, (0.2, 0.3), seed=6)
    assert all(np.array_equal(a, b) for a, b in zip(again, (train, val, test), strict=True))
    assert not np.array_equal(other[1], val)


def test_digits_split_is_standardised_with_training_statistics():
    split = load_split(0, 0.2, 0.2)
    x_train = split["train"][0]
    assert x_train.dtype == np.float32
    np.testing.assert_allclose(x_train.mean(axis=0), 0.0, atol=1e-5)
    used = x_train.std(axis=0) > 0  # pixels that are 0 in every training image stay 0
    np.testing.assert_allclose(x_train.std(axis=0)[used], 1.0, atol=1e-4)
    assert not np.any(x_train[:, ~used])


def test_digits_cnn_learns():
    result, reports = run(get_workload("digits-cnn", epochs=3), adam(1e-3))
    assert result.value > 0.85 and len(reports) == 3  # measured 0.92-0.93 after 3 epochs


def test_digits_same_seed_same_numbers_different_seed_different():
    w = get_workload("digits-mlp", epochs=2)
    a, b, c = (run(w, adam(1e-3), seed=s)[1] for s in (3, 3, 4))
    assert [r.metrics for r in a] == [
        r.metrics | {"step_time": r0.metrics["step_time"]} for r, r0 in zip(b, a, strict=True)
    ]
    assert [r.metrics["train_loss"] for r in a] != [r.metrics["train_loss"] for r in c]


def test_digits_diverges_with_a_huge_learning_rate():
    with pytest.raises(Diverged) as info:
        run(get_workload("digits-mlp", epochs=3), sgd(1e12))
    assert info.value.epoch == 1 and "training loss" in str(info.value)


def test_pruning_exception_from_on_epoch_propagates():
    calls = []

    def prune(report: EpochReport) -> None:
        calls.append(report.epoch)
        raise optuna.TrialPruned()

    with pytest.raises(optuna.TrialPruned):
        get_workload("digits-mlp", epochs=5).run(adam(1e-3), seed=0, device="cpu", on_epoch=prune)
    assert calls == [1]


class Internals(torch.optim.Adam):
    def internals(self):
        return {"restarts": 2, "hv_step": 0.5}


def test_optimizer_internals_are_reported_each_epoch():
    _, reports = run(get_workload("digits-mlp", epochs=2), lambda p: Internals(p, lr=1e-3))
    assert all(r.metrics["restarts"] == 2.0 and r.metrics["hv_step"] == 0.5 for r in reports)


# ---- CIFAR ---------------------------------------------------------------------------------------


def test_cifar_files_are_written_in_the_official_pickle_format(tmp_path):
    root = write_tiny_cifar(tmp_path, "cifar10", train=50, test=10) / "cifar-10-batches-py"
    with open(root / "data_batch_1", "rb") as f:
        batch = pickle.load(f, encoding="bytes")  # the CIFAR website's recipe
    assert batch[b"data"].dtype.name == "uint8" and batch[b"data"].shape == (10, 3072)
    assert len(batch[b"labels"]) == 10
    with open(tmp_path / "cifar-10-batches-py" / "batches.meta", "rb") as f:
        assert len(pickle.load(f, encoding="latin1")["label_names"]) == 10


def test_cifar10_vgg11_learns_on_tiny_files(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10")
    w = get_workload("cifar10-vgg11", data_dir=str(tmp_path), epochs=3, width=0.125, batch_size=32)
    result, reports = run(w, adam(3e-3))
    assert [r.epoch for r in reports] == [1, 2, 3]
    assert reports[-1].value > reports[0].value and result.value >= 0.6  # measured 1.0
    assert [r.metrics["lr"] for r in reports] == pytest.approx([3e-3, 3e-3, 3e-4])  # x0.1 at 75%
    assert {"train_loss", "val_accuracy", "lr", "step_time", "train_accuracy"} <= set(
        reports[-1].metrics
    )
    assert result.metrics["test_accuracy"] == result.value  # published protocol: test = validation
    assert result.extras["train_images"] == 256


@pytest.mark.parametrize("name", ["cifar100-resnet34", "cifar10-densenet121"])
def test_cifar_deep_models_train_a_few_batches(tmp_path, name):
    write_tiny_cifar(tmp_path, name.split("-")[0], train=64, test=32)
    w = get_workload(
        name, data_dir=str(tmp_path), epochs=1, width=0.0625, batch_size=16, max_batches=2
    )
    result, reports = run(w, adam(1e-3))
    assert len(reports) == 1 and 0.0 <= result.value <= 1.0
    assert math.isfinite(reports[0].metrics["train_loss"])


def test_cifar_same_seed_same_numbers_different_seed_different(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", train=64, test=32)
    w = get_workload("cifar10-vgg11", data_dir=str(tmp_path), epochs=1, width=0.125, batch_size=16)
    a, b, c = (run(w, adam(1e-3), seed=s)[0].metrics for s in (0, 0, 1))
    assert a["train_loss"] == b["train_loss"] and a["test_loss"] == b["test_loss"]
    assert a["train_loss"] != c["train_loss"]


def test_cifar_holdout_validates_on_training_images(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", train=80, test=40)
    w = get_workload(
        "cifar10-vgg11", data_dir=str(tmp_path), epochs=1, width=0.125, batch_size=16, holdout=20
    )
    result, _ = run(w, adam(1e-3))
    assert result.extras["train_images"] == 60 and result.extras["validation"] == "holdout"
    assert "test_accuracy" in result.metrics


def test_cifar_missing_data_names_directory_and_files(tmp_path):
    w = get_workload("cifar100-vgg11", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(DataNotFoundError, match=r"nowhere/cifar-100-python.*train, test, meta"):
        run(w, adam(1e-3))
    with pytest.raises(FileNotFoundError):  # also a FileNotFoundError (and a ValueError)
        run(w, adam(1e-3))


def test_cifar_checksum_verification_rejects_unofficial_files(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", train=20, test=10)
    w = get_workload("cifar10-vgg11", data_dir=str(tmp_path), verify_checksums=True)
    with pytest.raises(DataNotFoundError, match="corrupted"):
        w.data()


def test_cifar_diverges_with_a_huge_learning_rate(tmp_path):
    write_tiny_cifar(tmp_path, "cifar10", train=64, test=32)
    w = get_workload("cifar10-vgg11", data_dir=str(tmp_path), epochs=2, width=0.125, batch_size=16)
    with pytest.raises(Diverged):
        run(w, sgd(1e20))


def test_augment_is_a_padded_crop_or_its_mirror():
    images = torch.randint(0, 256, (16, 3, 32, 32), dtype=torch.uint8)
    out = augment(images, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(images, (4, 4, 4, 4))
    flips = offsets = 0
    for i in range(len(images)):
        matches = [
            (dy, dx, flip)
            for dy in range(9)
            for dx in range(9)
            for flip in (False, True)
            if torch.equal(
                out[i],
                (lambda c: c.flip(2) if flip else c)(padded[i, :, dy : dy + 32, dx : dx + 32]),
            )
        ]
        assert matches, f"image {i} is not a crop of its padded self"
        flips += matches[0][2]
        offsets += (matches[0][0], matches[0][1]) != (4, 4)
    assert 0 < flips < 16 and offsets > 8  # both branches and several offsets drawn


# ---- Penn Treebank -------------------------------------------------------------------------------


def test_ptb_lstm1_learns_on_tiny_files(tmp_path):
    write_tiny_ptb(tmp_path)
    w = get_workload(
        "ptb-lstm1", data_dir=str(tmp_path), epochs=4, emsize=16, nhid=32, bptt=10, batch_size=8
    )
    result, reports = run(w, adam(1e-2))
    assert len(reports) == 4
    assert reports[-1].value < reports[0].value
    # 14 word types; the grammar leaves about 2-3 choices per word
    assert result.value < 5.0 and result.metrics["test_perplexity"] < 5.0  # measured ~2.7
    assert result.extras["vocabulary"] == 14
    assert {"train_loss", "val_perplexity", "lr", "step_time"} <= set(reports[-1].metrics)
    assert [r.metrics["lr"] for r in reports] == pytest.approx([1e-2, 1e-2, 1e-3, 1e-4])


@pytest.mark.parametrize("name", ["ptb-lstm2", "ptb-lstm3"])
def test_ptb_deeper_models_train(tmp_path, name):
    write_tiny_ptb(tmp_path, sentences=(100, 20, 20))
    w = get_workload(
        name,
        data_dir=str(tmp_path),
        epochs=1,
        emsize=8,
        nhid=16,
        bptt=8,
        batch_size=4,
        max_batches=5,
    )
    result, reports = run(w, adam(1e-2))
    assert len(reports) == 1 and math.isfinite(result.value) and result.value < 14 * 2
    assert result.extras["parameters"] > 0


def test_ptb_same_seed_same_numbers_different_seed_different(tmp_path):
    write_tiny_ptb(tmp_path, sentences=(100, 20, 20))
    w = get_workload(
        "ptb-lstm2", data_dir=str(tmp_path), epochs=1, emsize=8, nhid=16, bptt=8, batch_size=4
    )
    a, b, c = (run(w, adam(1e-2), seed=s)[0].metrics for s in (0, 0, 1))
    assert a["train_loss"] == b["train_loss"] and a["val_perplexity"] == b["val_perplexity"]
    assert a["train_loss"] != c["train_loss"]


def test_ptb_missing_file_names_directory_and_files(tmp_path):
    write_tiny_ptb(tmp_path)
    (tmp_path / "ptb.valid.txt").unlink()
    w = get_workload("ptb-lstm1", data_dir=str(tmp_path))
    with pytest.raises(
        DataNotFoundError,
        match=r"ptb.train.txt, ptb.valid.txt, ptb.test.txt.*missing: ptb.valid.txt",
    ):
        run(w, adam(1e-3))


def test_ptb_diverges_with_a_huge_learning_rate(tmp_path):
    write_tiny_ptb(tmp_path, sentences=(100, 20, 20))
    w = get_workload(
        "ptb-lstm1",
        data_dir=str(tmp_path),
        epochs=2,
        emsize=8,
        nhid=16,
        bptt=8,
        batch_size=4,
        clip=0.0,
    )
    # An infinite learning rate makes divergence certain rather than relying on overflow (a
    # finite 1e30 can leave the loss finite, near 1e29, where the LSTM saturates): the decoder
    # bias's gradient (softmax minus one-hot) sums to zero without being zero, so one step sends
    # some of its entries to +inf, and every later loss is inf or NaN.
    with pytest.raises(Diverged) as info:
        run(w, sgd(math.inf))
    assert info.value.epoch == 1 and "training loss" in str(info.value)
