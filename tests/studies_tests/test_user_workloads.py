"""User workloads: `module:function` and `module:Class` named in a spec, and entry points.

A task module written into a temporary directory is tuned on both backends (the Optuna runner
in this process, Ray Tune in a subprocess with its own local Ray), and the results database,
`compare` and `export` are checked; bad names, signatures and metrics are one clear line naming
the spec key, before any trial runs.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import optuna
import pytest
import torch
import yaml

from dashboards.export import export_configs
from studies.results import compare_frame, curves_frame, runs_frame
from studies.runner import RunnerConfig, run_campaign
from studies.spec import SpecError, load_spec
from studies.workloads import (
    ENTRY_POINT_GROUP,
    FunctionWorkload,
    WorkloadLoadError,
    available_workloads,
    load_workload,
    resolve_workload,
)

ROOT = Path(__file__).resolve().parents[2]

# A least-squares fit whose gradient steps are easy to follow; the function form also makes
# the run diverge (NaN) when the learning rate is huge, to check that it is pruned with reason.
TASKS = """
import math

import torch

from studies.workloads import Option, RunResult, Workload
from studies.workloads._base import epoch_metrics, report


def _data():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 3, generator=g)
    return x, x @ torch.tensor([[1.0], [-2.0], [0.5]])


def train(make_optimizer, *, seed, device, options, report):
    x, y = _data()
    w = torch.nn.Parameter(torch.randn(3, 1) * options["scale"])
    opt = make_optimizer([w])
    for epoch in range(options["epochs"]):
        opt.zero_grad()
        loss = ((x @ w - y) ** 2).mean()
        loss.backward()
        opt.step()
        val = ((x @ w - y) ** 2).mean().item()
        report(epoch + 1, val, train_loss=loss.item())
    return val


class Fit(Workload):
    metric = "val_mse"
    direction = "minimize"
    OPTIONS = {"epochs": Option(5, "int", "steps", low=1)}

    def run(self, make_optimizer, *, seed, device="cpu", on_epoch=None):
        x, y = _data()
        w = torch.nn.Parameter(torch.randn(3, 1))
        opt = make_optimizer([w])
        for epoch in range(1, self.max_epochs + 1):
            opt.zero_grad()
            loss = ((x @ w - y) ** 2).mean()
            loss.backward()
            opt.step()
            val = ((x @ w - y) ** 2).mean().item()
            report(on_epoch, epoch, val, epoch_metrics(opt, train_loss=loss.item(), step_time=0.0,
                                                       val_mse=val))
        return RunResult(value=val, metrics={"val_mse": val, "finite": float(math.isfinite(val))})
"""

FUNCTION_SPEC = {
    "name": "fn",
    "workload": {
        "name": "tasks_mod:train",
        "metric": {"name": "val_loss", "direction": "minimize"},
        "options": {"epochs": 4, "scale": 1.0},
    },
    "optimizers": {"adam": {}, "sgd": {}},
    "budget": {"trials": 3},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 2},
    "seed": 0,
    "device": "cpu",
}
CLASS_SPEC = {**FUNCTION_SPEC, "name": "cls", "workload": {"name": "tasks_mod:Fit", "epochs": 3}}


def write_tasks(folder: Path, source: str = TASKS) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "tasks_mod.py").write_text(textwrap.dedent(source))
    return folder


def write_spec(folder: Path, data: dict) -> Path:
    path = folder / f"{data['name']}.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def check_campaign(url: str, name: str, metric: str, epochs: int, backend: str) -> None:
    runs = runs_frame(url, name)
    assert sorted(runs["optimizer"].unique()) == ["adam", "sgd"]
    search = runs[runs["phase"] == "search"]
    confirm = runs[runs["phase"] == "confirm"]
    assert len(search) == 6 and len(confirm) == 4
    assert (runs["status"] == "complete").all(), runs[["status", "reason"]]
    assert (runs["metric"] == metric).all()
    # the curves hold one report per epoch, with the metric and the training loss
    curves = curves_frame(url, name)
    first = curves[curves["run_id"] == runs["run_id"].iloc[0]]
    assert sorted(first["epoch"].unique()) == list(range(1, epochs + 1))
    assert {metric, "train_loss"} <= set(first["metric"])
    last = first[(first["epoch"] == epochs) & (first["metric"] == metric)]["value"].item()
    assert last == pytest.approx(runs["value"].iloc[0])
    compare = compare_frame(url, name)
    assert sorted(compare["optimizer"]) == ["adam", "sgd"]
    for _, row in compare.iterrows():
        values = confirm[confirm["optimizer"] == row["optimizer"]]["value"]
        assert row["confirm_mean"] == pytest.approx(values.mean())
    study = optuna.load_study(study_name=f"{name}/adam", storage=url)
    assert study.user_attrs["metric"] == metric
    assert {t.user_attrs.get("backend", "optuna") for t in study.trials} == {backend}


def check_export(url: str, name: str, metric: str, folder: Path) -> None:
    [path] = export_configs(url, name, optimizer="adam", output=folder / f"{name}.json", fmt="json")
    doc = json.loads(path.read_text())
    assert doc["metric"]["name"] == metric and doc["metric"]["seeds"] == 2
    assert doc["workload"]["name"].startswith("tasks_mod:")


def test_function_and_class_workloads_tune_on_the_optuna_backend(tmp_path):
    folder = write_tasks(tmp_path / "tasks")
    for data, metric, epochs in ((FUNCTION_SPEC, "val_loss", 4), (CLASS_SPEC, "val_mse", 3)):
        spec = load_spec(write_spec(folder, data))
        url = f"sqlite:///{tmp_path / (data['name'] + '.db')}"
        run_campaign(spec, RunnerConfig(storage=url, threads=1))
        check_campaign(url, data["name"], metric, epochs, "optuna")
        check_export(url, data["name"], metric, tmp_path)
    stored = runs_frame(f"sqlite:///{tmp_path / 'fn.db'}", "fn")
    assert stored["hyperparameters"].iloc[0]["lr"] > 0


@pytest.mark.slow
@pytest.mark.ray
def test_function_and_class_workloads_tune_on_the_ray_backend(tmp_path):
    pytest.importorskip("ray")
    folder = write_tasks(tmp_path / "tasks")
    # FIFO: every trial runs to its end, so the counts are those of the Optuna backend.
    paths = [
        write_spec(folder, {**d, "ray": {"scheduler": "fifo"}}) for d in (FUNCTION_SPEC, CLASS_SPEC)
    ]
    # Its own process and local Ray; the trials run in Ray workers started elsewhere (cwd /),
    # which import the task module from the spec's directory.
    script = textwrap.dedent(f"""
        from studies.ray_backend import ray_session, run_campaign_ray
        from studies.runner import RunnerConfig
        from studies.spec import load_spec
        with ray_session(num_cpus=2):
            for path, db in {[(str(p), str(tmp_path / (p.stem + "-ray.db"))) for p in paths]!r}:
                run_campaign_ray(load_spec(path), RunnerConfig(storage="sqlite:///" + db))
    """)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HVADAM_COMPILE": "0"}
    proc = subprocess.run(
        [sys.executable, "-c", script], env=env, cwd="/", capture_output=True, text=True,
        timeout=400,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    for name, metric, epochs in (("fn", "val_loss", 4), ("cls", "val_mse", 3)):
        url = f"sqlite:///{tmp_path / (name + '-ray.db')}"
        check_campaign(url, name, metric, epochs, "ray")
        check_export(url, name, metric, tmp_path)


def test_a_diverging_function_workload_is_pruned_with_the_reason(tmp_path):
    folder = write_tasks(tmp_path / "tasks")
    data = {
        **FUNCTION_SPEC,
        "name": "div",
        "optimizers": {"sgd": {"lr": {"low": 1e6, "high": 1e7, "default": 1e6}}},
        "budget": {"trials": 1},
        "confirm": {"seeds": 0},
    }
    data["workload"] = {**data["workload"], "options": {"epochs": 30, "scale": 1.0}}
    url = f"sqlite:///{tmp_path / 'div.db'}"
    run_campaign(load_spec(write_spec(folder, data)), RunnerConfig(storage=url, threads=1))
    [run] = runs_frame(url, "div").to_dict("records")
    assert run["status"] == "pruned"
    assert run["reason"].startswith("diverged at epoch ")
    assert "val_loss is " in run["reason"] or "train_loss is " in run["reason"]


def test_the_shipped_examples_load_and_run_one_epoch():
    for name, metric in (("my_tasks", "val_loss"), ("my_workload", "val_loss")):
        spec = load_spec(ROOT / "examples" / f"{name}.yaml")
        w = load_workload(
            spec.workload,
            {**spec.workload_options, "epochs": 1},
            metric=spec.workload_metric,
            base_dir=spec.base_dir,
        )
        reports = []
        result = w.run(
            lambda p: torch.optim.Adam(p, lr=1e-2), seed=0, device="cpu", on_epoch=reports.append
        )
        assert w.metric == metric and len(reports) == 1
        assert result.value == pytest.approx(reports[0].value) and 0 < result.value < 2


# ---- bad input: one line naming the key, before any trial -------------------------------------


def spec_error(tmp_path: Path, workload: dict, source: str = TASKS) -> str:
    folder = write_tasks(tmp_path / "bad", source)
    data = {**FUNCTION_SPEC, "name": "bad", "workload": workload}
    with pytest.raises(SpecError) as info:
        load_spec(write_spec(folder, data))
    message = str(info.value)
    assert "\n" not in message
    return message


METRIC = {"name": "val_loss", "direction": "minimize"}


@pytest.mark.parametrize(
    ("workload", "source", "expected"),
    [
        ({"name": "no_such_mod:train", "metric": METRIC, "epochs": 2}, TASKS,
         r"workload\.name: cannot import module 'no_such_mod' \(looked in .*bad, then sys\.path\)"
         r": ModuleNotFoundError"),
        ({"name": "tasks_mod:train", "metric": METRIC, "epochs": 2}, "import not_there\n",
         r"workload\.name: cannot import module 'tasks_mod'.*No module named 'not_there'"),
        ({"name": "tasks_mod:nope", "metric": METRIC, "epochs": 2}, TASKS,
         r"workload\.name: workload 'tasks_mod:nope': module 'tasks_mod' .* no attribute 'nope'"),
        ({"name": "tasks_mod:train", "metric": METRIC, "epochs": 2},
         "def train(make_optimizer, *, seed, device):\n    return 0.0\n",
         r"workload\.name: .*signature \(make_optimizer, \*, seed, device, options, report\); "
         r"missing keyword parameter\(s\) options, report"),
        ({"name": "tasks_mod:train", "metric": METRIC, "epochs": 2},
         "def train(make_optimizer, *, seed, device, options, report, extra):\n    return 0\n",
         r"workload\.name: .*required parameter\(s\) the runner does not pass: extra"),
        ({"name": "tasks_mod:train", "epochs": 2}, TASKS,
         r"workload\.metric: missing; 'tasks_mod:train' is a function"),
        ({"name": "tasks_mod:train", "metric": {"name": "v", "direction": "up"}, "epochs": 2},
         TASKS, r"workload\.metric: 'metric\.direction' must be one of minimize, maximize"),
        ({"name": "tasks_mod:Fit", "metric": METRIC}, TASKS,
         r"workload\.metric: only for a function workload; 'tasks_mod:Fit' defines its own "
         r"\(val_mse, minimize\)"),
        ({"name": "tasks_mod:train", "metric": METRIC}, TASKS,
         r"workload\.options: option 'epochs' is missing"),
        ({"name": "tasks_mod:Fit", "epochs": 0}, TASKS,
         r"workload\.options: option 'epochs' = 0 is out of range"),
        ({"name": "tasks_mod:math", "metric": METRIC, "epochs": 2}, TASKS,
         r"workload\.name: workload 'tasks_mod:math' is of type module"),
        ({"name": "nonsense", "metric": METRIC}, TASKS,
         r"workload\.name: unknown workload 'nonsense'; known: .*digits-mlp.*'module:function'"),
    ],
)  # fmt: skip
def test_bad_user_workloads_are_one_line_naming_the_key(tmp_path, workload, source, expected):
    message = spec_error(tmp_path, workload, source)
    assert re.search(expected, message), message


def test_the_command_line_reports_a_bad_workload_before_any_trial(tmp_path):
    folder = write_tasks(tmp_path / "cli", "def train(make_optimizer, *, seed):\n    return 0\n")
    spec = write_spec(folder, {**FUNCTION_SPEC, "name": "clibad"})
    db = tmp_path / "cli.db"
    proc = subprocess.run(
        [sys.executable, "-m", "studies.cli", "tune", str(spec), "--storage", f"sqlite:///{db}"],
        env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert proc.returncode != 0
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "workload.name:" in lines[0] and "signature" in lines[0]
    assert not db.exists()


def test_same_module_name_in_two_spec_directories_loads_each_ones_own(tmp_path):
    one = write_tasks(tmp_path / "one", "def train(m, *, seed, device, options, report):\n"
                                        "    return 1.0\n")  # fmt: skip
    two = write_tasks(tmp_path / "two", "def train(m, *, seed, device, options, report):\n"
                                        "    return 2.0\n")  # fmt: skip
    values = []
    for folder in (one, two, one):
        w = load_workload("tasks_mod:train", {"epochs": 1}, metric=METRIC, base_dir=folder)
        values.append(w.run(lambda p: None, seed=0).value)
    assert values == [1.0, 2.0, 1.0]


def test_installed_packages_register_workloads_under_the_entry_point_group(tmp_path, monkeypatch):
    # A real distribution on sys.path (what `pip install` leaves): its metadata lists the
    # entry point, and importlib.metadata finds it there.
    site = tmp_path / "site"
    site.mkdir()
    (site / "ep_tasks.py").write_text(TASKS)  # a name no other test imports
    info = site / "my_pkg-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: my-pkg\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(
        f"[{ENTRY_POINT_GROUP}]\nsine-fit = ep_tasks:Fit\nsine-train = ep_tasks:train\n"
    )
    monkeypatch.syspath_prepend(str(site))
    assert {"sine-fit", "sine-train"} <= set(available_workloads())
    assert resolve_workload("sine-fit")[0].__name__ == "Fit"
    assert issubclass(resolve_workload("sine-train")[0], FunctionWorkload)
    data = {**FUNCTION_SPEC, "name": "ep", "workload": {"name": "sine-fit", "epochs": 2}}
    spec = load_spec(write_spec(tmp_path, data))
    assert spec.build_workload().metric == "val_mse"
    with pytest.raises(WorkloadLoadError, match="'metric' is required"):
        load_workload("sine-train", {"epochs": 2})


def test_function_report_stores_metrics_and_the_return_forms(tmp_path):
    source = (
        "def train(make_optimizer, *, seed, device, options, report):\n"
        "    report(1, 3.0, train_loss=4.0)\n"
        "    report(2, 2.0, train_loss=3.0)\n"
        "    return options['ret']\n"
    )
    folder = write_tasks(tmp_path / "ret", source)
    seen = []
    for ret, value, metrics in (
        (1.5, 1.5, {"val_loss": 1.5}),
        (None, 2.0, {"train_loss": 3.0, "val_loss": 2.0}),
        ({"val_loss": 0.5, "acc": 0.9}, 0.5, {"val_loss": 0.5, "acc": 0.9}),
    ):
        w = load_workload(
            "tasks_mod:train", {"epochs": 2, "ret": ret}, metric=METRIC, base_dir=folder
        )
        result = w.run(lambda p: None, seed=0, on_epoch=seen.append)
        assert (result.value, result.metrics) == (value, metrics)
    assert [r.metrics for r in seen[:2]] == [
        {"train_loss": 4.0, "val_loss": 3.0},
        {"train_loss": 3.0, "val_loss": 2.0},
    ]
    w = load_workload("tasks_mod:train", {"epochs": 2, "ret": "x"}, metric=METRIC, base_dir=folder)
    with pytest.raises(ValueError, match="returned str; return the final val_loss"):
        w.run(lambda p: None, seed=0)


def test_the_documented_example_is_the_shipped_one():
    docs = (ROOT / "docs" / "workloads.md").read_text()
    block = docs.split("## Your own workloads", 1)[1].split("```python\n", 1)[1].split("```", 1)[0]
    assert "def train(make_optimizer, *, seed, device, options, report):" in block
    assert block.strip() in (ROOT / "examples" / "my_tasks.py").read_text()
    assert len(block.strip().splitlines()) <= 26
