"""Real headless Chromium for browser tests: Debian's ``chromium`` driven by Playwright (sync).

A missing browser or a missing Playwright fails the test (never skips it), naming what to
install. Screenshots go to ``tests/artifacts/`` (created on demand, ignored by git).
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Page

__all__ = ["ARTIFACTS", "CHROMIUM_ARGS", "chromium", "chromium_path", "screenshot"]

#: Where screenshots are saved.
ARTIFACTS = Path(__file__).resolve().parent / "artifacts"
#: Flags for a quiet, offline, headless Chromium in a container.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
_DEBIAN_CHROMIUM = "/usr/bin/chromium"


def chromium_path() -> str:
    """The Chromium executable, or fail the test saying how to install it."""
    found = shutil.which("chromium")
    if found is None and os.access(_DEBIAN_CHROMIUM, os.X_OK):
        found = _DEBIAN_CHROMIUM
    if found is None:
        pytest.fail(
            "browser tests need Debian's Chromium on PATH: apt-get install chromium",
            pytrace=False,
        )
    return found


@contextmanager
def chromium() -> Iterator[Browser]:
    """A headless Chromium launched through Playwright; closed afterwards."""
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(
            "browser tests need Playwright for Python: pip install playwright "
            "(the browser itself comes from apt-get install chromium)",
            pytrace=False,
        )
    executable = chromium_path()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            browser.close()


def screenshot(page: Page, name: str) -> Path:
    """Save a full-page screenshot as ``tests/artifacts/<name>.png``; return its path."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    safe = re.sub(r"[^A-Za-z0-9._-]", "_", name)
    path = ARTIFACTS / f"{safe}.png"
    page.screenshot(path=str(path), full_page=True)
    return path
