"""`hvadam dashboard`: optuna-dashboard on a campaign storage, with study notes, in Chromium."""

from __future__ import annotations

import io
import os
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from campaign_fixtures import CAMPAIGN as REAL
from campaign_fixtures import OPTIMIZERS as REAL_OPTIMIZERS
from campaign_fixtures import real_campaign_url
from helpers import missing_component

from dashboards.browser import BrowserUnavailable, chromium
from dashboards.notes import annotate_studies
from dashboards.server import start_dashboard
from dashboards.synthetic import write_synthetic_campaign

ROOT = Path(__file__).resolve().parents[2]
CAMPAIGN = "dash"
OPTIMIZERS = ("hvadam", "anon", "adam")


@pytest.fixture(scope="module")
def campaign_url(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('dash') / 'hvadam.db'}"
    write_synthetic_campaign(url, name=CAMPAIGN, optimizers=OPTIMIZERS, trials=4, seeds=3, epochs=3)
    return url


def _keep(path: Path, name: str) -> None:
    """Copy a screenshot into $HVADAM_TEST_SCREENSHOTS/ when set (CI keeps that folder).

    (Not $HVADAM_ARTIFACTS: that names the campaigns' artifact store.)
    """
    out = os.environ.get("HVADAM_TEST_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(path, Path(out) / name)


def test_notes_carry_spec_and_comparison(campaign_url):
    import optuna
    from optuna_dashboard import get_note

    names = annotate_studies(campaign_url, CAMPAIGN)
    assert names == [f"{CAMPAIGN}/{o}" for o in OPTIMIZERS]
    study = optuna.load_study(study_name=f"{CAMPAIGN}/adam", storage=campaign_url)
    note = get_note(study)
    assert note.startswith(f"# Campaign `{CAMPAIGN}`: adam")
    assert "## Spec" in note and "sampler: random" in note
    assert "| optimizer | confirm seeds |" in note
    for opt in OPTIMIZERS:
        assert f"| {opt} | 3 |" in note
    assert "| hvadam | adam |" in note and "| anon | adam |" in note
    assert "Campaign **finished**. Note written 20" in note
    assert "| optimizer | search | confirm | pruned | failed | running |" in note
    # a second call rewrites the note rather than appending to it (only its date changes)
    annotate_studies(campaign_url, CAMPAIGN)

    def undated(text: str) -> str:
        return "\n".join(line for line in text.splitlines() if "Note written" not in line)

    assert undated(get_note(study)) == undated(note)


def test_server_binds_localhost_by_default_and_warns_otherwise(campaign_url):
    warn = io.StringIO()
    with start_dashboard(campaign_url, warn_to=warn) as server:
        assert server.host == "127.0.0.1"
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/api/studies") as r:
            body = r.read().decode()
        assert f"{CAMPAIGN}/hvadam" in body
    assert warn.getvalue() == ""
    warn = io.StringIO()
    with start_dashboard(campaign_url, host="0.0.0.0", warn_to=warn):
        pass
    assert "warning" in warn.getvalue() and "0.0.0.0" in warn.getvalue()


def test_bad_port_is_a_clear_error(campaign_url):
    with pytest.raises(ValueError, match="port"):
        start_dashboard(campaign_url, port=70000)


def test_dashboard_shows_a_real_campaigns_studies_and_note_in_chromium(
    tmp_path_factory: pytest.TempPathFactory, tmp_path: Path
):
    url = real_campaign_url(tmp_path_factory)
    annotate_studies(url, REAL)
    shot = tmp_path / "dashboard.png"
    study_shot = tmp_path / "dashboard-study-note.png"
    try:
        with start_dashboard(url) as server, chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            problems: list[str] = []
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(server.url)
            for opt in REAL_OPTIMIZERS:
                page.get_by_text(f"{REAL}/{opt}", exact=False).first.wait_for(timeout=30_000)
            listing = page.inner_text("body")
            page.screenshot(path=str(shot))
            page.get_by_text(f"{REAL}/hvadam").first.click()
            page.wait_for_url("**/dashboard/studies/*")
            page.goto(page.url + "/note")
            page.get_by_text(f"Campaign {REAL}: hvadam").first.wait_for(timeout=30_000)
            study_page = page.inner_text("body")
            page.screenshot(path=str(study_shot))
    except BrowserUnavailable as exc:
        missing_component(str(exc))
    assert problems == []
    for opt in REAL_OPTIMIZERS:
        assert f"{REAL}/{opt}" in listing
    assert "Comparison" in study_page and "Spec" in study_page
    assert "valley2d" in study_page
    assert "hvadam\tadam" in study_page  # the tests table, rendered from the note's Markdown
    for path in (shot, study_shot):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        _keep(path, path.name)


def test_tune_writes_the_study_notes_through_the_dashboards_hook(tmp_path):
    """`hvadam tune` (studies) finds the dashboards' notes hook by entry point, not by import."""
    import optuna
    import yaml
    from optuna_dashboard import get_note

    from studies.cli import main

    spec = {
        "name": "noted",
        "workload": {"name": "valley2d", "options": {"steps": 10, "report_every": 5}},
        "optimizers": ["sgd"],
        "budget": {"trials": 1},
        "sampler": "random",
        "pruner": "none",
        "confirm": {"seeds": 1},
        "device": "cpu",
    }
    path = tmp_path / "noted.yaml"
    path.write_text(yaml.safe_dump(spec))
    url = f"sqlite:///{tmp_path / 'noted.db'}"
    assert main(["tune", str(path), "--storage", url, "--quiet"]) == 0
    study = optuna.load_study(study_name="noted/sgd", storage=url)
    note = get_note(study)
    assert "sgd" in note and "noted" in note


def _study_id(url: str, name: str) -> int:
    import optuna

    storage = optuna.storages.get_storage(url)
    return storage.get_study_id_from_name(name)


def _tune_process(spec: dict, url: str, tmp_path: Path, *extra: str) -> subprocess.Popen:
    import yaml

    path = tmp_path / f"{spec['name']}.yaml"
    path.write_text(yaml.safe_dump(spec))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT), env.get("PYTHONPATH", "")) if p
    )  # the worktree's code first, and whatever else the tests run with
    env["HVADAM_COMPILE"] = "0"
    return subprocess.Popen(
        [sys.executable, "-m", "studies.cli", "tune", str(path), "--storage", url,
         "--quiet", "--threads", "1", *extra],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


def test_a_running_campaigns_study_page_shows_the_metric_name_and_the_live_note(tmp_path):
    """While `hvadam tune` runs, the workers' live note and the metric name are in the page."""
    import optuna
    from optuna_dashboard import get_note

    from studies.live import PROGRESS_GROUP, load_hooks

    if not load_hooks():
        pytest.fail(
            f"no {PROGRESS_GROUP} entry point: the installed package metadata predates it "
            f"(reinstall: make venv)",
            pytrace=False,
        )
    spec = {
        "name": "livecamp",
        "workload": {"name": "valley2d", "options": {"steps": 400, "report_every": 100}},
        "optimizers": ["sgd"],
        "budget": {"trials": 400},  # far more than the test waits for: it is stopped
        "sampler": "random",
        "pruner": "none",
        "confirm": {"seeds": 1},
        "device": "cpu",
        "notes_interval": 0,
    }
    url = f"sqlite:///{tmp_path / 'live.db'}"
    proc = _tune_process(spec, url, tmp_path)
    try:
        note = ""
        deadline = time.monotonic() + 180
        while "**running**" not in note:
            assert proc.poll() is None, proc.communicate()[1]
            assert time.monotonic() < deadline, "no live note within 180 s"
            time.sleep(0.5)
            try:
                note = get_note(optuna.load_study(study_name="livecamp/sgd", storage=url))
            except KeyError:  # the study is not created yet
                continue
        sid = _study_id(url, "livecamp/sgd")
        try:
            with start_dashboard(url) as server, chromium() as browser:
                page = browser.new_page(viewport={"width": 1280, "height": 800})
                page.goto(f"{server.url}/studies/{sid}")
                page.get_by_text("function_value").first.wait_for(timeout=30_000)
                history = page.inner_text("body")
                page.goto(f"{server.url}/studies/{sid}/note")
                page.get_by_text("Progress").first.wait_for(timeout=30_000)
                shown = page.inner_text("body")
                still_running = proc.poll() is None
        except BrowserUnavailable as exc:
            missing_component(str(exc))
    finally:
        proc.terminate()  # SIGTERM: the campaign stays resumable
        proc.wait(timeout=60)
    assert still_running, "the campaign finished before the page was read"
    assert "function_value" in history and "Objective 0" not in history
    assert "Campaign running: this note is refreshed while the campaign runs." in shown
    assert "Note written 20" in shown
    progress = next(line for line in shown.splitlines() if line.startswith("sgd\t"))
    done = int(progress.split("\t")[1].split("/")[0])
    assert 1 <= done < 400 and progress.split("\t")[1].endswith("/400")


def test_an_artifact_downloaded_from_the_dashboard_loads_as_an_optimizer(tmp_path):
    """best-<optimizer>.yaml and a checkpoint, served by `hvadam dashboard`'s HTTP API."""
    import torch
    import yaml

    import hvadam
    from studies.artifacts import checkpoint_filename

    spec = {
        "name": "arts",
        "workload": {"name": "digits-mlp", "options": {"epochs": 2, "hidden": 16}},
        "optimizers": ["adam"],
        "budget": {"trials": 2},
        "sampler": "random",
        "pruner": "none",
        "confirm": {"seeds": 1},
        "seed": 1,
        "device": "cpu",
        "artifacts": {"checkpoints": True},
    }
    url = f"sqlite:///{tmp_path / 'arts.db'}"
    store = tmp_path / "store"
    proc = _tune_process(spec, url, tmp_path, "--artifacts", str(store))
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    sid = _study_id(url, "arts/adam")
    try:
        with start_dashboard(url, artifacts=str(store)) as server, chromium() as browser:
            page = browser.new_page(viewport={"width": 1280, "height": 800})
            page.goto(f"{server.url}/studies/{sid}")  # the study page lists its artifacts
            page.get_by_text("best-adam.yaml").first.wait_for(timeout=30_000)
            body = page.inner_text("body")
            listing = body[body.index("Study Artifacts") :]
            base = f"http://127.0.0.1:{server.port}"
            metas = page.request.get(f"{base}/api/studies/{sid}?after=0").json()["artifacts"]
            files = {}
            for meta in metas:
                got = page.request.get(f"{base}/artifacts/{sid}/{meta['artifact_id']}")
                assert got.ok, meta
                files[meta["filename"]] = got.body()
    except BrowserUnavailable as exc:
        missing_component(str(exc))
    checkpoint = next(name for name in files if name.startswith("checkpoint-"))
    seed = int(checkpoint.removeprefix("checkpoint-adam-seed").removesuffix(".pt"))
    assert set(files) == {"best-adam.yaml", checkpoint_filename("adam", seed)}
    assert "best-adam.yaml" in listing and checkpoint in listing
    config = tmp_path / "best-adam.yaml"
    config.write_bytes(files["best-adam.yaml"])
    doc = yaml.safe_load(config.read_text())
    assert doc["provenance"]["phase"] == "confirm" and doc["metric"]["name"] == "val_accuracy"
    # the checkpoint continues training: its model and optimizer state load back
    (tmp_path / "ckpt.pt").write_bytes(files[checkpoint])
    saved = torch.load(tmp_path / "ckpt.pt", weights_only=False)
    assert saved["optimizer"] == "adam" and saved["seed"] == seed
    params = [torch.nn.Parameter(t.clone()) for t in saved["model"].values()]
    opt = hvadam.load_optimizer(params, config)
    assert isinstance(opt, torch.optim.Adam)
    assert opt.defaults["lr"] == pytest.approx(doc["hyperparameters"]["lr"])
    opt.load_state_dict(saved["optimizer_state"])
    assert int(opt.state[params[0]]["step"]) > 0  # the state of a trained run
