"""The results database: storage URLs, the project's tables, claims and the pandas frames.

Every database test runs on a real SQLite file and on the real PostgreSQL server (`storage_url`).
"""

from __future__ import annotations

import concurrent.futures
import math
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from studies.results import (
    CampaignConflict,
    ResultsDB,
    compare_frame,
    curves_frame,
    git_revision,
    gpu_name,
    library_versions,
    runs_frame,
)
from studies.results.provenance import cudnn_version
from studies.results.values import finite_or_none, is_finite_number, jsonable
from studies.storage import (
    DEFAULT_STORAGE,
    STORAGE_ENV,
    CampaignLock,
    StorageError,
    check_storage_url,
    close_pooled_connections,
    connect_check,
    get_engine,
    mask_text,
    mask_url,
    optuna_storage,
    read_connection,
    resolve_storage_url,
)

SPEC = {"optimizers": {"adam": {}, "sgd": {}, "hvadam": {}}, "budget": {"trials": 3}}


# ---- URLs --------------------------------------------------------------------------------------


def test_mask_url_hides_the_password_and_keeps_the_rest():
    url = "postgresql+psycopg://alice:s3cr%40t@db.example:5432/hv"
    masked = mask_url(url)
    assert "s3cr" not in masked
    assert masked == "postgresql+psycopg://alice:***@db.example:5432/hv"
    assert mask_url("sqlite:///runs/hvadam.db") == "sqlite:///runs/hvadam.db"


def test_mask_text_hides_passwords_inside_free_text():
    text = "could not open postgresql://bob:hunter2@h/db (timeout); also mysql://u:pw@x/y"
    masked = mask_text(text)
    assert "hunter2" not in masked and ":pw@" not in masked
    assert "postgresql://bob:***@h/db" in masked and "mysql://u:***@x/y" in masked


def test_storage_url_comes_from_flag_then_environment_then_default(monkeypatch):
    monkeypatch.delenv(STORAGE_ENV, raising=False)
    assert resolve_storage_url(None) == DEFAULT_STORAGE == "sqlite:///hvadam.db"
    monkeypatch.setenv(STORAGE_ENV, "sqlite:///from-env.db")
    assert resolve_storage_url(None) == "sqlite:///from-env.db"
    assert resolve_storage_url("sqlite:///flag.db") == "sqlite:///flag.db"


@pytest.mark.parametrize(
    ("url", "needle"),
    [
        ("not a url", "not a database URL"),
        ("nosuchdb+drv://u:topsecret@h/db", "no database driver"),
        ("sqlite://", "in-memory"),
        ("sqlite:////no/such/dir/hvadam.db", "does not exist"),
    ],
)
def test_bad_storage_url_names_it_masked_and_the_accepted_forms(url, needle):
    with pytest.raises(StorageError) as info:
        check_storage_url(url)
    message = str(info.value)
    assert needle in message
    assert "topsecret" not in message
    if needle in ("not a database URL", "no database driver"):
        assert "sqlite:///" in message and "postgresql+psycopg://" in message


def test_unreachable_server_error_is_masked():
    url = "postgresql+psycopg://postgres:topsecret@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(StorageError) as info:
        connect_check(url)
    assert "topsecret" not in str(info.value)
    assert "postgres:***@127.0.0.1:1" in str(info.value)


def test_sqlite_database_uses_wal_and_a_busy_timeout(sqlite_url):
    with get_engine(sqlite_url).connect() as conn:
        assert conn.exec_driver_sql("PRAGMA journal_mode").scalar() == "wal"
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 60_000


def _hold_write_lock(url: str):
    """A second connection (as another worker would) holding SQLite's write lock."""
    import sqlite3

    conn = sqlite3.connect(sa.make_url(url).database, isolation_level=None, timeout=0.1)
    conn.execute("BEGIN IMMEDIATE")
    return conn


def test_sqlite_reads_run_beside_a_writer_and_writes_wait_for_it(sqlite_url):
    import optuna

    storage = optuna_storage(sqlite_url)
    study = optuna.create_study(study_name="s", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=2)
    engine = get_engine(sqlite_url)
    writer = _hold_write_lock(sqlite_url)
    try:
        start = time.monotonic()
        # Optuna's reads (what workers do most: counting trials, pruning) and the project's.
        assert len(storage.get_all_trials(study._study_id)) == 2
        assert storage.get_study_id_from_name("s") == study._study_id
        with read_connection(engine) as conn:
            assert conn.exec_driver_sql("SELECT count(*) FROM trials").scalar() == 2
        assert ResultsDB(sqlite_url).tables_exist() is False  # Optuna's tables only
        assert time.monotonic() - start < 5  # none of them waited for the writer

        def write() -> None:
            with engine.begin() as conn:
                conn.exec_driver_sql("CREATE TABLE t (x INTEGER)")

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            pending = pool.submit(write)
            time.sleep(0.5)
            assert not pending.done()  # a write transaction waits for the lock from its BEGIN
            writer.rollback()
            pending.result(timeout=30)
    finally:
        writer.close()


def test_a_pickled_sqlite_storage_keeps_its_settings(sqlite_url):
    import pickle

    import optuna

    storage = pickle.loads(pickle.dumps(optuna_storage(sqlite_url)))
    assert type(storage).__name__ == "SQLiteRDBStorage"
    study = optuna.create_study(study_name="p", storage=storage)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    writer = _hold_write_lock(sqlite_url)
    try:
        assert len(storage.get_all_trials(study._study_id)) == 1  # still a deferred read
    finally:
        writer.close()
    with storage.engine.connect() as conn:
        assert conn.exec_driver_sql("PRAGMA busy_timeout").scalar() >= 60_000


def test_closing_pooled_connections_leaves_none_open_and_engines_reconnect(storage_url):
    engine = get_engine(storage_url)
    with engine.connect() as conn:
        conn.execute(sa.text("SELECT 1"))
    assert engine.pool.checkedin() >= 1
    close_pooled_connections()
    assert engine.pool.checkedin() == 0
    with engine.connect() as conn:
        assert conn.execute(sa.text("SELECT 1")).scalar() == 1


# ---- tables ------------------------------------------------------------------------------------


def _db(url: str) -> ResultsDB:
    db = ResultsDB(url)
    db.create_tables()
    db.register_campaign(
        name="c1",
        spec_hash="h1",
        spec=SPEC,
        workload="valley2d",
        metric="loss",
        direction="minimize",
    )
    return db


def _run(db: ResultsDB, optimizer: str, phase: str, trial: int, seed: int, **finish) -> int:
    run_id = db.start_run(
        campaign="c1",
        study=f"c1/{optimizer}",
        optimizer=optimizer,
        trial_number=trial,
        phase=phase,
        seed=seed,
        device="cpu",
        hyperparameters={"lr": 0.1, "betas": (0.9, 0.999)},
    )
    if finish:
        db.finish_run(run_id, **finish)
    return run_id


def test_same_spec_registers_once_and_a_different_spec_is_refused(storage_url):
    db = _db(storage_url)
    assert not db.register_campaign(
        name="c1",
        spec_hash="h1",
        spec=SPEC,
        workload="valley2d",
        metric="loss",
        direction="minimize",
    )
    with pytest.raises(CampaignConflict, match=r"'c1' already exists .* different spec"):
        db.register_campaign(
            name="c1",
            spec_hash="h2",
            spec=SPEC,
            workload="valley2d",
            metric="loss",
            direction="minimize",
        )
    assert [c["name"] for c in db.campaigns()] == ["c1"]
    assert db.campaign("c1")["spec"] == SPEC


def test_run_records_and_curves_come_back_in_the_frames(storage_url):
    db = _db(storage_url)
    run_id = _run(db, "adam", "search", 0, 11)
    db.add_curves(run_id, [(1, "train_loss", 2.0), (1, "restarts", 0.0), (2, "train_loss", 1.5)])
    db.add_curves(run_id, [(3, "train_loss", float("nan"))])
    db.finish_run(
        run_id,
        status="complete",
        wall_time=1.25,
        value=0.5,
        metrics={"test_loss": 0.55, "bad": float("inf")},
        extras={"path": [[1.0, 2.0], [0.5, 0.25]]},
    )
    failed = _run(db, "sgd", "search", 0, 11)
    db.finish_run(
        failed, status="failed", reason="ValueError: boom", traceback="Traceback...\nValueError"
    )

    runs = runs_frame(storage_url, "c1")
    assert list(runs["run_id"]) == [run_id, failed]
    first = runs.iloc[0]
    assert first["campaign"] == "c1" and first["study"] == "c1/adam"
    assert first["phase"] == "search" and first["trial_number"] == 0 and first["seed"] == 11
    assert first["status"] == "complete" and first["value"] == 0.5 and first["wall_time"] == 1.25
    assert first["metric"] == "loss" and first["direction"] == "minimize"
    assert first["hyperparameters"] == {"lr": 0.1, "betas": [0.9, 0.999]}
    assert first["metrics"] == {"test_loss": 0.55, "bad": None}  # strict JSON: inf -> null
    assert first["extras"] == {"path": [[1.0, 2.0], [0.5, 0.25]]}
    assert first["versions"]["optuna"] and first["versions"]["torch"]
    assert first["git_revision"] == git_revision()
    assert first["finished_at"] >= first["started_at"]
    second = runs.iloc[1]
    assert second["status"] == "failed" and second["reason"] == "ValueError: boom"
    assert math.isnan(second["value"]) and second["traceback"].endswith("ValueError")

    curves = curves_frame(storage_url, "c1")
    assert list(zip(curves["epoch"], curves["metric"], strict=True)) == [
        (1, "train_loss"),
        (1, "restarts"),
        (2, "train_loss"),
        (3, "train_loss"),
    ]
    assert curves["value"].iloc[:3].tolist() == [2.0, 0.0, 1.5]
    assert math.isnan(curves["value"].iloc[3])
    assert set(curves["optimizer"]) == {"adam"} and set(curves["run_id"]) == {run_id}


def test_frames_of_an_empty_or_unknown_campaign_are_empty_with_columns(storage_url):
    assert runs_frame(storage_url, "nope").empty  # no tables yet
    _db(storage_url)
    frame = runs_frame(storage_url, "nope")
    assert frame.empty and "hyperparameters" in frame.columns
    assert curves_frame(storage_url, "nope").empty


def test_compare_frame_ranks_by_confirm_mean_with_counts_and_time(storage_url):
    db = _db(storage_url)
    # adam: best search 0.2 (trial 1), confirm [0.3, 0.5, 0.4]
    _run(db, "adam", "search", 0, 1, status="complete", value=0.9, wall_time=1.0)
    _run(db, "adam", "search", 1, 2, status="complete", value=0.2, wall_time=1.0)
    _run(db, "adam", "search", 2, 3, status="pruned", reason="pruned", wall_time=0.5)
    for seed, v in zip((7, 8, 9), (0.3, 0.5, 0.4), strict=True):
        _run(db, "adam", "confirm", 1, seed, status="complete", value=v, wall_time=2.0)
    # sgd: best search 0.1 but a worse confirm mean; one failure
    _run(db, "sgd", "search", 0, 1, status="complete", value=0.1, wall_time=1.0)
    _run(db, "sgd", "search", 1, 2, status="failed", reason="boom", wall_time=0.1)
    for seed, v in zip((7, 8), (0.8, 1.0), strict=True):
        _run(db, "sgd", "confirm", 0, seed, status="complete", value=v, wall_time=2.0)
    _run(db, "sgd", "confirm", 0, 9, status="failed", reason="diverged", wall_time=1.0)
    # hvadam: nothing finished yet

    frame = compare_frame(storage_url, "c1")
    assert list(frame["optimizer"]) == ["adam", "sgd", "hvadam"]
    adam, sgd, hv = (frame.iloc[i] for i in range(3))
    assert adam["best_value"] == 0.2 and adam["best_trial"] == 1
    assert adam["confirm_mean"] == pytest.approx(statistics.mean([0.3, 0.5, 0.4]))
    assert adam["confirm_std"] == pytest.approx(statistics.stdev([0.3, 0.5, 0.4]))
    assert adam["confirm_seeds"] == 3
    assert (adam["trials_complete"], adam["trials_pruned"], adam["trials_failed"]) == (2, 1, 0)
    assert adam["compute_time"] == pytest.approx(8.5)
    assert sgd["best_value"] == 0.1 and sgd["confirm_mean"] == pytest.approx(0.9)
    assert sgd["confirm_seeds"] == 2 and sgd["trials_failed"] == 1
    assert sgd["compute_time"] == pytest.approx(6.1)
    assert math.isnan(hv["best_value"]) and hv["confirm_seeds"] == 0
    assert (frame["metric"] == "loss").all()


def test_each_claim_goes_to_exactly_one_of_many_concurrent_claimants(storage_url):
    db = _db(storage_url)

    def grab(slot: int):
        return db.claim(
            campaign="c1", optimizer="adam", phase="confirm", slot=slot, grace_period=60
        )

    slots = [s for s in range(4) for _ in range(6)]
    with concurrent.futures.ThreadPoolExecutor(max_workers=6) as pool:
        results = list(pool.map(grab, slots))
    won = [s for s, r in zip(slots, results, strict=True) if r is not None]
    assert sorted(won) == [0, 1, 2, 3]
    claims = db.claims("c1", "confirm")
    assert sorted(c["slot"] for c in claims) == [0, 1, 2, 3]


def test_a_stale_claim_is_taken_over_and_its_run_marked_failed(storage_url):
    db = _db(storage_url)
    claim_id, token = db.claim(
        campaign="c1", optimizer="adam", phase="confirm", slot=0, grace_period=5
    )
    run_id = _run(db, "adam", "confirm", 0, 123)
    assert db.attach_run(claim_id, token, run_id)
    # fresh heartbeat: nobody else gets it
    assert (
        db.claim(campaign="c1", optimizer="adam", phase="confirm", slot=0, grace_period=5) is None
    )
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE hvadam_claims SET heartbeat_at = :t"), {"t": time.time() - 10})
    taken = db.claim(campaign="c1", optimizer="adam", phase="confirm", slot=0, grace_period=5)
    assert taken is not None and taken[0] == claim_id and taken[1] != token
    # the old holder can no longer complete it; the new one can
    assert not db.complete_claim(claim_id, token)
    assert db.complete_claim(*taken)
    runs = runs_frame(storage_url, "c1")
    assert runs.iloc[0]["status"] == "failed" and "worker lost" in runs.iloc[0]["reason"]
    # a done claim is never taken again, however old
    with db.engine.begin() as conn:
        conn.execute(sa.text("UPDATE hvadam_claims SET heartbeat_at = 0"))
    assert (
        db.claim(campaign="c1", optimizer="adam", phase="confirm", slot=0, grace_period=5) is None
    )


def test_campaign_lock_excludes_other_threads(storage_url):
    _db(storage_url)
    inside = []

    def critical(i: int) -> None:
        with CampaignLock(storage_url, "c1"):
            inside.append(("in", i))
            time.sleep(0.02)
            inside.append(("out", i))

    with concurrent.futures.ThreadPoolExecutor(max_workers=4) as pool:
        list(pool.map(critical, range(4)))
    # strictly alternating in/out: never two holders at once
    assert [kind for kind, _ in inside] == ["in", "out"] * 4


WRITER = """
import sys
from studies.results import ResultsDB
db = ResultsDB(sys.argv[1])
for i in range(40):
    run = db.start_run(campaign="c1", study="c1/adam", optimizer="adam", trial_number=i,
                       phase="search", seed=i, device="cpu", hyperparameters={})
    db.add_curves(run, [(e, "train_loss", 1.0 / e) for e in range(1, 6)])
    db.finish_run(run, status="complete", value=float(i), wall_time=0.0)
"""


def test_several_processes_write_to_one_sqlite_file_without_lock_errors(sqlite_url):
    _db(sqlite_url)
    root = Path(__file__).resolve().parents[2]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, sqlite_url],
            cwd=root,
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin"},
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0], errors
    runs = runs_frame(sqlite_url, "c1")
    assert len(runs) == 120 and (runs["status"] == "complete").all()
    assert len(curves_frame(sqlite_url, "c1")) == 600


def test_library_versions_name_the_libraries_runs_depend_on():
    import importlib.metadata

    import torch

    versions = library_versions()
    assert {"python", "torch", "optuna", "hvadam"} <= set(versions)
    for dist in ("torch", "torchvision", "ray", "optuna"):
        assert versions[dist] == importlib.metadata.version(dist)
    assert versions["cuda"] == torch.version.cuda  # None on a CPU build
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    assert (versions["cudnn"] is None) == (cudnn is None)


def test_finite_or_none_gives_what_a_nullable_float_column_stores():
    import numpy as np
    import torch

    assert finite_or_none(None) is None
    assert finite_or_none(2) == 2.0 and type(finite_or_none(2)) is float
    assert finite_or_none(np.float32(0.5)) == 0.5 and type(finite_or_none(np.float32(0.5))) is float
    assert finite_or_none(torch.tensor(1.5)) == 1.5
    for bad in (math.nan, math.inf, -math.inf, np.float64("nan")):
        assert finite_or_none(bad) is None


def test_is_finite_number_accepts_finite_ints_and_floats_only():
    import numpy as np

    assert is_finite_number(0) and is_finite_number(-3) and is_finite_number(2.5)
    assert is_finite_number(np.float64(2.5))  # a float subclass
    for other in (True, False, None, "1.0", math.nan, math.inf, -math.inf, [1.0], np.int64(3)):
        assert not is_finite_number(other), other


def test_jsonable_gives_strict_json():
    import numpy as np

    value = {"a": (1, np.float32(0.5)), 2: [math.inf, None, True, "x"], "t": np.array([1, 2])}
    assert jsonable(value) == {"a": [1, 0.5], "2": [None, None, True, "x"], "t": [1, 2]}


def test_cudnn_version_numbers_read_as_major_minor_patch():
    # CUDNN_VERSION: major * 1000 + minor * 100 + patch before cuDNN 9, major * 10000 after.
    assert cudnn_version(8907) == "8.9.7"
    assert cudnn_version(90100) == "9.1.0"
    assert cudnn_version(91002) == "9.10.2"
    assert cudnn_version(None) is None


def test_a_run_records_the_gpu_it_ran_on(sqlite_url):
    import torch

    db = _db(sqlite_url)
    cpu = _run(db, "adam", "search", 0, 1)
    rows = runs_frame(sqlite_url, "c1").set_index("run_id")
    versions = rows.loc[cpu, "versions"]
    assert versions["gpu"] is None and versions["torchvision"] and versions["ray"]
    assert versions == {**library_versions(), "gpu": None}
    if torch.cuda.is_available():
        assert gpu_name("cuda") == torch.cuda.get_device_name(0)
    else:
        assert gpu_name("cuda") is None
    assert gpu_name("mps") is None


def test_progress_polling_counts_runs_that_finish_out_of_order(storage_url, tmp_path):
    import io

    import yaml

    from studies.progress import Poller, Progress
    from studies.spec import load_spec

    db = _db(storage_url)
    spec_path = tmp_path / "c1.yaml"
    spec_path.write_text(
        yaml.safe_dump(
            {"name": "c1", "workload": "valley2d", "optimizers": ["adam"], "budget": {"trials": 3}}
        )
    )
    progress = Progress(
        load_spec(str(spec_path)), metric="loss", direction="minimize", stream=io.StringIO()
    )
    poll = Poller(db, "c1", progress)
    first = _run(db, "adam", "search", 0, 1)  # still running
    assert db.unfinished_floor("c1") == first - 1
    second = _run(db, "adam", "search", 1, 2, status="complete", value=2.0)
    poll()
    assert progress.state["adam"].search == 1
    db.finish_run(first, status="complete", value=1.0)  # finishes after a later run
    assert db.unfinished_floor("c1") == second
    poll()
    poll()  # nothing new: nothing counted twice
    assert progress.state["adam"].search == 2 and progress.state["adam"].best == 1.0
