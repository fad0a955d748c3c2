"""The dashboard in a real browser: Debian's chromium, driven by Playwright (its own driver; no
browser is ever downloaded). Without chromium or Playwright these tests skip, unless
SHOAL_REQUIRE_SYSTEM_TESTS=1, where they fail."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.integration.cluster import Cluster
from tests.system import require

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
# A loaded machine (two cores shared with other work) can be slow to paint.
TIMEOUT_MS = 30_000


# One browser per test module, not per session: Playwright's sync API runs an event loop in
# this thread while it is open, and later tests that start their own with asyncio.run would
# find it running.
@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    require(Path(CHROMIUM).exists() or shutil.which("chromium") is not None,
            "chromium (Debian package chromium)")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        require(False, "playwright (pip install -e '.[test]')")
        raise
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS,
                                              headless=True)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def web_cluster(tmp_path: Path) -> Iterator[Cluster]:
    """A real server (plain HTTP on loopback, as a browser on the same host would use it)
    with two workers of two cores."""
    logs = tmp_path / "logs"
    logs.mkdir()
    instance = Cluster(tmp_path / "home", logs)
    try:
        instance.start_server("--insecure-http", "--retry-base", "0.2")
        instance.start_worker("w1", 2)
        instance.start_worker("w2", 2)
        yield instance
    finally:
        instance.stop()


@pytest.fixture
def screenshots(tmp_path: Path) -> Path:
    """Where a test keeps its screenshots for a person to look at."""
    folder = tmp_path / "screenshots"
    folder.mkdir()
    return folder
