"""The reader's whole journey in a real browser: headless Debian chromium driven by Playwright
(the system browser, no download), against `drip serve` running as a real process.

Fill the form, read the confirmation email from the outbox, open the link, press confirm, see
lesson 1 arrive, open the manage page, pause, resume, unsubscribe. Screenshots at 375 px and
1280 px go to $DRIP_SCREENSHOT_DIR (CI: artifacts/screenshots) or the test's tmp dir.
Skipped when chromium or Playwright is missing unless DRIP_TEST_REQUIRE contains "browser".
"""

from __future__ import annotations

import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import UTC, datetime
from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path
from zoneinfo import ZoneInfo

import pytest
from sqlalchemy import create_engine, text
from tests.browser_support import WIDTHS, launch_chromium, screenshot_dir, watch
from tests.support import daytime_zone, drip_env
from tests.web_support import TEST_KEY, WEB_TEMPLATES

pytestmark = [pytest.mark.browser, pytest.mark.slow]


@pytest.fixture(scope="module")
def browser() -> Iterator[object]:
    yield from launch_chromium()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def server(tmp_path: Path) -> Iterator[str]:
    """`drip serve` on a free port, on the embedded defaults in `tmp_path` (SQLite, outbox)."""
    port = _free_port()
    base = f"http://127.0.0.1:{port}"
    env = drip_env(
        DRIP_WEB_TEMPLATES_DIR=str(WEB_TEMPLATES),
        DRIP_SECRET_KEY=TEST_KEY,
        DRIP_BASE_URL=base,
        PYTHONUNBUFFERED="1",
    )
    log = (tmp_path / "serve.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "drip", "serve", "--port", str(port), "--workers", "1"],
        cwd=tmp_path,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                with urllib.request.urlopen(f"{base}/healthz", timeout=2):
                    break
            except (urllib.error.URLError, ConnectionError):
                assert process.poll() is None, (tmp_path / "serve.log").read_text()
                assert time.monotonic() < deadline, "drip serve did not start in 30 s"
                time.sleep(0.2)
        yield base
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=30)
        log.close()


def _emails(outbox: Path) -> list[EmailMessage]:
    found = []
    for path in sorted(outbox.glob("*.eml"), key=lambda p: p.stat().st_mtime):
        message = message_from_bytes(path.read_bytes(), policy=policy.default)
        assert isinstance(message, EmailMessage)
        found.append(message)
    return found


def _wait_for_email(outbox: Path, count: int, timeout: float = 30) -> EmailMessage:
    """The `count`-th email to land in the outbox (the web app sends in the background)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if outbox.exists():
            emails = _emails(outbox)
            if len(emails) >= count:
                return emails[count - 1]
        time.sleep(0.2)
    raise AssertionError(f"no email number {count} in {outbox} after {timeout} s")


def _link(message: EmailMessage, kind: str) -> str:
    part = message.get_body(("plain",))
    assert part is not None
    match = re.search(rf"http://127\.0\.0\.1:\d+/{kind}/[A-Za-z0-9._-]+", part.get_content())
    assert match, f"no /{kind}/ link in: {part.get_content()[:500]}"
    return match.group(0)


def _shots(page: object, directory: Path, name: str) -> None:
    for width in WIDTHS:
        page.set_viewport_size({"width": width, "height": 900})  # type: ignore[attr-defined]
        page.screenshot(path=str(directory / f"{name}-{width}.png"), full_page=True)  # type: ignore[attr-defined]
        # Nothing may scroll sideways on a phone.
        scroll = page.evaluate("document.documentElement.scrollWidth")  # type: ignore[attr-defined]
        assert scroll <= width, f"{name} is {scroll} px wide at {width} px"
    page.set_viewport_size({"width": WIDTHS[0], "height": 900})  # type: ignore[attr-defined]


def test_a_reader_signs_up_confirms_gets_lesson_1_pauses_resumes_and_unsubscribes(
    browser: object, server: str, tmp_path: Path
) -> None:
    shots = screenshot_dir(tmp_path)
    outbox = tmp_path / "outbox"
    zone = daytime_zone()  # lesson 1 goes out at once only outside the quiet hours
    context = browser.new_context(  # type: ignore[attr-defined]
        timezone_id=zone, locale="ja-JP", viewport={"width": 375, "height": 900}
    )
    page = context.new_page()
    errors = watch(page)

    # The form: the timezone is pre-filled from the browser by the page's script.
    page.goto(server + "/")
    chosen = page.locator("#timezone").input_value()
    # Chromium may name a zone by its older alias (Asia/Calcutta for Asia/Kolkata).
    now = datetime.now(UTC)
    assert ZoneInfo(chosen).utcoffset(now) == ZoneInfo(zone).utcoffset(now), (chosen, zone)
    _shots(page, shots, "1-signup")
    page.fill("#email", "hanako@example.com")
    page.fill("#name", "花子")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    assert "メール" in page.inner_text("h1")
    _shots(page, shots, "2-check-inbox")

    # The confirmation email; its link shows a button and changes nothing until pressed.
    confirmation = _wait_for_email(outbox, 1)
    assert "花子" not in confirmation.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    page.goto(_link(confirmation, "c"))
    _shots(page, shots, "3-confirm")
    page.click("button[type=submit]")
    page.wait_for_load_state()
    _shots(page, shots, "4-confirmed")

    # Lesson 1 arrives right away (claimed like `drip send` does), addressed by name.
    lesson = _wait_for_email(outbox, 2)
    assert "花子" in lesson.get_body(("plain",)).get_content()  # type: ignore[union-attr]
    assert lesson["List-Unsubscribe-Post"] == "List-Unsubscribe=One-Click"

    # The manage page from the lesson: pause for two weeks, then resume.
    page.goto(_link(lesson, "m"))
    _shots(page, shots, "5-manage")
    page.check("input[name=weeks][value='2']")
    page.click("form[action$='/pause'] button[type=submit]")
    page.wait_for_load_state()
    _shots(page, shots, "6-paused")
    page.click("form[action$='/resume'] button[type=submit]")
    page.wait_for_load_state()

    # Unsubscribe from the lesson's link: a page with a button, then done.
    page.goto(_link(lesson, "u"))
    _shots(page, shots, "7-unsubscribe")
    page.click("button.danger")
    page.wait_for_load_state()
    _shots(page, shots, "8-unsubscribed")
    context.close()

    engine = create_engine(f"sqlite:///{tmp_path / 'drip.db'}")
    try:
        with engine.connect() as conn:
            status, paused_until = conn.execute(
                text("SELECT status, paused_until FROM subscribers WHERE email = :e"),
                {"e": "hanako@example.com"},
            ).one()
            lessons = conn.execute(text("SELECT lesson, status FROM deliveries")).all()
    finally:
        engine.dispose()
    assert status == "unsubscribed" and paused_until is None
    assert lessons == [("welcome", "sent")]
    assert errors == [], f"page problems: {errors}"
    assert len(_emails(outbox)) == 2  # nothing else was sent
