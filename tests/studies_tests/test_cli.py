"""The `hvadam` command line: listing, tune/status/compare on real storages, errors, masking."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import sqlalchemy as sa
import yaml
from helpers import subprocess_env, write_spec

from studies.cli import main
from studies.results import runs_frame
from studies.spec import available_specs

PASSWORD = "pg-secret-Xy7"  # the conftest PostgreSQL password

TINY = {
    "name": "tiny",
    "workload": {"name": "valley2d", "options": {"steps": 20, "report_every": 5}},
    "optimizers": ["hvadam", "sgd"],
    "budget": {"trials": 2},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 2},
    "device": "cpu",
}


def tiny_spec(tmp_path: Path, **changes) -> str:
    return str(write_spec(tmp_path, TINY, **changes))


def hvadam_cli(*args: str, cwd: Path, env: dict[str, str] | None = None):
    """Run `python -m studies.cli` as a user would (a fresh process, real exit code)."""
    full_env = subprocess_env(**(env or {}))
    return subprocess.run(
        [sys.executable, "-m", "studies.cli", *args],
        cwd=cwd,
        env=full_env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def test_specs_lists_the_shipped_campaigns(capsys):
    assert main(["specs"]) == 0
    out = capsys.readouterr().out
    for name in available_specs():
        assert name in out
    assert "digits-mlp" in out and "cifar10-resnet34" in out


def test_spaces_lists_the_shipped_search_spaces(capsys):
    assert main(["spaces"]) == 0
    out = capsys.readouterr().out
    assert "hvadam" in out and "anon" in out and "adaptivity" in out


def test_tune_then_status_and_compare_in_every_format(storage_url, tmp_path, capsys):
    spec = tiny_spec(tmp_path)
    assert main(["tune", spec, "--storage", storage_url, "--threads", "1"]) == 0
    out = capsys.readouterr().out
    # not a terminal: one line per finished run, then the comparison table
    assert out.count("[tiny] hvadam search #") == 2 and out.count("[tiny] sgd confirm seed") == 2
    assert "best search function_value" in out and "confirm function_value mean" in out
    assert PASSWORD not in out

    assert main(["status", "tiny", "--storage", storage_url]) == 0
    status = capsys.readouterr().out
    assert "hvadam" in status and "done" in status and "2/2" in status
    assert main(["status", "--storage", storage_url]) == 0
    assert "tiny" in capsys.readouterr().out

    assert main(["compare", "tiny", "--storage", storage_url, "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert {r["optimizer"] for r in rows} == {"hvadam", "sgd"}
    for r in rows:
        assert r["confirm_seeds"] == 2 and r["trials_complete"] == 2
        assert r["confirm_mean"] is not None and r["compute_time"] > 0
    assert main(["compare", "tiny", "--storage", storage_url, "--format", "csv"]) == 0
    csv = capsys.readouterr().out.splitlines()
    assert csv[0].startswith("optimizer,metric,direction,best_value") and len(csv) == 3


def test_errors_are_one_clean_line_with_exit_status_2(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump({**TINY, "sampler": "bayes"}))
    cases = [
        (["tune", str(bad), "--storage", f"sqlite:///{tmp_path}/x.db"], "sampler: unknown sampler"),
        (["tune", "no-such-spec"], "no campaign spec 'no-such-spec'"),
        (
            ["compare", "nope", "--storage", f"sqlite:///{tmp_path}/x.db"],
            "x.db' does not exist (nothing was created)",
        ),
        (["status", "--storage", "bogus://u:hunter2@h/db"], "no database driver"),
    ]
    for args, needle in cases:
        assert main(args) == 2, args
        captured = capsys.readouterr()
        lines = captured.err.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("hvadam: error: "), captured.err
        assert needle in lines[0]
        assert "hunter2" not in captured.err + captured.out


def test_a_real_process_exits_2_without_traceback(tmp_path):
    proc = hvadam_cli(
        "status", "--storage", "postgresql+psycopg://u:hunter2@127.0.0.1:1/x", cwd=tmp_path
    )
    assert proc.returncode == 2
    assert proc.stderr.startswith("hvadam: error: cannot") or "hvadam: error:" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "hunter2" not in proc.stderr and "u:***@127.0.0.1:1" in proc.stderr


def test_the_command_exits_quickly_after_flushing_output_and_running_atexit_handlers(tmp_path):
    # `hvadam` (studies.cli:run) leaves with os._exit once main has returned; whatever a normal
    # exit finishes must be finished first.
    script = (
        "import atexit, threading, time, sys\n"
        "import studies.cli as cli\n"
        "atexit.register(lambda: print('atexit ran', flush=True))\n"
        "late = threading.Thread(target=lambda: (time.sleep(0.3), print('thread done')))\n"
        "late.start()\n"
        "sys.stdout.write('unflushed tail')\n"
        "cli.run(sys.argv[1:])\n"
    )
    env = subprocess_env(PYTHONUNBUFFERED="")
    ok = subprocess.run(
        [sys.executable, "-c", script, "specs"], env=env, capture_output=True, text=True
    )
    assert ok.returncode == 0, ok.stderr
    assert "digits" in ok.stdout and "unflushed tail" in ok.stdout
    assert "thread done" in ok.stdout and ok.stdout.rstrip().endswith("atexit ran")
    bad = subprocess.run(
        [
            sys.executable,
            "-c",
            script,
            "compare",
            "nope",
            "--storage",
            f"sqlite:///{tmp_path}/x.db",
        ],
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "hvadam: error:" in bad.stderr and "atexit ran" in bad.stdout


def test_a_malformed_spec_runs_no_trial(tmp_path):
    url = f"sqlite:///{tmp_path}/x.db"
    bad = tiny_spec(tmp_path, optimizers={"hvadam": {"adaptivity": {"low": 2.0, "high": 1.0}}})
    assert main(["tune", bad, "--storage", url]) == 2
    engine = sa.create_engine(url)
    assert not sa.inspect(engine).has_table("trials")  # nothing was even created


def test_postgres_password_never_appears_in_output_or_database(
    postgres_url, tmp_path, capfd, monkeypatch
):
    spec = tiny_spec(tmp_path)
    monkeypatch.setenv("HVADAM_STORAGE", postgres_url)
    outputs = []
    for args in (
        ["tune", spec, "--threads", "1"],
        ["status"],
        ["status", "tiny"],
        ["compare", "tiny"],
    ):
        assert main(args) == 0, args
        captured = capfd.readouterr()
        outputs.append(captured.out + captured.err)
    text = "\n".join(outputs)
    assert PASSWORD not in text
    assert "postgres:***@127.0.0.1" in outputs[0]
    # nothing stored in the database carries the password either
    engine = sa.create_engine(postgres_url)
    with engine.connect() as conn:
        for table in (
            "hvadam_runs",
            "hvadam_campaigns",
            "study_user_attributes",
            "trial_user_attributes",
        ):
            rows = conn.execute(sa.text(f"SELECT * FROM {table}")).all()
            assert rows and PASSWORD not in repr(rows), table
    engine.dispose()


@pytest.mark.slow
def test_demo_runs_both_shipped_campaigns_and_prints_their_tables(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("HVADAM_STORAGE", raising=False)
    monkeypatch.setenv("HVADAM_COMPILE", "0")  # what the demo sets; restored afterwards
    assert main(["demo", "--trials", "2", "--seeds", "1"]) == 0
    out = capsys.readouterr().out
    assert "== digits-t2s1: digits-mlp" in out and "== valley2d-t2s1: valley2d" in out
    assert "confirm val_accuracy mean" in out and "confirm function_value mean" in out
    for name in ("hvadam", "anon", "adam", "sgd"):
        assert name in out
    assert "hvadam dashboard" in out
    assert (tmp_path / "hvadam.db").is_file()  # the default storage, in the working directory
    url = f"sqlite:///{tmp_path / 'hvadam.db'}"
    for campaign in ("digits-t2s1", "valley2d-t2s1"):
        runs = runs_frame(url, campaign)
        assert len(runs) == 6 * 3 and (runs["status"] != "running").all()
        assert runs.groupby("optimizer").size().eq(3).all()  # 2 search + 1 confirm each


def test_progress_draws_a_bar_per_optimizer_on_a_terminal(tmp_path):
    import io

    from studies.progress import Progress
    from studies.runner import Event
    from studies.spec import load_spec

    spec = load_spec(tiny_spec(tmp_path))
    stream = io.StringIO()
    progress = Progress(
        spec, metric="function_value", direction="minimize", stream=stream, tty=True
    )
    threads = threading.active_count()
    progress.start([Event("sgd", "search", "complete", 3.0, 0, 1, 0.1, run_id=1)])
    assert threading.active_count() == threads  # no tqdm monitor: workers are forked after it
    progress(Event("hvadam", "search", "complete", 2.5, 0, 1, 0.1, run_id=2))
    progress(Event("hvadam", "search", "pruned", None, 1, 2, 0.1, "diverged", run_id=3))
    progress(Event("hvadam", "confirm", "complete", 2.0, 0, 9, 0.1, run_id=4))
    progress(Event("hvadam", "confirm", "complete", 2.0, 0, 9, 0.1, run_id=4))  # seen: ignored
    progress.close()
    text = stream.getvalue()
    assert "best function_value=2.5 | confirm" in text  # 2/2 search done: confirming
    assert "best function_value=3 | search" in text  # sgd: 1 of 2 search trials
    assert "3/4" in text  # hvadam: 2 search + 1 confirm of 2 + 2
    assert progress.phase("hvadam") == "confirm" and progress.state["hvadam"].confirm == 1
