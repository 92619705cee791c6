"""Live notes and the artifact store: spec keys, the refresh throttle, locations, uploads.

Real SQLite files and real Optuna studies; the hooks are plain functions counting their calls
(the dashboards' hook is exercised end to end in tests/test_dashboard.py).
"""

from __future__ import annotations

import time
from pathlib import Path

import optuna
import pytest
import yaml

from studies.artifacts import (
    ARTIFACTS_ENV,
    ArtifactsError,
    artifact_id,
    default_location,
    fetch,
    open_store,
    resolve_artifacts,
    upload,
)
from studies.live import NOTES_WRITTEN_ATTR, LiveNotes, LiveSettings, Update
from studies.runner import RunnerConfig, Worker, prepare_campaign
from studies.spec import SpecError, load_spec, parse_spec

BASE = {
    "name": "lv",
    "workload": {"name": "valley2d", "options": {"steps": 10, "report_every": 5}},
    "optimizers": ["sgd"],
    "budget": {"trials": 3},
    "sampler": "random",
    "pruner": "none",
    "confirm": {"seeds": 1},
    "device": "cpu",
}


def test_live_settings_default_and_stay_out_of_the_spec_hash():
    plain = parse_spec(BASE)
    assert plain.live == LiveSettings(notes_interval=60.0, checkpoints=False)
    tuned = parse_spec({**BASE, "notes_interval": 5, "artifacts": {"checkpoints": False}})
    assert tuned.live.notes_interval == 5.0
    assert tuned.spec_hash == plain.spec_hash  # reporting, not measuring


@pytest.mark.parametrize(
    ("changes", "key", "allowed"),
    [
        ({"notes_interval": -1}, "notes_interval", ">= 0"),
        ({"notes_interval": "often"}, "notes_interval", ">= 0"),
        ({"artifacts": ["checkpoints"]}, "artifacts", "mapping"),
        ({"artifacts": {"models": True}}, "artifacts.models", "allowed: checkpoints"),
        ({"artifacts": {"checkpoints": "yes"}}, "artifacts.checkpoints", "true or false"),
        # valley2d keeps no model to save
        ({"artifacts": {"checkpoints": True}}, "artifacts.checkpoints", "digits-mlp"),
    ],
)
def test_bad_live_settings_name_the_key_and_what_is_allowed(changes, key, allowed):
    with pytest.raises(SpecError, match=key) as err:
        parse_spec({**BASE, **changes})
    assert allowed in str(err.value)


def _study(url: str, name: str = "s") -> optuna.Study:
    return optuna.create_study(study_name=name, storage=url, load_if_exists=True)


def test_notes_are_refreshed_at_most_every_interval_across_workers(sqlite_url):
    spec = parse_spec({**BASE, "notes_interval": 60})
    calls: list[Update] = []
    study = _study(sqlite_url)
    one = LiveNotes(spec, sqlite_url, study, hooks=[calls.append], artifacts="/x")
    two = LiveNotes(spec, sqlite_url, _study(sqlite_url), hooks=[calls.append])  # another worker
    assert one.run_finished("search", "sgd") is False  # the first one interval after the start
    assert calls == []
    one._next = two._next = 0.0  # as if both had run for an interval
    assert one.run_finished("search", "sgd") is True
    assert two.run_finished("search", "sgd") is False  # another worker wrote them just now
    assert one.run_finished("search", "sgd") is False
    assert len(calls) == 1
    assert calls[0] == Update(sqlite_url, "lv", "search", "sgd", confirmed=False, artifacts="/x")
    written = study._storage.get_study_system_attrs(study._study_id)[NOTES_WRITTEN_ATTR]
    assert abs(written - time.time()) < 30
    # after every confirm run, whatever the interval
    assert two.run_finished("confirm", "sgd", confirmed=True) is True
    assert calls[-1].phase == "confirm" and calls[-1].confirmed is True
    # the interval over (as if written 61 s ago): the next search run refreshes
    study._storage.set_study_system_attr(study._study_id, NOTES_WRITTEN_ATTR, time.time() - 61)
    one._next = two._next = 0.0
    assert two.run_finished("search", "sgd") is True
    assert len(calls) == 3


def test_a_failing_note_hook_warns_and_never_raises(sqlite_url, capsys):
    def broken(update: Update) -> None:
        raise RuntimeError(f"cannot write postgresql://u:secret@db/x for {update.optimizer}")

    spec = parse_spec({**BASE, "notes_interval": 0})
    live = LiveNotes(spec, sqlite_url, _study(sqlite_url), hooks=[broken])
    assert live.run_finished("confirm", "sgd") is True
    assert live.failures == 1
    err = capsys.readouterr().err
    assert "warning" in err and "RuntimeError" in err and "the runs go on" in err
    assert "secret" not in err  # masked


def test_a_worker_calls_the_hooks_after_runs_and_never_fails_a_trial(sqlite_url, tmp_path):
    path = tmp_path / "lv.yaml"
    path.write_text(yaml.safe_dump({**BASE, "notes_interval": 0}))
    spec = load_spec(path)
    prepare_campaign(spec, sqlite_url)
    seen: list[tuple[str, bool]] = []

    def hook(update: Update) -> None:
        seen.append((update.phase, update.confirmed))
        raise ValueError("the dashboard is down")

    worker = Worker(spec, RunnerConfig(storage=sqlite_url, threads=1))
    worker.live.hooks = [hook]
    worker.run()
    assert seen == [("search", False)] * 3 + [("confirm", True)]
    study = optuna.load_study(study_name="lv/sgd", storage=sqlite_url)
    assert all(t.state == optuna.trial.TrialState.COMPLETE for t in study.trials)
    # the artifact store defaults to a directory beside the SQLite file
    assert worker.artifacts == str(
        Path(sqlite_url[len("sqlite:///") :]).with_name("hvadam-artifacts")
    )


def test_the_artifact_location_follows_flag_then_environment_then_sqlite(tmp_path, monkeypatch):
    monkeypatch.delenv(ARTIFACTS_ENV, raising=False)
    url = f"sqlite:///{tmp_path / 'runs' / 'camp.db'}"
    assert default_location(url) == str(tmp_path / "runs" / "camp-artifacts")
    assert resolve_artifacts(url) == str(tmp_path / "runs" / "camp-artifacts")
    monkeypatch.setenv(ARTIFACTS_ENV, str(tmp_path / "env"))
    assert resolve_artifacts(url) == str(tmp_path / "env")
    assert resolve_artifacts(url, "s3://bucket") == "s3://bucket"
    monkeypatch.delenv(ARTIFACTS_ENV)
    pg = "postgresql://u:pw@db.example/hv"
    assert resolve_artifacts(pg) is None  # no local default beside a server database
    with pytest.raises(ArtifactsError, match=r"--artifacts.*different disks"):
        resolve_artifacts(pg, required=True)
    with pytest.raises(ArtifactsError, match=r"unsupported scheme 'gs'.*s3://BUCKET"):
        resolve_artifacts(pg, "gs://bucket")
    with pytest.raises(ArtifactsError, match="bucket alone"):
        resolve_artifacts(pg, "s3://bucket/prefix")


def test_uploads_are_listed_by_optuna_and_fetched_without_the_database(sqlite_url, tmp_path):
    store = open_store(str(tmp_path / "files"))
    studies = [_study(sqlite_url, "a"), _study(sqlite_url, "b")]
    src = tmp_path / "best-sgd.yaml"
    src.write_text("format: hvadam-config/1\n")
    fixed = artifact_id("camp", "sgd", "best-sgd.yaml")
    assert upload(store, studies, src, fixed_id=fixed) == fixed
    src.write_text("format: hvadam-config/1\n# again\n")
    assert upload(store, studies[0], src, fixed_id=fixed) == fixed  # replaces, no duplicate
    for study in studies:
        metas = optuna.artifacts.get_all_artifact_meta(study)
        assert [(m.artifact_id, m.filename, m.mimetype) for m in metas] == [
            (fixed, "best-sgd.yaml", "text/yaml")
        ]
    got = fetch(open_store(str(tmp_path / "files")), fixed, tmp_path / "out" / "x.yaml")
    assert got.read_text() == "format: hvadam-config/1\n# again\n"
    with pytest.raises(ArtifactsError, match="not in the artifact store"):
        fetch(store, artifact_id("camp", "adam", "best-adam.yaml"), tmp_path / "y.yaml")


@pytest.mark.postgres
def test_checkpoints_on_postgresql_need_an_artifact_location(postgres_url, tmp_path, capsys):
    from studies.cli import main

    spec = {
        **BASE,
        "name": "pgck",
        "workload": {"name": "digits-mlp", "options": {"epochs": 1, "hidden": 8}},
        "artifacts": {"checkpoints": True},
    }
    path = tmp_path / "pgck.yaml"
    path.write_text(yaml.safe_dump(spec))
    assert main(["tune", str(path), "--storage", postgres_url, "--quiet"]) == 2
    err = capsys.readouterr().err
    assert "artifacts.checkpoints" in err and "--artifacts" in err and "different disks" in err
    assert "pg-secret" not in err


def test_the_notes_lock_is_one_writer_at_a_time_and_not_the_trial_lock(storage_url):
    from studies.live import NotesLock
    from studies.storage import CampaignLock

    first, second = NotesLock(storage_url, "c"), NotesLock(storage_url, "c")
    assert first.acquire(wait=False) is True
    assert second.acquire(wait=False) is False  # busy: a search run skips its refresh
    with CampaignLock(storage_url, "c"):  # trials are still handed out meanwhile
        pass
    assert NotesLock(storage_url, "other").acquire(wait=False) is True  # per campaign
    first.release()
    assert second.acquire(wait=False) is True
    second.release()
