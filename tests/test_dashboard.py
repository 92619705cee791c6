"""`hvadam dashboard`: optuna-dashboard on a campaign storage, with study notes, in Chromium."""

from __future__ import annotations

import io
import os
import shutil
import urllib.request
from pathlib import Path

import pytest
from campaign_fixtures import CAMPAIGN as REAL
from campaign_fixtures import OPTIMIZERS as REAL_OPTIMIZERS
from campaign_fixtures import real_campaign_url
from conftest import missing_component

from dashboards.browser import BrowserUnavailable, chromium
from dashboards.notes import annotate_studies
from dashboards.server import start_dashboard
from dashboards.synthetic import write_synthetic_campaign

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
