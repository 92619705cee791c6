"""The report's "Controlled sweeps" section: per sweep, mean and 95% CI against the value."""

from __future__ import annotations

import re
import struct

import pytest
from campaign_fixtures import CAMPAIGN as REAL
from campaign_fixtures import real_campaign_url

from dashboards.data import load_campaign
from dashboards.figures import PNG_SIZE
from dashboards.report import SECTIONS, write_report
from dashboards.sweep_section import sweep_panels
from dashboards.synthetic import write_synthetic_campaign
from studies.results import runs_frame, summarize

VALUES = (0.0, 0.5, 1.0, 1.5)


@pytest.fixture(scope="module")
def swept(tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('swept') / 'hvadam.db'}"
    write_synthetic_campaign(
        url, name="swept", optimizers=("hvadam", "adam"), trials=6, seeds=3, epochs=3,
        with_curves=False, sweep_values=VALUES,
    )  # fmt: skip
    return url


def section(text: str, sid: str) -> str:
    found = re.search(rf'<section id="{sid}">(.*?)</section>', text, re.S)
    assert found, sid
    return found.group(1)


def test_the_section_tabulates_mean_and_interval_per_value_and_marks_the_best(swept, tmp_path):
    report = write_report(swept, "swept", tmp_path)
    assert "sweeps" not in report.empty
    assert ("sweeps", "Controlled sweeps") in SECTIONS
    png = report.pngs["sweeps"]
    head = png.read_bytes()[:24]
    assert head[:8] == b"\x89PNG\r\n\x1a\n" and struct.unpack(">II", head[16:24]) == PNG_SIZE
    text = section(report.html.read_text(), "sweeps")
    assert "95% confidence interval" in text and "Student" in text
    assert 'class="plotly-graph-div"' in text and "sweeps.png" in text
    # the numbers: each value's runs summarised by hand from the stored rows
    runs = runs_frame(swept, "swept")
    sweep = runs[runs["phase"] == "sweep"]
    assert len(sweep) == len(VALUES) * 3 and set(sweep["optimizer"]) == {"hvadam"}
    for v in VALUES:
        mine = sweep[sweep["hyperparameters"].map(lambda h, v=v: h["adaptivity"] == v)]
        s = summarize(str(v), mine["value"].astype(float).tolist())
        assert s.n == 3
        assert f"<td>{s.mean:.4g}</td>" in text
        assert f"<td>{s.ci_low:.4g}</td>" in text and f"<td>{s.ci_high:.4g}</td>" in text
    # the dashed line is at the best search trial's adaptivity
    [panel] = sweep_panels(load_campaign(swept, "swept"))
    search = runs[(runs["phase"] == "search") & (runs["optimizer"] == "hvadam")]
    best = search.loc[search["value"].astype(float).idxmin()]
    assert panel.best == best["hyperparameters"]["adaptivity"]
    assert [float(v) for v in panel.table["value"]] == list(VALUES)
    assert f"adaptivity = {panel.best:.4g}" in text
    # the scatter of search trials says what it is and points here
    scatter = section(report.html.read_text(), "adaptivity")
    assert "scatter of search trials, not a controlled sweep" in scatter
    assert "see Controlled sweeps" in scatter


def test_a_real_campaigns_sweep_is_drawn(tmp_path_factory, tmp_path):
    url = real_campaign_url(tmp_path_factory)
    report = write_report(url, REAL, tmp_path)
    assert "sweeps" in report.pngs and "sweeps" not in report.empty
    [panel] = sweep_panels(load_campaign(url, REAL))
    assert (panel.optimizer, panel.param) == ("hvadam", "adaptivity")
    assert list(panel.table["value"]) == [0.5, 1.0] and list(panel.table["n"]) == [2, 2]
