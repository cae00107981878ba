"""drip.preview and `drip course preview`: the files for a sample subscriber."""

from __future__ import annotations

from datetime import UTC, datetime
from email.message import EmailMessage
from email.parser import BytesParser
from email.policy import default
from html.parser import HTMLParser
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.support import ROOT, TEMPLATES

from drip.cli import main
from drip.errors import UsageError
from drip.preview import PLACEHOLDER_TOKEN, write_preview

COURSE_DIR = ROOT / "course"
NOW = datetime(2026, 4, 1, 7, 30, tzinfo=UTC)
BASE = "https://drip.example.com"


class Links(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.hrefs: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            self.hrefs.append(dict(attrs).get("href") or "")


def test_writes_every_lesson_the_confirmation_and_an_index(tmp_path: Path) -> None:
    out = tmp_path / "preview"
    written = write_preview(COURSE_DIR, TEMPLATES, BASE, out, now=NOW)
    stems = [*sorted(p.stem for p in COURSE_DIR.joinpath("lessons").glob("*.md")), "confirmation"]
    expected = {out / f"{stem}{suffix}" for stem in stems for suffix in (".html", ".txt", ".eml")}
    assert set(written) == expected | {out / "index.html"}
    assert all(path.is_file() and path.stat().st_size > 0 for path in written)

    links = Links()
    links.feed((out / "index.html").read_text(encoding="utf-8"))
    assert sorted(links.hrefs) == sorted(path.name for path in expected)

    text = (out / "07-comparison.txt").read_text(encoding="utf-8")
    assert "山田 太郎さん、" in text and f"{BASE}/u/{PLACEHOLDER_TOKEN}" in text
    raw = (out / "07-comparison.eml").read_bytes()
    message = BytesParser(policy=default).parsebytes(raw)
    assert isinstance(message, EmailMessage)
    assert message["To"].addresses[0].addr_spec == "yamada@example.com"
    assert message["To"].addresses[0].display_name == "山田 太郎"
    assert message["Subject"] == "4つのアプローチを徹底比較"
    assert message["List-Unsubscribe"] == f"<{BASE}/u/{PLACEHOLDER_TOKEN}>"
    plain = message.get_body(("plain",))
    assert plain is not None and plain.get_content().replace("\r\n", "\n") == text
    confirmation = (out / "confirmation.txt").read_text(encoding="utf-8")
    assert f"{BASE}/c/{PLACEHOLDER_TOKEN}" in confirmation


@pytest.mark.parametrize("selector", ["7", "07", "comparison"])
def test_one_lesson_by_number_or_slug(tmp_path: Path, selector: str) -> None:
    written = write_preview(COURSE_DIR, TEMPLATES, BASE, tmp_path, now=NOW, lesson=selector)
    assert sorted(path.name for path in written) == [
        "07-comparison.eml",
        "07-comparison.html",
        "07-comparison.txt",
        "confirmation.eml",
        "confirmation.html",
        "confirmation.txt",
        "index.html",
    ]


def test_unknown_lesson_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match=r"no lesson '99'.*7 \(comparison\)"):
        write_preview(COURSE_DIR, TEMPLATES, BASE, tmp_path, now=NOW, lesson="99")


def test_cli_writes_the_preview(tmp_path: Path) -> None:
    env = {
        "DRIP_COURSE_DIR": str(COURSE_DIR),
        "DRIP_TEMPLATES_DIR": str(TEMPLATES),
        "DRIP_BASE_URL": BASE,
        "DRIP_TRANSPORT": "outbox",
    }
    out = tmp_path / "out"
    result = CliRunner().invoke(
        main, ["course", "preview", "comparison", "--out", str(out)], env=env
    )
    assert result.exit_code == 0, result.output
    assert f"wrote {out / '07-comparison.eml'}" in result.output
    assert (out / "index.html").is_file()
    failed = CliRunner().invoke(main, ["course", "preview", "nope", "--out", str(out)], env=env)
    assert failed.exit_code == 2
    assert "no lesson 'nope'" in failed.output


@pytest.mark.parametrize("where", ["file/sub", "/proc/drip-preview", "/dev/null/out"])
def test_an_output_directory_that_cannot_be_written_is_a_usage_error(
    tmp_path: Path, where: str
) -> None:
    """`--out FILE/sub` and `--out /proc/x` ended in tracebacks (#24)."""
    (tmp_path / "file").write_text("not a directory", encoding="utf-8")
    out = Path(where) if where.startswith("/") else tmp_path / where
    env = {"DRIP_COURSE_DIR": str(COURSE_DIR), "DRIP_TEMPLATES_DIR": str(TEMPLATES)}
    result = CliRunner().invoke(main, ["course", "preview", "--out", str(out)], env=env)
    assert result.exit_code == 2, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert f"error: {out}: cannot write the preview there" in result.output
    assert "--out" in result.output
