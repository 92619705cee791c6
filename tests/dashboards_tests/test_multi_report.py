"""`hvadam report A B C -o DIR`: several campaigns on one page, checked in headless Chromium."""

from __future__ import annotations

import re

import pytest
from across_fixtures import RATIOS, RHO, write_three
from helpers import missing_component
from test_report import png_size

from dashboards.browser import BrowserUnavailable, chromium
from dashboards.figures import PNG_SIZE
from dashboards.multi_report import MULTI_SECTIONS, write_multi_report
from dashboards.report import SECTIONS
from dashboards.synthetic import write_synthetic_campaign
from studies.cli import main
from studies.results import UnknownCampaign, compare_frame


@pytest.fixture(scope="module")
def three(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('multi') / 'hvadam.db'}"
    write_three(url)
    return url


@pytest.fixture(scope="module")
def page(three: str, tmp_path_factory: pytest.TempPathFactory):
    return write_multi_report(three, ["A", "B", "C"], tmp_path_factory.mktemp("multi-report"))


def test_page_is_self_contained_with_every_figure_as_png(page):
    assert set(page.pngs) == {"wins", "profiles"} and page.empty == {}
    for path in page.pngs.values():
        assert path.parent == page.html.parent
        assert png_size(path) == PNG_SIZE and path.stat().st_size > 5000
    text = page.html.read_text()
    assert text.count("plotly.js v") == 1
    assert re.search(r"<(script|link|img)[^>]+(src|href)=\"?https?:", text) is None


def test_rank_table_marks_ranks_significance_and_the_search_fallback(page):
    text = page.html.read_text()
    table = text[text.index('<table class="ranks">') :]
    table = table[: table.index("</table>")]
    rows = {
        re.search(r"<td>(\w+)</td>", row).group(1): re.findall(r"<td>(.*?)</td>", row)[1:]
        for row in table.split("<tr>")[2:]
    }
    assert rows["hvadam"] == ["1 ± 0.25 <b>#1</b>", "0.5 ± 0.25 <b>#2</b> ns", "200 <b>#1</b>*"]
    assert rows["adam"][0] == "2 ± 0.25 <b>#3</b>"  # significantly worse than hvadam: no mark
    assert rows["sgd"] == ["1.5 ± 0.25 <b>#2</b> ns", "absent", "50 <b>#3</b>*"]
    assert "cost = 1 - value" in text and "cost = 1 / value" in text


def test_profile_figure_plots_the_hand_computed_steps(page):
    """The page's step data, read back from its plotly JSON, gives the rho of the fixtures."""
    import json

    text = page.html.read_text()
    start = text.index("Performance profiles over 3")
    traces = {}
    for m in re.finditer(r'\{"line":\{"color":"#\w+","shape":"hv"\},"mode":"lines","name":"(\w+)",'
                         r'"x":(\[[^\]]*\]),"y":(\[[^\]]*\])', text[: start + 100_000]):  # fmt: skip
        traces[m.group(1)] = (json.loads(m.group(2)), json.loads(m.group(3)))
    assert set(traces) == set(RATIOS)
    for opt, (xs, ys) in traces.items():
        for tau, expected in RHO.items():
            rho = max((y for x, y in zip(xs, ys, strict=True) if x <= tau), default=0.0)
            assert rho == pytest.approx(expected[opt]), (opt, tau)


def test_win_tie_loss_section(page):
    text = page.html.read_text()
    section = text[text.index('id="wins"') : text.index('id="profiles"')]
    # hvadam vs adam: A win (Welch p Holm-corrected < 0.05), B tie (overlapping seeds),
    # C tie (one search value each); vs sgd: A tie (not significant), C tie
    cells = re.findall(r"<td>(.*?)</td>", section[: section.index("</table>")])
    assert cells[:6] == ["hvadam", "adam", "1", "2", "0", "3"]
    assert cells[6:12] == ["hvadam", "sgd", "0", "2", "0", "2"]


def test_multi_report_loads_in_chromium_offline_without_errors(page, tmp_path):
    try:
        with chromium() as browser:
            page_ = browser.new_page(viewport={"width": 1200, "height": 900})
            problems: list[str] = []
            requests: list[str] = []
            page_.on("console", lambda m: problems.append(m.text) if m.type == "error" else None)
            page_.on("pageerror", lambda e: problems.append(str(e)))
            page_.on("request", lambda r: requests.append(r.url))
            page_.goto(page.html.as_uri())
            page_.wait_for_selector(".plotly-graph-div .main-svg", timeout=30_000)
            headings = page_.locator("h2").all_inner_texts()
            drawn = page_.evaluate(
                "() => [...document.querySelectorAll('.plotly-graph-div')].map("
                "d => [d.data.length, d.querySelectorAll('.main-svg .trace').length])"
            )
            page_.screenshot(path=str(tmp_path / "multi.png"), full_page=False)
    except BrowserUnavailable as exc:
        missing_component(str(exc))
    assert problems == []
    assert [u for u in requests if not u.startswith(("file:", "data:", "blob:"))] == []
    assert headings == [title for _, title in MULTI_SECTIONS]
    # two plots (win/tie/loss: 3 bar traces; profiles: one curve per optimizer), each drawn
    assert [n for n, _ in drawn] == [3, 3] and all(svg >= n for n, svg in drawn)
    assert png_size(tmp_path / "multi.png") == (1200, 900)


def test_cli_writes_one_page_for_several_campaigns_and_today_s_page_for_one(tmp_path, capsys):
    url = f"sqlite:///{tmp_path / 'hvadam.db'}"
    for i, name in enumerate(("digits", "other")):
        write_synthetic_campaign(url, name=name, optimizers=("hvadam", "adam"), trials=3, seeds=2,
                                 epochs=2, seed=i)  # fmt: skip
    assert main(["report", "digits", "other", "--storage", url, "-o", str(tmp_path / "m")]) == 0
    assert "2 PNG figures" in capsys.readouterr().out
    text = (tmp_path / "m" / "report.html").read_text()
    for name in ("digits", "other"):
        means = compare_frame(url, name).set_index("optimizer")["confirm_mean"]
        assert f"{means['hvadam']:.4g}" in text and f"{means['adam']:.4g}" in text
    assert main(["report", "digits", "--storage", url, "-o", str(tmp_path / "one")]) == 0
    single = (tmp_path / "one" / "report.html").read_text()
    assert all(f">{title}</h2>" in single for _, title in SECTIONS)
    assert "Performance profiles" not in single


def test_unknown_campaign_is_named(three, tmp_path, capsys):
    with pytest.raises(UnknownCampaign, match="'nope'"):
        write_multi_report(three, ["A", "nope"], tmp_path)
    assert main(["report", "A", "nope", "--storage", three, "-o", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "no campaign 'nope'" in err and "Traceback" not in err
