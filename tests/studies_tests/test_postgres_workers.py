"""Many workers on a real PostgreSQL server, and the storage password in every output.

Four `hvadam worker` processes (real subprocesses, started at once, nothing prepared before)
share one campaign: the budget is finished with no trial lost or duplicated and each confirm
seed runs once. Then every output of a campaign run, its exports and its error paths is
searched for the password.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import optuna
import pytest
import sqlalchemy as sa
from helpers import subprocess_env, write_spec
from optuna.trial import TrialState

from studies.results import ResultsDB, runs_frame
from studies.runner import confirm_seed

pytestmark = [pytest.mark.postgres]

PASSWORD = "pg-secret-Xy7"  # the conftest PostgreSQL password

SPEC = {
    "name": "pg4",
    "workload": {"name": "valley2d", "options": {"steps": 40, "report_every": 10}},
    "optimizers": ["hvadam", "adam", "sgd"],
    "budget": {"trials": 6},
    "sampler": "tpe",
    "pruner": "none",
    "confirm": {"seeds": 2},
    "seed": 11,
    "device": "cpu",
}


def env_with(url: str | None) -> dict[str, str]:
    env = subprocess_env()
    env.pop("HVADAM_STORAGE", None)
    if url is not None:
        env["HVADAM_STORAGE"] = url  # the URL never goes on a command line (`ps` shows those)
    return env


def hvadam(*args: str, url: str | None, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "studies.cli", *args],
        env=env_with(url),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.slow
def test_four_workers_finish_the_budget_without_losing_or_duplicating_a_trial(
    postgres_url, tmp_path
):
    spec_file = write_spec(tmp_path, SPEC)
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "studies.cli",
                "worker",
                str(spec_file),
                "--threads",
                "1",
                "--worker-index",
                str(i),
            ],
            env=env_with(postgres_url),
            cwd=tmp_path,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for i in range(4)
    ]
    outputs = [p.communicate(timeout=600)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(outputs)
    assert all(PASSWORD not in out for out in outputs)

    runs = runs_frame(postgres_url, "pg4")
    assert runs["worker"].nunique() >= 2  # the work was shared
    assert (runs["status"] == "complete").all()
    for label in SPEC["optimizers"]:
        study = optuna.load_study(study_name=f"pg4/{label}", storage=postgres_url)
        trials = study.get_trials()
        # exactly the budget, numbered 0..5, each finished once
        assert [t.number for t in trials] == list(range(6)), label
        assert all(t.state == TrialState.COMPLETE for t in trials), label
        search = runs[(runs["optimizer"] == label) & (runs["phase"] == "search")]
        assert sorted(search["trial_number"]) == list(range(6)), label  # one row per trial
        confirm = runs[(runs["optimizer"] == label) & (runs["phase"] == "confirm")]
        assert sorted(confirm["seed"]) == [confirm_seed(11, 0), confirm_seed(11, 1)], label
        assert set(confirm["trial_number"]) == {study.best_trial.number}
    claims = ResultsDB(postgres_url).claims("pg4", "confirm")
    assert len(claims) == 6 and all(c["status"] == "done" for c in claims)
    assert all(c["attempts"] == 1 for c in claims)  # each confirm run happened once
    # one study per optimizer, created once despite four processes starting together
    assert sorted(optuna.get_all_study_names(postgres_url)) == ["pg4/adam", "pg4/hvadam", "pg4/sgd"]


@pytest.mark.slow
def test_the_password_never_appears_in_outputs_exports_or_errors(postgres_url, tmp_path):
    spec_file = write_spec(
        tmp_path, SPEC, name="pw", optimizers=["adam"], budget={"trials": 2}, confirm={"seeds": 1}
    )
    outputs: dict[str, str] = {}

    def record(name: str, proc: subprocess.CompletedProcess[str], code: int) -> None:
        outputs[name] = proc.stdout + proc.stderr
        assert proc.returncode == code, (name, outputs[name])

    # a campaign run (storage from the environment and from --storage), its views and exports
    record(
        "tune", hvadam("tune", str(spec_file), "--threads", "1", url=postgres_url, cwd=tmp_path), 0
    )
    record(
        "tune-again",
        hvadam("tune", str(spec_file), "--storage", postgres_url, url=None, cwd=tmp_path),
        0,
    )
    record("status", hvadam("status", url=postgres_url, cwd=tmp_path), 0)
    for fmt in ("table", "csv", "json"):
        record(
            f"compare-{fmt}",
            hvadam("compare", "pw", "--format", fmt, url=postgres_url, cwd=tmp_path),
            0,
        )
    out_file = tmp_path / "job.sbatch"
    record(
        "cluster",
        hvadam(
            "cluster",
            "slurm",
            str(spec_file),
            "--workers",
            "4",
            "-o",
            str(out_file),
            url=postgres_url,
            cwd=tmp_path,
        ),
        0,
    )
    outputs["cluster-script"] = out_file.read_text()

    # error paths: wrong password, no server, no database, a campaign that is not there,
    # a conflicting spec, a malformed URL
    wrong = postgres_url.replace(PASSWORD, PASSWORD + "-wrong")
    port = sa.engine.make_url(postgres_url).port
    dead = postgres_url.replace(f":{port}/", ":1/")
    missing_db = postgres_url.rsplit("/", 1)[0] + "/no_such_db"
    record("wrong-password", hvadam("status", url=wrong, cwd=tmp_path), 2)
    record("no-server", hvadam("tune", str(spec_file), url=dead, cwd=tmp_path), 2)
    record("no-database", hvadam("compare", "pw", url=missing_db, cwd=tmp_path), 2)
    record("no-campaign", hvadam("compare", "nope", url=postgres_url, cwd=tmp_path), 2)
    changed = write_spec(tmp_path, SPEC, name="pw", optimizers=["adam"], seed=12)
    record("conflict", hvadam("tune", str(changed), url=postgres_url, cwd=tmp_path), 2)
    record(
        "bad-url",
        hvadam(
            "status", url=f"postgresql+nodriver://postgres:{PASSWORD}@127.0.0.1/x", cwd=tmp_path
        ),
        2,
    )

    leaks = [name for name, text in outputs.items() if PASSWORD in text]
    assert not leaks, {name: outputs[name] for name in leaks}
    assert "postgres:***@127.0.0.1" in outputs["tune"]
    assert "postgres:***@127.0.0.1" in outputs["cluster-script"]
    for name in ("wrong-password", "no-server", "no-database", "bad-url"):
        assert "***" in outputs[name] and "hvadam: error:" in outputs[name], outputs[name]
