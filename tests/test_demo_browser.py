"""`drip demo`'s pages in a real browser: headless Debian chromium driven by Playwright (the
system browser, no download), opening the gallery and the stats page from the demo folder.

Every link of the gallery is followed (nothing fails to load), each reader's table lists that
reader's emails, an email's HTML part shows the lesson, and the pages fit a 375 px phone.
Screenshots go to $DRIP_SCREENSHOT_DIR (CI: artifacts/screenshots) or the test's tmp dir.
Skipped when chromium or Playwright is missing unless DRIP_TEST_REQUIRE contains "browser".
"""

from __future__ import annotations

import email
import email.policy
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner
from tests.browser_support import WIDTHS, launch_chromium, screenshot_dir, watch
from tests.support import COURSE, COURSE_DIR, TEMPLATES
from tests.web_support import WEB_TEMPLATES

from drip import demo
from drip.cli import main

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    yield from launch_chromium()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    made = tmp_path_factory.mktemp("demo") / "run"
    env = {
        "DRIP_COURSE_DIR": str(COURSE_DIR),
        "DRIP_TEMPLATES_DIR": str(TEMPLATES),
        "DRIP_WEB_TEMPLATES_DIR": str(WEB_TEMPLATES),
    }
    result = CliRunner().invoke(
        main, ["demo", str(made), "--now", "2026-04-01T09:00+09:00"], env=env
    )
    assert result.exit_code == 0, result.output
    return made


def _to(eml: Path) -> str:
    message = email.message_from_bytes(eml.read_bytes(), policy=email.policy.default)
    return str(message["To"].addresses[0].addr_spec)


def _open(browser: Any, width: int) -> tuple[Any, list[str]]:
    """A page `width` px wide and the list its failed loads and console errors go to."""
    page = browser.new_page(viewport={"width": width, "height": 900})
    return page, watch(page)


@pytest.mark.parametrize("width", WIDTHS)
def test_the_gallery_lists_every_email_by_reader_and_every_link_opens(
    browser: Any, folder: Path, tmp_path: Path, width: int
) -> None:
    page, problems = _open(browser, width)
    page.goto((folder / "index.html").as_uri())
    shot = screenshot_dir(tmp_path) / f"demo-gallery-{width}.png"
    page.screenshot(path=str(shot), full_page=True)
    emls = sorted(folder.glob("outbox/*.eml"))
    links = page.locator("a").evaluate_all("links => links.map(link => link.href)")
    assert sorted(link for link in links if link.endswith(".eml")) == [eml.as_uri() for eml in emls]
    for reader in demo.READERS:
        rows = page.locator(f'h2[id="{reader.email}"] + table tr:has(a[href$=".eml"])')
        sent_to = [eml for eml in emls if _to(eml) == reader.email]
        assert rows.count() == len(sent_to) > 0
    # The page fits the screen: no sideways scrolling on a phone.
    assert page.evaluate("document.documentElement.scrollWidth") <= width
    viewer = browser.new_page()
    for link in links:
        if link.endswith(".html"):  # a missing file fails the navigation (ERR_FILE_NOT_FOUND)
            viewer.goto(link)
            assert viewer.locator("body").inner_text().strip(), link
    viewer.close()
    assert problems == []
    page.close()


def test_an_emails_html_part_shows_the_lesson(browser: Any, folder: Path, tmp_path: Path) -> None:
    page, problems = _open(browser, 375)
    page.goto((folder / "index.html").as_uri())
    reader = next(reader for reader in demo.READERS if reader.email == "yamada@example.com")
    table = page.locator(f'h2[id="{reader.email}"] + table')
    table.get_by_role("link", name=COURSE.lessons[1].subject).click()
    page.wait_for_load_state()
    body = page.locator("body").inner_text()
    assert f"{reader.name}さん" in body
    assert "第2回" in body
    assert "配信停止" in body  # the visible unsubscribe link
    page.screenshot(path=str(screenshot_dir(tmp_path) / "demo-email-375.png"))
    assert problems == []
    page.close()


@pytest.mark.parametrize("width", WIDTHS)
def test_the_stats_page_shows_the_funnel(
    browser: Any, folder: Path, tmp_path: Path, width: int
) -> None:
    page, problems = _open(browser, width)
    page.goto((folder / "index.html").as_uri())
    page.get_by_role("link", name="stats.html").click()
    page.wait_for_load_state()
    assert page.url == (folder / "stats.html").as_uri()
    assert page.locator("svg").count() >= 1
    assert COURSE.settings.title in page.locator("h1").inner_text()
    assert "6 signups, 6 confirmed" in page.locator("body").inner_text()
    page.screenshot(path=str(screenshot_dir(tmp_path) / f"demo-stats-{width}.png"), full_page=True)
    assert problems == []
    page.close()
