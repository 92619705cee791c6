"""Headless Chromium for screenshots and page checks (the system's browser; never a download)."""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["CHROMIUM_ARGS", "BrowserUnavailable", "chromium", "find_chromium"]

CHROMIUM_ARGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
)


class BrowserUnavailable(RuntimeError):
    """Chromium or the playwright package is not installed."""


def find_chromium() -> str:
    """The Chromium executable: $HVADAM_CHROMIUM, else /usr/bin/chromium, else on PATH."""
    candidates = [os.environ.get("HVADAM_CHROMIUM"), "/usr/bin/chromium"]
    candidates += [shutil.which(n) for n in ("chromium", "chromium-browser")]
    for path in candidates:
        if path and os.path.isfile(path) and os.access(path, os.X_OK):
            return path
    raise BrowserUnavailable(
        "Chromium not found (install Debian's chromium package, or set HVADAM_CHROMIUM)"
    )


@contextmanager
def chromium() -> Iterator[Any]:
    """A playwright Browser on the system Chromium, closed on exit."""
    executable = find_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise BrowserUnavailable("the playwright package is not installed") from exc
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=executable, args=list(CHROMIUM_ARGS))
        try:
            yield browser
        finally:
            browser.close()
