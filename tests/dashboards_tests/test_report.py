"""`hvadam report`: the HTML page and PNGs of a campaign, checked in headless Chromium."""

from __future__ import annotations

import math
import re
import struct
import threading
from pathlib import Path

import pytest
from campaign_fixtures import CAMPAIGN as REAL
from campaign_fixtures import real_campaign_url
from helpers import missing_component

from dashboards.browser import BrowserUnavailable, chromium
from dashboards.data import load_campaign
from dashboards.figures import PNG_SIZE
from dashboards.report import SECTIONS, write_report
from dashboards.synthetic import write_synthetic_campaign
from studies.results import summarize


def png_size(path: Path) -> tuple[int, int]:
    """Width and height from the PNG signature and IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    assert head[12:16] == b"IHDR"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def valley_campaign(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('valley') / 'hvadam.db'}"
    write_synthetic_campaign(
        url, name="valley", optimizers=("hvadam", "anon", "adam"), trials=8, seeds=3, epochs=5,
        workload="valley2d", sweep_values=(0.0, 0.5, 1.0, 1.5),
    )  # fmt: skip
    return url


@pytest.fixture(scope="module")
def valley_report(valley_campaign: str, tmp_path_factory: pytest.TempPathFactory):
    return write_report(valley_campaign, "valley", tmp_path_factory.mktemp("report"))


def test_report_writes_every_figure_as_png_of_the_stated_size(valley_report):
    assert set(valley_report.pngs) == {sid for sid, _ in SECTIONS}
    assert valley_report.empty == {}
    for path in valley_report.pngs.values():
        assert path.parent == valley_report.html.parent
        assert png_size(path) == PNG_SIZE
        assert path.stat().st_size > 5000  # drawn, not blank


def test_report_html_is_self_contained(valley_report):
    text = valley_report.html.read_text()
    # plotly.js inlined exactly once; nothing fetched from elsewhere
    assert text.count("plotly.js v") == 1
    assert re.search(r"<(script|link|img)[^>]+(src|href)=\"?https?:", text) is None
    assert len(text) > 3_000_000  # the library itself is in the page


def test_comparison_table_quotes_the_confirm_seeds(valley_campaign, valley_report):
    data = load_campaign(valley_campaign, "valley")
    text = valley_report.html.read_text()
    for opt, values in data.confirm_values().items():
        s = summarize(opt, values)
        assert s.n == 3
        assert f"{s.mean:.4g}" in text
        assert f"{s.ci_low:.4g}" in text and f"{s.ci_high:.4g}" in text
    assert "Welch" in text and "Mann-Whitney" in text
    # 3 vs 3 seeds: the rank test's floor is stated
    assert ">0.1<" in text


def test_report_loads_in_chromium_without_console_errors(valley_report, tmp_path):
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(valley_report.html.as_uri())
            page.wait_for_selector(".plotly-graph-div .main-svg", timeout=30_000)
            headings = page.locator("h2").all_inner_texts()
            plots = page.locator(".plotly-graph-div").count()
            page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
    except BrowserUnavailable as exc:
        missing_component(str(exc))
    assert problems == []
    assert headings == [title for _, title in SECTIONS]
    assert plots == len(SECTIONS)
    assert png_size(tmp_path / "report.png") == (1200, 900)


@pytest.fixture(scope="module")
def search_only_report(tmp_path_factory: pytest.TempPathFactory):
    """Baselines only, one trial each, no confirm phase, no curves."""
    url = f"sqlite:///{tmp_path_factory.mktemp('tiny') / 'hvadam.db'}"
    write_synthetic_campaign(
        url, name="tiny", optimizers=("adam", "sgd"), trials=1, seeds=0, with_curves=False
    )
    return write_report(url, "tiny", tmp_path_factory.mktemp("tiny-report"))


def test_sections_without_data_say_so_instead_of_drawing(search_only_report):
    empty = search_only_report.empty
    assert set(empty) == {
        "curves", "importances", "adaptivity", "sweeps", "trajectories", "internals"
    }  # fmt: skip
    assert "No controlled sweep ran" in empty["sweeps"]
    assert "no per-epoch curves" in empty["curves"].lower()
    assert "enough search trials" in empty["importances"]
    assert "varying adaptivity" in empty["adaptivity"]
    assert "valley2d" in empty["trajectories"]
    assert "internals" in empty["internals"]
    # one complete search trial each: a one-point budget curve and best-so-far still draw
    assert set(search_only_report.pngs) == {"comparison", "tuning", "compute"}
    text = search_only_report.html.read_text()
    assert "confirm phase has not run" in text
    assert "1 completed search trial(s); importances need at least 2" in text
    assert "neither HVAdam nor Anon" in text


def test_unknown_campaign_is_a_clear_error(valley_campaign, tmp_path):
    from dashboards.data import CampaignNotFound

    with pytest.raises(CampaignNotFound, match="'nope'"):
        write_report(valley_campaign, "nope", tmp_path)


def test_importances_sum_to_one_per_optimizer(valley_campaign):
    from dashboards.importance import campaign_importances

    result = campaign_importances(valley_campaign, "valley")
    assert set(result) == {"hvadam", "anon", "adam"}
    for imp, note in result.values():
        assert imp, note
        assert math.isclose(sum(imp.values()), 1.0, rel_tol=1e-6)
        assert "only 8 completed trials" in note
    # the adaptivity is scored for HVAdam; conditional parameters (gamma) are not
    assert "adaptivity" in result["hvadam"][0]
    assert "gamma" not in result["hvadam"][0]


def test_real_valley_campaign_report_has_every_section(tmp_path_factory, tmp_path):
    url = real_campaign_url(tmp_path_factory)
    report = write_report(url, REAL, tmp_path)
    assert report.empty == {}
    assert set(report.pngs) == {sid for sid, _ in SECTIONS}
    data = load_campaign(url, REAL)
    # HVAdam's internals come from its stored curves; the trajectories from the runs' extras
    curves = data.curves
    assert {"restarts", "hv_step"} <= set(curves[curves["optimizer"] == "hvadam"]["metric"])
    assert all(len(e["trajectory"]) >= 2 for e in data.runs["extras"])
    assert png_size(report.pngs["trajectories"]) == PNG_SIZE


def test_importances_in_a_second_process_equal_those_computed_here(valley_campaign):
    from dashboards.importance import ImportancesInBackground, campaign_importances

    threads = threading.active_count()
    background = ImportancesInBackground(valley_campaign, "valley")
    assert background.result() == campaign_importances(valley_campaign, "valley")
    assert threading.active_count() == threads  # its pool's thread is gone with the child
