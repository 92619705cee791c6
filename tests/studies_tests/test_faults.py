"""Faults during a campaign, with real processes: signals, a deleted database, a lost worker.

Each test starts `hvadam tune` as a user would (its own process group), does to it what the
fault does, and checks what the user sees and what the database holds afterwards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import sqlalchemy as sa
import yaml

ROOT = Path(__file__).resolve().parents[2]


def write_spec(folder: Path, **changes) -> Path:
    data = {
        "name": "fault",
        "workload": {"name": "valley2d", "options": {"steps": 20000, "report_every": 2000}},
        "optimizers": ["adam", "sgd"],
        "budget": {"trials": 2},
        "sampler": "random",
        "pruner": "none",
        "confirm": {"seeds": 1},
        "device": "cpu",
        **changes,
    }
    path = folder / "fault.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def start_tune(spec: Path, url: str, *flags: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HVADAM_COMPILE": "0"}
    env.pop("HVADAM_DEBUG", None)
    return subprocess.Popen(
        [sys.executable, "-m", "studies.cli", "tune", str(spec), "--storage", url,
         "--threads", "1", *flags],
        cwd=spec.parent, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its own process group, as a shell gives a command
    )  # fmt: skip


def query(url: str, sql: str) -> list:
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return conn.execute(sa.text(sql)).all()
    except sa.exc.OperationalError:
        return []  # the tables do not exist yet
    finally:
        engine.dispose()


def wait_for(url: str, sql: str, at_least: int, proc: subprocess.Popen, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = query(url, sql)
        if rows and rows[0][0] >= at_least:
            return
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {sql} >= {at_least}")


def test_ctrl_c_with_two_workers_stops_both_cleanly_and_requeues_their_trials(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    proc = start_tune(write_spec(tmp_path), url, "--workers", "2")
    # As soon as a trial runs: the other worker may still be asking Optuna for its own.
    running = "SELECT count(*) FROM hvadam_runs WHERE status = 'running'"
    wait_for(url, running, 1, proc)
    os.killpg(proc.pid, signal.SIGINT)  # Ctrl-C reaches the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130
    assert err.strip().splitlines() == [
        "hvadam: interrupted; run the same command again to continue"
    ], err
    assert query(url, running)[0][0] == 0
    states = query(url, "SELECT state FROM trials")
    assert states and all(s != "RUNNING" for (s,) in states), states
    waiting = sum(s == "WAITING" for (s,) in states)
    interrupted = query(url, "SELECT count(*) FROM hvadam_runs WHERE reason LIKE 'interrupted%'")
    assert waiting >= interrupted[0][0] >= 1


def test_a_database_file_deleted_mid_run_fails_loudly(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    spec = write_spec(
        tmp_path,
        workload={"name": "valley2d", "options": {"steps": 3000, "report_every": 500}},
        budget={"trials": 4},
    )
    proc = start_tune(spec, url)
    wait_for(url, "SELECT count(*) FROM hvadam_runs WHERE status = 'complete'", 1, proc)
    for suffix in ("", "-wal", "-shm"):
        Path(f"{tmp_path / 'c.db'}{suffix}").unlink(missing_ok=True)
    out, err = proc.communicate(timeout=180)
    assert proc.returncode == 2, out + err
    assert "was deleted while the campaign ran" in err
    assert "rank" not in out  # no comparison read from a file that is gone


def test_the_rerun_after_a_sigkill_says_what_it_waits_for(tmp_path):
    url = f"sqlite:///{tmp_path / 'c.db'}"
    spec = write_spec(
        tmp_path,
        workload={"name": "valley2d", "options": {"steps": 6000, "report_every": 1000}},
        optimizers=["adam"],
        budget={"trials": 1},
        confirm={"seeds": 0},
    )
    proc = start_tune(spec, url)
    wait_for(url, "SELECT count(*) FROM hvadam_runs WHERE status = 'running'", 1, proc)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    # A grace period longer than the rerun takes to start, so that it has to wait.
    rerun = start_tune(spec, url, "--heartbeat-interval", "2", "--grace-period", "25")
    _, err = rerun.communicate(timeout=240)
    assert rerun.returncode == 0, err
    assert "waiting for 1 run(s) held by other workers: adam trial #0" in err
    assert "taken over once it has had no heartbeat for 25s" in err
    states = query(url, "SELECT state FROM trials ORDER BY number")
    assert [s for (s,) in states] == ["FAIL", "COMPLETE"]
