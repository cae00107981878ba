"""The comparison-table lesson in a real browser (headless Debian chromium) at phone widths.

Asserts the page never scrolls sideways and the table fits its container; also writes PNG
screenshots (to $DRIP_SCREENSHOT_DIR when set, else the test's tmp dir) for a human to look at.
Skipped when chromium is missing unless DRIP_TEST_REQUIRE contains "browser".
"""

from __future__ import annotations

import html
import json
import re
import struct
import subprocess
from pathlib import Path
from typing import Any

import pytest
from tests.browser_support import chromium, screenshot_dir
from tests.support import COURSE, TEMPLATES

from drip.render import Recipient, Renderer

pytestmark = pytest.mark.browser

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
]
# Headless chromium will not make a window narrower than 500 px for --dump-dom (screenshots are
# fine), so the email is measured inside an iframe of the exact width: media queries follow the
# iframe's viewport. srcdoc gives the frame the parent's origin, so it can report back.
METRICS_SCRIPT = """<script>
window.addEventListener("load", function () {
  var root = document.documentElement;
  var wrap = document.querySelector(".table-wrap");
  var cell = document.querySelector(".lesson-table td");
  parent.document.getElementById("drip-metrics").textContent = JSON.stringify({
    scrollWidth: root.scrollWidth,
    bodyScrollWidth: document.body.scrollWidth,
    innerWidth: window.innerWidth,
    tableScrollWidth: wrap.scrollWidth,
    tableClientWidth: wrap.clientWidth,
    cellDisplay: getComputedStyle(cell).display
  });
});
</script>
"""
FRAME_PAGE = """<!DOCTYPE html>
<html><body style="margin:0">
<iframe style="border:0;width:{width}px;height:900px" srcdoc="{srcdoc}"></iframe>
<pre id="drip-metrics"></pre>
</body></html>
"""


@pytest.fixture(scope="module")
def lesson_html() -> str:
    course = COURSE
    recipient = Recipient(
        "yamada@example.com",
        "山田 太郎",
        "http://127.0.0.1:8000/u/PLACEHOLDER-TOKEN",
        "http://127.0.0.1:8000/m/PLACEHOLDER-TOKEN",
    )
    renderer = Renderer(course, TEMPLATES)
    return renderer.lesson(course.lesson("comparison"), recipient).html


def run_chromium(tmp_path: Path, page: Path, width: int, height: int, *args: str) -> str:
    profile = tmp_path / f"profile-{width}-{len(args)}"
    command = [
        chromium(),
        *FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size={width},{height}",
        *args,
        page.as_uri(),
    ]
    result = subprocess.run(command, capture_output=True, text=True, timeout=90, check=False)
    assert result.returncode == 0, result.stderr[-2000:]
    return result.stdout


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = struct.unpack(">II", data[16:24])
    return width, height


@pytest.mark.parametrize(("width", "stacked"), [(375, True), (600, True), (800, False)])
def test_comparison_table_fits_without_horizontal_scroll(
    tmp_path: Path, lesson_html: str, width: int, stacked: bool
) -> None:
    measured = lesson_html.replace("</body>", METRICS_SCRIPT + "</body>")
    page = tmp_path / "metrics.html"
    page.write_text(
        FRAME_PAGE.format(width=width, srcdoc=html.escape(measured, quote=True)), encoding="utf-8"
    )
    dom = run_chromium(
        tmp_path, page, width + 200, 1000, "--dump-dom", "--virtual-time-budget=2000"
    )
    match = re.search(r'<pre id="drip-metrics">(.+?)</pre>', dom, re.S)
    assert match, dom[-1000:]
    metrics: dict[str, Any] = json.loads(html.unescape(match.group(1)))
    assert metrics["innerWidth"] == width
    assert metrics["scrollWidth"] <= width, metrics
    assert metrics["bodyScrollWidth"] <= width, metrics
    # The table itself fits: nobody has to scroll it sideways to read a cell.
    assert metrics["tableScrollWidth"] <= metrics["tableClientWidth"], metrics
    assert (metrics["cellDisplay"] == "block") is stacked, metrics


def test_screenshots_at_phone_and_email_widths(tmp_path: Path, lesson_html: str) -> None:
    shots = screenshot_dir(tmp_path)
    page = tmp_path / "lesson.html"
    page.write_text(lesson_html, encoding="utf-8")
    for width in (375, 600):
        target = shots / f"07-comparison-{width}.png"
        run_chromium(tmp_path, page, width, 2400, f"--screenshot={target}")
        assert png_size(target) == (width, 2400)
