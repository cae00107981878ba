"""`drip course send-test`: one marked test email through the configured transport, recorded
nowhere."""

from __future__ import annotations

from email import message_from_bytes, policy
from email.message import EmailMessage
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from tests.fakes.smtp_server import FakeSmtp
from tests.support import COURSE, COURSE_DIR, TEMPLATES

from drip.cli import main


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


def drip(*args: str, **env: str) -> Result:
    base = {"DRIP_COURSE_DIR": str(COURSE_DIR), "DRIP_TEMPLATES_DIR": str(TEMPLATES)}
    return CliRunner().invoke(main, list(args), env={**base, **env})


def only_email(outbox: Path) -> EmailMessage:
    [eml] = list(outbox.glob("*.eml"))
    message = message_from_bytes(eml.read_bytes(), policy=policy.default)
    assert isinstance(message, EmailMessage)
    return message


def test_a_lesson_by_number_goes_to_the_outbox_marked_and_recorded_nowhere(
    workdir: Path,
) -> None:
    result = drip("course", "send-test", "3", "--to", "Author@Example.com", "--name", "著者")
    assert result.exit_code == 0, result.output
    lesson = COURSE.lessons[2]
    message = only_email(workdir / "outbox")
    assert str(message["Subject"]).startswith("[テスト送信] ")
    assert str(message["Subject"]).endswith(lesson.subject)
    assert message["To"].addresses[0].addr_spec == "author@example.com"
    body = message.get_body(("plain",))
    assert body is not None and "著者" in body.get_content()
    assert result.output.startswith(f"sent {message['Subject']!r}")
    # Nothing was recorded: no database was even created.
    assert not (workdir / "drip.db").exists()


def test_the_confirmation_email_by_name(workdir: Path) -> None:
    result = drip("course", "send-test", "confirmation", "--to", "author@example.com")
    assert result.exit_code == 0, result.output
    message = only_email(workdir / "outbox")
    assert str(message["Subject"]).startswith("[テスト送信] ")
    html = message.get_body(("html",))
    assert html is not None and "/c/" in html.get_content()


def test_through_a_real_smtp_server(workdir: Path, smtp: FakeSmtp) -> None:
    result = drip(
        "course",
        "send-test",
        "welcome",
        "--to",
        "author@example.com",
        DRIP_TRANSPORT="smtp",
        DRIP_SMTP_URL=smtp.url(),
    )
    assert result.exit_code == 0, result.output
    [received] = smtp.messages
    assert received.rcpt_tos == ["author@example.com"]
    assert "[テスト送信]".encode() in received.data or b"=?utf-8?" in received.data.lower()
    assert "through smtp" in result.output


def test_a_refused_test_send_exits_1_with_the_reason(workdir: Path, smtp: FakeSmtp) -> None:
    smtp.add_script("rcpt:550")
    result = drip(
        "course",
        "send-test",
        "welcome",
        "--to",
        "author@example.com",
        DRIP_TRANSPORT="smtp",
        DRIP_SMTP_URL=smtp.url(),
    )
    assert result.exit_code == 1
    assert "not sent" in result.output and "550" in result.output


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["99", "--to", "a@example.com"], "no lesson '99'"),
        (["no-such-lesson", "--to", "a@example.com"], "choose one of 1 (welcome)"),
        (["welcome", "--to", "not an address"], "not a usable email address"),
        (["welcome", "--to", "a@example.com", "--name", "http://spam.example"], "name"),
        (["welcome"], "Missing option '--to'"),
    ],
)
def test_bad_input_exits_2_naming_it(workdir: Path, args: list[str], says: str) -> None:
    result = drip("course", "send-test", *args)
    assert result.exit_code == 2, result.output
    assert says in result.output
    assert not (workdir / "outbox").exists() or not list((workdir / "outbox").iterdir())
