"""What the browser tests share: Debian's chromium (the system browser, no download), the rule
for a missing browser, and where screenshots go.

A missing chromium or Playwright skips the test, unless DRIP_TEST_REQUIRE contains "browser"
(CI), in which case it fails. Screenshots go to $DRIP_SCREENSHOT_DIR (CI: artifacts/screenshots)
or a folder under the test's tmp dir.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

CHROMIUM = "/usr/bin/chromium"
# A phone and a desktop: every page is looked at (and screenshot) at both.
WIDTHS = (375, 1280)


def browser_required() -> bool:
    """True when DRIP_TEST_REQUIRE asks for the browser tests (they fail instead of skipping)."""
    required = os.environ.get("DRIP_TEST_REQUIRE", "")
    return "browser" in {part.strip() for part in required.split(",")}


def chromium() -> str:
    """The path of Debian's chromium; skips (or fails, when required) the test if it is missing."""
    if Path(CHROMIUM).exists():
        return CHROMIUM
    reason = f"{CHROMIUM} is missing (apt-get install chromium; .ci/run installs it)"
    if browser_required():
        pytest.fail(f"{reason}, and DRIP_TEST_REQUIRE asks for the browser tests")
    pytest.skip(reason)


def launch_chromium() -> Iterator[Any]:
    """A headless Playwright browser on Debian's chromium, closed when the generator finishes.

    Meant to be yielded from a fixture: `yield from launch_chromium()`.
    """
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        if browser_required():
            raise
        pytest.skip("playwright is not installed (pip install -e '.[test]')")
    executable = chromium()
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(
            executable_path=executable, args=["--no-sandbox", "--disable-gpu"]
        )
        try:
            yield launched
        finally:
            launched.close()


def watch(page: Any) -> list[str]:
    """The list `page`'s problems go to from now on: console errors, requests that failed, and
    HTTP answers of 400 or more; a test asserts it is empty at the end."""
    problems: list[str] = []
    page.on(
        "console",
        lambda message: problems.append(message.text) if message.type == "error" else None,
    )
    page.on("requestfailed", lambda request: problems.append(f"failed: {request.url}"))
    page.on(
        "response",
        lambda response: (
            problems.append(f"{response.status} {response.url}") if response.status >= 400 else None
        ),
    )
    return problems


def screenshot_dir(tmp_path: Path) -> Path:
    """$DRIP_SCREENSHOT_DIR when set, else `tmp_path`/screenshots; created if missing."""
    target = Path(os.environ.get("DRIP_SCREENSHOT_DIR") or tmp_path / "screenshots")
    target.mkdir(parents=True, exist_ok=True)
    return target
