"""The README screenshot script: every picture is written, as a PNG of the browser's size."""

from __future__ import annotations

import struct

import pytest
from helpers import missing_component

from dashboards.browser import BrowserUnavailable
from dashboards.screenshots import SHOTS, take_screenshots
from dashboards.synthetic import write_synthetic_campaign


@pytest.mark.slow
def test_screenshots_are_written_for_report_and_dashboard(tmp_path):
    url = f"sqlite:///{tmp_path / 'hvadam.db'}"
    write_synthetic_campaign(
        url, name="shots", optimizers=("hvadam", "adam"), trials=3, seeds=2, epochs=3,
        workload="valley2d",
    )  # fmt: skip
    try:
        written = take_screenshots(url, "shots", tmp_path / "img")
    except BrowserUnavailable as exc:
        missing_component(str(exc))
    assert [p.name for p in written] == list(SHOTS)
    for path in written:
        head = path.read_bytes()[:24]
        assert head[:8] == b"\x89PNG\r\n\x1a\n"
        width, height = struct.unpack(">II", head[16:24])
        assert width > 300 and height > 200
    assert struct.unpack(">II", written[0].read_bytes()[16:24]) == (1280, 900)
