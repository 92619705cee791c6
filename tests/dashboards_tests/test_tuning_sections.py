"""The report's "Tuning budget" and "Compute" sections and the notes' budget table, checked
against `studies.results` on synthetic campaigns written through the project's writers."""

from __future__ import annotations

import html
import re

import pytest
from helpers import missing_component

from dashboards.browser import BrowserUnavailable, chromium
from dashboards.figures import PNG_SIZE
from dashboards.report import SECTIONS, _fmt, write_report
from dashboards.synthetic import write_synthetic_campaign
from dashboards.tuning_sections import note_ks
from studies.results import budget_curve_frame, search_counts, time_to_target_frame
from studies.results import runs_frame as read_runs

TARGET = 0.6


@pytest.fixture(scope="module")
def campaign(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('tuning') / 'hvadam.db'}"
    write_synthetic_campaign(
        url, name="tuned", optimizers=("hvadam", "adam"), trials=12, seeds=2, epochs=4,
        target=TARGET,
    )  # fmt: skip
    write_synthetic_campaign(
        url, name="plain", optimizers=("adam", "sgd"), trials=3, seeds=0, epochs=2
    )
    return url


@pytest.fixture(scope="module")
def report(campaign: str, tmp_path_factory: pytest.TempPathFactory):
    return write_report(campaign, "tuned", tmp_path_factory.mktemp("report"))


def section(text: str, sid: str) -> str:
    match = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S)
    assert match, sid
    return match.group(1)


def cells(fragment: str) -> list[list[str]]:
    """The rows of the first table of an HTML fragment, as cell texts."""
    body = re.search(r"<tbody>(.*?)</tbody>", fragment, re.S)
    assert body
    return [
        [html.unescape(c) for c in re.findall(r"<td>(.*?)</td>", row)]
        for row in re.findall(r"<tr>(.*?)</tr>", body.group(1))
    ]


def test_sections_are_registered_and_draw_pngs(report):
    ids = [sid for sid, _ in SECTIONS]
    assert ids.index("tuning") == ids.index("comparison") + 1
    assert dict(SECTIONS)["tuning"] == "Tuning budget" and dict(SECTIONS)["compute"] == "Compute"
    assert "tuning" not in report.empty and "compute" not in report.empty
    for sid in ("tuning", "compute"):
        path = report.pngs[sid]
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        assert (int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")) == PNG_SIZE
        assert path.stat().st_size > 5000


def test_tuning_table_states_counts_and_the_curve_ends(campaign, report):
    text = section(report.html.read_text(), "tuning")
    assert "C(i-1, k-1) / C(n, k)" in text and "bootstrap" in text
    assert "pruned (or stopped) and failed trials" in text
    curves = budget_curve_frame(campaign, "tuned")
    counts = search_counts(read_runs(campaign, "tuned")).set_index("optimizer")
    rows = {r[0]: r for r in cells(text)}
    assert list(rows) == ["hvadam", "adam"]
    for opt, row in rows.items():
        mine = curves[curves["optimizer"] == opt]
        assert row[1:5] == ["12", "12", "0", "0"] == [str(counts.loc[opt, c]) for c in
                                                     ("n_search", "n_complete", "n_pruned",
                                                      "n_failed")]  # fmt: skip
        assert row[5:7] == ["0%", "0%"]
        assert row[7] == _fmt(float(mine["expected_best"].iloc[0]))
        assert row[8] == _fmt(float(mine["expected_best"].iloc[-1]))


def test_time_to_target_table_matches_the_results_frame(campaign, report):
    text = section(report.html.read_text(), "compute")
    assert "cumulative wall time of search trials" in text  # the figure's axis
    expected = time_to_target_frame(campaign, "tuned").set_index("optimizer")
    assert expected.loc["hvadam", "target"] == TARGET and expected["reached"].all()
    rows = {r[0]: r for r in cells(text)}
    for opt, row in rows.items():
        e = expected.loc[opt]
        assert row[1] == "yes"
        assert row[2] == _fmt(float(e["seconds"]))
        assert row[3] == str(e["trials"]) and row[4] == str(e["epoch"])
        assert row[5] == _fmt(float(e["total_seconds"])) and row[6] == "12"
    assert f"val_loss &lt;= {TARGET:g}" in text


def test_without_a_target_the_compute_section_says_why(campaign, tmp_path):
    report = write_report(campaign, "plain", tmp_path)
    text = section(report.html.read_text(), "compute")
    assert "No time-to-target: the campaign&#x27;s spec gives no target" in text
    assert "<tbody>" not in text
    assert "compute" in report.pngs  # best-so-far is drawn all the same


def test_notes_carry_the_budget_table(campaign):
    import optuna
    from optuna_dashboard import get_note

    from dashboards.notes import annotate_studies

    annotate_studies(campaign, "tuned")
    note = get_note(optuna.load_study(study_name="tuned/adam", storage=campaign))
    assert "## Tuning budget" in note and "| k | hvadam | adam |" in note
    curves = budget_curve_frame(campaign, "tuned")
    ks = [int(m) for m in re.findall(r"^\| (\d+) \|", note, re.M)]
    assert ks == [1, 2, 4, 8, 12]
    for k in ks:
        row = curves[(curves["optimizer"] == "hvadam") & (curves["k"] == k)].iloc[0]
        cell = f"{row['expected_best']:.4g} [{row['lower']:.4g}, {row['upper']:.4g}]"
        assert f"| {k} | {cell} |" in note


def test_note_ks_are_powers_of_two_then_n():
    assert note_ks(1) == [1]
    assert note_ks(2) == [1, 2]
    assert note_ks(8) == [1, 2, 4, 8]
    assert note_ks(30) == [1, 2, 4, 8, 16, 30]
    assert note_ks(0) == []


def test_the_tuning_figure_has_a_log_k_axis_in_chromium(report):
    try:
        with chromium() as browser:
            page = browser.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            page.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(report.html.as_uri())
            page.wait_for_selector("#tuning .plotly-graph-div .main-svg", timeout=30_000)
            axis = page.evaluate(
                "() => document.querySelector('#tuning .plotly-graph-div')._fullLayout.xaxis.type"
            )
            traces = page.evaluate(
                "() => document.querySelector('#compute .plotly-graph-div').data.length"
            )
            headings = page.locator("h2").all_inner_texts()
    except BrowserUnavailable as exc:
        missing_component(str(exc))
    assert problems == []
    assert axis == "log"
    assert traces == 2  # one best-so-far line per optimizer
    assert headings == [title for _, title in SECTIONS]


def test_without_a_complete_search_trial_both_sections_say_why(sqlite_url, tmp_path):
    from dashboards.data import from_frames
    from dashboards.tuning_sections import compute_section, tuning_section
    from studies.results import ResultsDB, curves_frame

    db = ResultsDB(sqlite_url)
    db.create_tables()
    db.register_campaign(
        name="bare", spec_hash="bare", spec={}, workload="digits-mlp", metric="val_loss",
        direction="minimize",
    )  # fmt: skip
    for status in ("failed", "pruned"):
        run_id = db.start_run(
            campaign="bare", study="bare/adam", optimizer="adam", trial_number=0,
            phase="search", seed=0, device="cpu", hyperparameters={},
        )  # fmt: skip
        db.finish_run(run_id, status=status, wall_time=2.0)
    data = from_frames("bare", read_runs(sqlite_url, "bare"), curves_frame(sqlite_url, "bare"))
    tuning = tuning_section(data, tmp_path)
    assert tuning.empty == "No complete search trial yet: no tuning-budget curve."
    assert tuning.png is None and tuning.figure is None
    assert cells(tuning.parts[0]) == [["adam", "2", "0", "1", "1", "50%", "50%", "–", "–"]]
    compute = compute_section(data, tmp_path)
    assert compute.empty and "nothing to plot against compute" in compute.empty
    assert compute.png is None
