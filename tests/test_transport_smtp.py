"""The SMTP transport against a loopback aiosmtpd server, scripted per transaction."""

from __future__ import annotations

import json
import logging
import ssl
from dataclasses import replace
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime
from pathlib import Path

import pytest
from tests.fakes.smtp_server import FakeSmtp
from tests.support import make_mailer
from tests.transport_support import (
    NOW,
    SMTP_PASSWORD,
    expected,
    free_port,
    make_email,
    seen_in_mime,
    smtp_transport,
    start_process,
    stop_process,
)

from drip.errors import ConfigError
from drip.transports import FatalTransportError, Outcome
from drip.transports.base import SendResult
from drip.transports.smtp import SmtpTransport, _reply_text, _Retry, _wire_data, parse_smtp_url

pytestmark = pytest.mark.filterwarnings(
    # aiosmtpd 1.4 itself sets the deprecated Session.login_data after every successful AUTH.
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)


def test_smtp_message_as_received(smtp: FakeSmtp) -> None:
    with smtp_transport(smtp.url()) as transport:
        [result] = transport.send([make_email(1)])
    [message] = smtp.messages
    seen = seen_in_mime(message.data)
    assert seen == expected(make_email(1))
    assert result.provider_id == seen.extra["Message-ID"]
    assert seen.extra["Message-ID"].endswith("@drip.test>")
    assert parsedate_to_datetime(seen.extra["Date"]) == NOW
    assert message.mail_from == "course@example.org"
    assert message.rcpt_tos == ["reader1@example.com"]


def test_smtp_reuses_one_connection_across_calls(smtp: FakeSmtp) -> None:
    smtp.add_script("250", "450", "550", "rcpt:550", "mail:451")
    with smtp_transport(smtp.url()) as transport:
        first = transport.send([make_email(n) for n in (1, 2, 3)])
        second = transport.send([make_email(n) for n in (4, 5, 6)])
    outcomes = [r.outcome for r in first + second]
    assert outcomes == [
        Outcome.SENT,
        Outcome.RETRY,
        Outcome.FAILED,
        Outcome.FAILED,
        Outcome.RETRY,
        Outcome.SENT,
    ]
    assert second[0].detail.startswith("RCPT TO: 550")
    assert len(smtp.peers) == 1  # refusals reset the transaction, not the connection


def test_smtp_421_stops_the_batch_then_reconnects(smtp: FakeSmtp) -> None:
    smtp.add_script("421")
    with smtp_transport(smtp.url()) as transport:
        first = transport.send([make_email(1), make_email(2)])
        second = transport.send([make_email(3)])
    assert [r.outcome for r in first] == [Outcome.RETRY, Outcome.RETRY]
    assert first[1].detail.startswith("not attempted")
    assert [r.outcome for r in second] == [Outcome.SENT]
    assert len(smtp.peers) == 2


def test_smtp_drop_after_final_dot_is_in_doubt(smtp: FakeSmtp) -> None:
    smtp.add_script("drop")
    with smtp_transport(smtp.url()) as transport:
        first = transport.send([make_email(1), make_email(2)])
        second = transport.send([make_email(3)])
    assert [r.outcome for r in first] == [Outcome.IN_DOUBT, Outcome.RETRY]
    assert [r.outcome for r in second] == [Outcome.SENT]
    assert smtp.accepted_ids() == {"d1": 1, "d3": 1}


def test_smtp_drop_before_data_is_retry(smtp: FakeSmtp) -> None:
    smtp.add_script("mail:drop")
    with smtp_transport(smtp.url()) as transport:
        [result] = transport.send([make_email(1)])
        [again] = transport.send([make_email(1)])
    assert result.outcome is Outcome.RETRY and "before end of data" in result.detail
    assert again.outcome is Outcome.SENT
    assert smtp.accepted_ids() == {"d1": 1}


def test_smtp_server_down_is_retry() -> None:
    with smtp_transport(f"smtp://127.0.0.1:{free_port()}") as transport:
        results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    assert "cannot connect" in results[0].detail


def test_smtp_starttls_and_login(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with FakeSmtp(users={"mailer": SMTP_PASSWORD}, tls_context=server_tls) as fake:
        url = fake.url("mailer", SMTP_PASSWORD, "starttls=1")
        with smtp_transport(url, ssl_context=client_tls) as transport:
            results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.SENT]
    assert fake.logins == 1 and len(fake.accepted) == 2


def test_smtp_auth_failure_is_fatal_without_the_password(
    server_tls: ssl.SSLContext, client_tls: ssl.SSLContext, caplog: pytest.LogCaptureFixture
) -> None:
    with FakeSmtp(users={"mailer": "the-real-one"}, tls_context=server_tls) as fake:
        url = fake.url("mailer", SMTP_PASSWORD, "starttls=1")
        transport = smtp_transport(url, ssl_context=client_tls)
        with caplog.at_level(logging.DEBUG), pytest.raises(FatalTransportError) as info:
            transport.send([make_email(1)])
    assert "535" in str(info.value) and info.value.results == ()
    assert fake.auth_failures >= 1 and fake.messages == []
    for text in (str(info.value), repr(info.value), repr(transport), caplog.text):
        assert SMTP_PASSWORD not in text


def test_smtp_required_starttls_missing_is_fatal(smtp: FakeSmtp) -> None:
    with pytest.raises(FatalTransportError, match="STARTTLS"):
        smtp_transport(smtp.url(query="starttls=1")).send([make_email(1)])
    assert smtp.messages == []


def test_smtp_untrusted_certificate_is_fatal(server_tls: ssl.SSLContext) -> None:
    with FakeSmtp(tls_context=server_tls) as fake:
        transport = smtp_transport(fake.url(query="starttls=1"))  # system trust store
        with pytest.raises(FatalTransportError, match="not trusted"):
            transport.send([make_email(1)])


def test_smtps_implicit_tls(server_tls: ssl.SSLContext, client_tls: ssl.SSLContext) -> None:
    with FakeSmtp(tls_context=server_tls, implicit_tls=True) as fake:
        assert fake.url().startswith("smtps://")
        with smtp_transport(fake.url(), ssl_context=client_tls) as transport:
            [result] = transport.send([make_email(1)])
    assert result.outcome is Outcome.SENT and fake.accepted_ids() == {"d1": 1}


def test_smtp_refuses_a_clear_text_password_to_a_remote_host() -> None:
    with pytest.raises(ConfigError) as info:
        SmtpTransport(f"smtp://u:{SMTP_PASSWORD}@mail.example.com:25")
    assert SMTP_PASSWORD not in str(info.value)


def test_smtp_bad_message_fails_only_that_message(smtp: FakeSmtp) -> None:
    bad = make_email(2, headers={"Subject": "override"})
    with smtp_transport(smtp.url()) as transport:
        results = transport.send([make_email(1), bad, make_email(3)])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
    assert "cannot build" in results[1].detail


@pytest.mark.parametrize(
    ("url", "host", "port", "implicit", "starttls", "user", "password"),
    [
        ("smtp://127.0.0.1:1025", "127.0.0.1", 1025, False, False, None, None),
        ("smtp://u:p%40ss@mail.example.com:587", "mail.example.com", 587, False, True, "u", "p@ss"),
        (
            "smtp://mail.example.com:2525?starttls=1",
            "mail.example.com",
            2525,
            False,
            True,
            None,
            None,
        ),
        ("smtp://relay.local:587?starttls=0", "relay.local", 587, False, False, None, None),
        ("smtps://u:pw-9@mail.example.com", "mail.example.com", 465, True, False, "u", "pw-9"),
        ("smtp://relay.local", "relay.local", 25, False, False, None, None),
    ],
)
def test_parse_smtp_url(
    url: str,
    host: str,
    port: int,
    implicit: bool,
    starttls: bool,
    user: str | None,
    password: str | None,
) -> None:
    t = parse_smtp_url(url)
    assert (t.host, t.port, t.implicit_tls, t.starttls, t.username, t.password) == (
        host,
        port,
        implicit,
        starttls,
        user,
        password,
    )
    if password:
        assert password not in repr(t)


@pytest.mark.parametrize("url", ["http://x", "smtp://", "smtp://h:notaport", "smtp://h?starttls=2"])
def test_parse_smtp_url_rejects(url: str) -> None:
    with pytest.raises(ConfigError):
        parse_smtp_url(url)


def test_wire_data_stuffs_dots_and_ends_the_data() -> None:
    assert _wire_data(b"a\n.b\r\n..c") == b"a\r\n..b\r\n...c\r\n.\r\n"


def test_smtp_fake_as_a_process(tmp_path: Path) -> None:
    record = tmp_path / "messages.jsonl"
    proc, port = start_process(
        "tests.fakes.smtp_server", "--script", "450", "--record", str(record)
    )
    try:
        with smtp_transport(f"smtp://127.0.0.1:{port}") as transport:
            outcomes = [transport.send([make_email(1)])[0].outcome for _ in range(2)]
    finally:
        stop_process(proc)
    assert outcomes == [Outcome.RETRY, Outcome.SENT]
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["delivery_id"], r["accepted"]) for r in lines] == [("d1", False), ("d1", True)]


def test_smtp_date_is_the_moment_the_email_carries(smtp: FakeSmtp) -> None:
    # `drip send --now T` composes emails dated T: the Date header says T, not the wall clock.
    moment = datetime(2031, 5, 6, 7, 8, 9, tzinfo=UTC)
    with smtp_transport(smtp.url()) as transport:
        transport.send([make_email(1, date=moment), make_email(2)])
    dates = [parsedate_to_datetime(str(m.parsed()["Date"])) for m in smtp.accepted]
    assert dates == [moment, NOW]


def test_a_reply_is_read_on_one_line_whatever_its_bytes() -> None:
    assert (
        _reply_text(b"550 5.1.1  no such\r\n user \xff here")
        == "550 5.1.1 no such user \ufffd here"
    )
    assert _reply_text("already\ttext ") == "already text"


class _Connection:
    """What `_refused` uses of an smtplib.SMTP: RSET (failing when asked to)."""

    def __init__(self, rset_fails: bool = False) -> None:
        self.rset_fails = rset_fails
        self.resets = 0

    def rset(self) -> None:
        self.resets += 1
        if self.rset_fails:
            raise OSError("connection reset")


@pytest.mark.parametrize(
    ("code", "outcome"),
    [(code, Outcome.RETRY) for code in (400, 450, 499)]
    + [(code, Outcome.FAILED) for code in (500, 550, 599)],
)
def test_a_refusal_is_retry_for_4xx_failed_for_5xx_and_resets_the_transaction(
    code: int, outcome: Outcome
) -> None:
    transport = SmtpTransport("smtp://127.0.0.1:2525")
    connection = _Connection()
    result = transport._refused(connection, "d1", "RCPT TO", code, b"no  such\r\nuser")  # type: ignore[arg-type]
    assert result == SendResult("d1", outcome, detail=f"RCPT TO: {code} no such user")
    assert connection.resets == 1
    assert transport._refused(_Connection(rset_fails=True), "d2", "DATA", code, b"x").outcome == (  # type: ignore[arg-type]
        outcome
    )


@pytest.mark.parametrize(
    ("code", "detail"),
    [
        (421, "server closing, MAIL FROM: 421 bye"),
        (-1, "unexpected reply, MAIL FROM: -1 bye"),
        (399, "unexpected reply, MAIL FROM: 399 bye"),
        (600, "unexpected reply, MAIL FROM: 600 bye"),
    ],
)
def test_a_closing_or_unreadable_reply_gives_up_the_connection(code: int, detail: str) -> None:
    transport = SmtpTransport("smtp://127.0.0.1:2525")
    with pytest.raises(_Retry) as raised:
        transport._refused(_Connection(), "d1", "MAIL FROM", code, b"bye")  # type: ignore[arg-type]
    assert raised.value.result == SendResult("d1", Outcome.RETRY, detail=detail)


def test_an_international_drip_from_goes_out_in_ascii_on_the_envelope(smtp: FakeSmtp) -> None:
    """DRIP_FROM with an international domain: the From header and MAIL FROM both carry the
    IDNA form, so a relay without SMTPUTF8 accepts it (it used to fail every message)."""
    with smtp_transport(smtp.url()) as transport:
        mailer = replace(make_mailer(transport), from_override="講座事務局 <info@例え.jp>")
        assert mailer.sender == ("info@xn--r8jz45g.jp", "講座事務局")
        [result] = transport.send([make_email(1, from_address=mailer.sender[0])])
    assert result.outcome is Outcome.SENT
    [message] = smtp.messages
    assert message.mail_from == "info@xn--r8jz45g.jp"
