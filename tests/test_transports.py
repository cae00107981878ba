"""Transports against real loopback servers: a fake SendGrid HTTP API and an aiosmtpd server.

One contract suite runs over every transport (same OutgoingEmail in, same outcomes out); then
each transport's own failure modes are driven through its fake, scripted per request.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import ssl
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from email import message_from_bytes, policy
from email.message import EmailMessage
from email.utils import format_datetime, parsedate_to_datetime
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
import trustme
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.fakes.smtp_server import FakeSmtp

from drip.config import Settings
from drip.errors import ConfigError
from drip.message import OutgoingEmail
from drip.transports import FatalTransportError, Outcome, SendResult, Transport, make_transport
from drip.transports.memory import MemoryTransport
from drip.transports.outbox import OutboxTransport
from drip.transports.sendgrid.fast import FastSendGridTransport
from drip.transports.sendgrid.official import SendGridTransport
from drip.transports.sendgrid.protocol import build_payload, retry_after_seconds
from drip.transports.sendgrid.validate import validate_request_payload
from drip.transports.smtp import SmtpTransport, _wire_data, parse_smtp_url

pytestmark = pytest.mark.filterwarnings(
    # aiosmtpd 1.4 itself sets the deprecated Session.login_data after every successful AUTH.
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)

NOW = datetime(2025, 3, 1, 7, 30, tzinfo=UTC)
API_KEY = "SG.sentinel-api-key-7f3a9c"
SMTP_PASSWORD = "sentinel-smtp-pass-5e1b"
ROOT = Path(__file__).resolve().parent.parent
TIMEOUT = 0.5  # client timeout for the "answer never comes" cases


def clock() -> datetime:
    return NOW


def make_email(n: int = 1, **changes: Any) -> OutgoingEmail:
    email = OutgoingEmail(
        delivery_id=f"d{n}",
        to_address=f"reader{n}@example.com",
        to_name="山田 太郎",
        from_address="course@example.org",
        from_name="ドリップ講座",
        subject=f"第{n}回: 最初の一歩",
        html=f"<p>こんにちは、山田さん。</p><p>レッスン {n}/8</p>",
        text=f"こんにちは、山田さん。\n\nレッスン {n}/8\n.先頭のドット\n",
        headers={
            "List-Unsubscribe": f"<https://drip.example.org/u/tok{n}>",
            "List-Unsubscribe-Post": "List-Unsubscribe=One-Click",
        },
        custom_args={
            "drip_delivery_id": f"d{n}",
            "drip_lesson": "01-intro",
            "drip_subscriber": str(100 + n),
        },
    )
    return replace(email, **changes)


# -- what a transport delivered, read back from where it went ---------------------------------


@dataclass(frozen=True)
class Seen:
    """The parts of a delivered message every transport must carry unchanged."""

    delivery_id: str
    to: str
    subject: str
    text: str
    html: str
    list_unsubscribe: str
    extra: dict[str, str] = field(default_factory=dict, compare=False)


def body(text: str) -> str:
    """A body as a reader sees it: MIME text travels with CRLF and a final line break."""
    return text.replace("\r\n", "\n").rstrip("\n")


def expected(email: OutgoingEmail) -> Seen:
    return Seen(
        email.delivery_id,
        email.to_address,
        email.subject,
        body(email.text),
        body(email.html),
        email.headers["List-Unsubscribe"],
    )


def seen_in_mime(data: bytes) -> Seen:
    msg = message_from_bytes(data, policy=policy.default)
    assert isinstance(msg, EmailMessage)
    plain, html = msg.get_body(("plain",)), msg.get_body(("html",))
    assert plain is not None and html is not None
    assert [p.get_content_type() for p in msg.iter_parts()] == ["text/plain", "text/html"]
    return Seen(
        str(msg["X-Drip-Delivery-Id"]),
        msg["To"].addresses[0].addr_spec,
        str(msg["Subject"]),
        body(plain.get_content()),
        body(html.get_content()),
        str(msg["List-Unsubscribe"]),
        {"Message-ID": str(msg["Message-ID"]), "Date": str(msg["Date"])},
    )


def seen_in_payload(payload: dict[str, Any]) -> Seen:
    content = {c["type"]: c["value"] for c in payload["content"]}
    return Seen(
        payload["custom_args"]["drip_delivery_id"],
        payload["personalizations"][0]["to"][0]["email"],
        payload["subject"],
        body(content["text/plain"]),
        body(content["text/html"]),
        payload["headers"]["List-Unsubscribe"],
        payload["custom_args"],
    )


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="module")
def server_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("127.0.0.1", "localhost").configure_cert(ctx)
    return ctx


@pytest.fixture(scope="module")
def client_tls(ca: trustme.CA) -> ssl.SSLContext:
    ctx = ssl.create_default_context()
    ca.configure_trust(ctx)
    return ctx


@pytest.fixture
def sendgrid() -> Iterator[FakeSendGrid]:
    with FakeSendGrid(api_key=API_KEY) as fake:
        yield fake


@pytest.fixture
def smtp() -> Iterator[FakeSmtp]:
    with FakeSmtp() as fake:
        yield fake


def sendgrid_transport(fake: FakeSendGrid, key: str = API_KEY) -> SendGridTransport:
    return SendGridTransport(key, base_url=fake.url, timeout=TIMEOUT, clock=clock)


def smtp_transport(url: str, **kwargs: Any) -> SmtpTransport:
    return SmtpTransport(url, clock=clock, timeout=TIMEOUT, message_id_domain="drip.test", **kwargs)


def free_port() -> int:
    """A port nothing listens on (bound then released): connecting to it is refused."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- one contract, every transport -------------------------------------------------------------


class Harness:
    """A transport wired to its backend, with the backend's words for the shared scenarios."""

    name: str
    transport: Transport
    # scenario -> script step; a scenario missing here does not apply to this transport
    steps: ClassVar[dict[str, Any]]

    def script(self, *scenarios: str) -> None:
        raise NotImplementedError

    def delivered(self) -> list[Seen]:
        raise NotImplementedError


class SendGridHarness(Harness):
    name = "sendgrid"
    steps: ClassVar[dict[str, Any]] = {
        "accept": "202",
        "refuse": "400",
        "later": "503",
        "lost": "reset",
        "fatal": "401",
    }

    def __init__(self, fake: FakeSendGrid, *, fast: bool = False) -> None:
        self.fake = fake
        self.transport: Transport = sendgrid_transport(fake)
        if fast:
            # One request in flight: the fake answers its script in arrival order, and the
            # contract scenarios are ordered. Concurrency is tested in test_sendgrid_fast.py.
            self.name = "sendgrid-fast"
            self.transport = FastSendGridTransport(
                API_KEY, base_url=fake.url, timeout=TIMEOUT, window=1, clock=clock
            )

    def script(self, *scenarios: str) -> None:
        self.fake.add_script(*(self.steps[s] for s in scenarios))

    def delivered(self) -> list[Seen]:
        assert self.fake.problems == []
        return [seen_in_payload(r.payload) for r in self.fake.accepted]


class SmtpHarness(Harness):
    name = "smtp"
    steps: ClassVar[dict[str, Any]] = {
        "accept": "250",
        "refuse": "550",
        "later": "450",
        "lost": "drop",
    }

    def __init__(self, fake: FakeSmtp) -> None:
        self.fake = fake
        self.transport = smtp_transport(fake.url())

    def script(self, *scenarios: str) -> None:
        self.fake.add_script(*(self.steps[s] for s in scenarios))

    def delivered(self) -> list[Seen]:
        return [seen_in_mime(m.data) for m in self.fake.accepted]


class OutboxHarness(Harness):
    name = "outbox"
    steps: ClassVar[dict[str, Any]] = {"accept": None}

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        self.transport = OutboxTransport(directory, message_id_domain="drip.test", clock=clock)

    def script(self, *scenarios: str) -> None:
        assert set(scenarios) <= {"accept"}

    def delivered(self) -> list[Seen]:
        files = sorted(self.directory.glob("*.eml"))  # d1, d2, ...: input order in tests
        return [seen_in_mime(p.read_bytes()) for p in files]


class MemoryHarness(Harness):
    name = "memory"
    steps: ClassVar[dict[str, Any]] = {
        "accept": Outcome.SENT,
        "refuse": Outcome.FAILED,
        "later": Outcome.RETRY,
        "lost": Outcome.IN_DOUBT,
        "fatal": FatalTransportError("scripted"),
    }

    def __init__(self) -> None:
        self.memory = MemoryTransport()
        self.transport = self.memory

    def script(self, *scenarios: str) -> None:
        self.memory.add_script(*(self.steps[s] for s in scenarios))

    def delivered(self) -> list[Seen]:
        return [expected(e) for e in self.memory.sent]


HARNESSES: dict[str, type[Harness]] = {
    "sendgrid": SendGridHarness,
    "sendgrid-fast": SendGridHarness,
    "smtp": SmtpHarness,
    "outbox": OutboxHarness,
    "memory": MemoryHarness,
}


def able(scenario: str) -> list[str]:
    """The transports whose fake can be made to answer `scenario` (the outbox cannot refuse)."""
    return [name for name, kind in HARNESSES.items() if scenario in kind.steps]


def answering(scenario: str) -> pytest.MarkDecorator:
    """Run a contract test only over the transports that can produce `scenario`: nothing is
    generated only to be skipped."""
    return pytest.mark.parametrize("harness", able(scenario), indirect=True)


@pytest.fixture(params=list(HARNESSES))
def harness(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Harness]:
    h: Harness
    if request.param.startswith("sendgrid"):
        with FakeSendGrid(api_key=API_KEY) as fake:
            h = SendGridHarness(fake, fast=request.param == "sendgrid-fast")
            with h.transport:
                yield h
    elif request.param == "smtp":
        with FakeSmtp() as smtp_fake:
            h = SmtpHarness(smtp_fake)
            with h.transport:
                yield h
    elif request.param == "outbox":
        h = OutboxHarness(tmp_path / "outbox")
        with h.transport:
            yield h
    else:
        h = MemoryHarness()
        with h.transport:
            yield h


def test_contract_every_message_arrives_unchanged(harness: Harness) -> None:
    emails = [make_email(n) for n in (1, 2, 3)]
    results = harness.transport.send(emails)
    assert [r.delivery_id for r in results] == ["d1", "d2", "d3"]
    assert [r.outcome for r in results] == [Outcome.SENT] * 3
    assert all(r.provider_id for r in results)
    assert len({r.provider_id for r in results}) == 3
    assert harness.delivered() == [expected(e) for e in emails]


def test_contract_empty_batch(harness: Harness) -> None:
    assert harness.transport.send([]) == []
    assert isinstance(harness.transport, Transport)


@answering("refuse")
def test_contract_permanent_refusal_fails_one_message_only(harness: Harness) -> None:
    harness.script("accept", "refuse", "accept")
    results = harness.transport.send([make_email(1), make_email(2), make_email(3)])
    assert [r.outcome for r in results] == [Outcome.SENT, Outcome.FAILED, Outcome.SENT]
    assert results[1].delivery_id == "d2" and results[1].detail
    assert [s.delivery_id for s in harness.delivered()] == ["d1", "d3"]


@answering("later")
def test_contract_temporary_refusal_is_retry(harness: Harness) -> None:
    harness.script("later")
    results = harness.transport.send([make_email(1), make_email(2)])
    assert len(results) == 2
    assert results[0].outcome is Outcome.RETRY and results[0].delivery_id == "d1"
    assert results[1].outcome in (Outcome.SENT, Outcome.RETRY)
    assert "d1" not in [s.delivery_id for s in harness.delivered()]


@answering("lost")
def test_contract_lost_answer_is_in_doubt_and_not_resent(harness: Harness) -> None:
    harness.script("lost")
    results = harness.transport.send([make_email(1), make_email(2)])
    assert results[0].outcome is Outcome.IN_DOUBT
    assert results[1].delivery_id == "d2"
    assert results[1].outcome in (Outcome.RETRY, Outcome.SENT)
    # The next call works again and nothing was silently sent twice.
    again = harness.transport.send([make_email(3)])
    assert [r.outcome for r in again] == [Outcome.SENT]
    ids = [s.delivery_id for s in harness.delivered()]
    assert len(ids) == len(set(ids))


@answering("fatal")
def test_contract_fatal_answer_raises_with_earlier_results(harness: Harness) -> None:
    harness.script("accept", "fatal")
    with pytest.raises(FatalTransportError) as info:
        harness.transport.send([make_email(1), make_email(2), make_email(3)])
    assert [(r.delivery_id, r.outcome) for r in info.value.results] == [("d1", Outcome.SENT)]
    assert [s.delivery_id for s in harness.delivered()] == ["d1"]


# -- SendGrid ----------------------------------------------------------------------------------


def test_build_payload_is_the_v3_shape() -> None:
    email = make_email(1, custom_args={"drip_delivery_id": "stale", "drip_lesson": "01-intro"})
    payload = build_payload(email)
    assert payload["personalizations"] == [
        {"to": [{"email": "reader1@example.com", "name": "山田 太郎"}]}
    ]
    assert payload["from"] == {"email": "course@example.org", "name": "ドリップ講座"}
    assert [c["type"] for c in payload["content"]] == ["text/plain", "text/html"]
    assert payload["headers"] == dict(email.headers)
    # The ledger id wins over a stale custom arg: webhook events must find their row.
    assert payload["custom_args"] == {"drip_delivery_id": "d1", "drip_lesson": "01-intro"}
    json.dumps(payload)  # serialisable as it is


def test_fake_sendgrid_rejects_what_sendgrid_would() -> None:
    good = build_payload(make_email(1))
    assert validate_request_payload(good) == []
    swapped = {**good, "content": list(reversed(good["content"]))}
    assert any("content types" in p for p in validate_request_payload(swapped))
    no_args = {k: v for k, v in good.items() if k != "custom_args"}
    assert validate_request_payload(no_args)


def test_sendgrid_request_is_checked_by_the_fake(sendgrid: FakeSendGrid) -> None:
    with sendgrid_transport(sendgrid) as transport:
        [result] = transport.send([make_email(1)])
    assert result.outcome is Outcome.SENT
    assert result.provider_id == "fake-1"
    [request] = sendgrid.requests
    assert request.problems == [] and request.authorization == "Bearer [key]"
    assert request.payload["custom_args"] == {
        "drip_delivery_id": "d1",
        "drip_lesson": "01-intro",
        "drip_subscriber": "101",
    }


def test_sendgrid_wrong_key_is_fatal_and_secret_free(sendgrid: FakeSendGrid) -> None:
    other = "SG.another-sentinel-key"
    with pytest.raises(FatalTransportError) as info:
        sendgrid_transport(sendgrid, key=other).send([make_email(1), make_email(2)])
    assert "SENDGRID_API_KEY" in str(info.value)
    assert info.value.results == ()
    assert other not in str(info.value) and len(sendgrid.requests) == 1


@pytest.mark.parametrize(
    ("step", "outcome", "retry_after"),
    [
        ("400", Outcome.FAILED, None),
        ("413", Outcome.FAILED, None),
        ("422", Outcome.FAILED, None),
        ("429:7", Outcome.RETRY, 7.0),
        ("429", Outcome.RETRY, 1.0),
        (f"429@{int(NOW.timestamp()) + 90}", Outcome.RETRY, 90.0),
        ("500", Outcome.RETRY, None),
        ("502", Outcome.RETRY, None),
        ("503", Outcome.RETRY, None),
    ],
)
def test_sendgrid_status_mapping(
    sendgrid: FakeSendGrid, step: str, outcome: Outcome, retry_after: float | None
) -> None:
    sendgrid.add_script(step)
    [result] = sendgrid_transport(sendgrid).send([make_email(1)])
    assert (result.outcome, result.retry_after) == (outcome, retry_after)
    assert result.detail.startswith(f"HTTP {step[:3]}: scripted")


@pytest.mark.parametrize("step", ["401", "403", "404"])
def test_sendgrid_fatal_statuses(sendgrid: FakeSendGrid, step: str) -> None:
    sendgrid.add_script("202", step)
    with pytest.raises(FatalTransportError) as info:
        sendgrid_transport(sendgrid).send([make_email(1), make_email(2), make_email(3)])
    assert [r.outcome for r in info.value.results] == [Outcome.SENT]
    assert len(sendgrid.requests) == 2  # the third email was never tried


def test_sendgrid_rate_limit_stops_the_batch(sendgrid: FakeSendGrid) -> None:
    sendgrid.add_script("202", "429:30")
    results = sendgrid_transport(sendgrid).send([make_email(n) for n in (1, 2, 3, 4)])
    assert [r.outcome for r in results] == [Outcome.SENT] + [Outcome.RETRY] * 3
    assert [r.retry_after for r in results[1:]] == [30.0] * 3
    assert results[2].detail.startswith("not attempted")
    assert len(sendgrid.requests) == 2  # no hammering a throttling API


def test_retry_after_forms() -> None:
    later = NOW + timedelta(seconds=120)
    assert retry_after_seconds({"Retry-After": format_datetime(later, usegmt=True)}, NOW) == 120
    assert retry_after_seconds({"Retry-After": "2.5"}, NOW) == 2.5
    assert retry_after_seconds({"X-RateLimit-Reset": str(int(NOW.timestamp()) - 5)}, NOW) == 0
    assert retry_after_seconds({"Retry-After": "soon"}, NOW) is None
    assert retry_after_seconds({}, NOW) is None


def test_sendgrid_answer_after_timeout_is_in_doubt(sendgrid: FakeSendGrid) -> None:
    sendgrid.add_script("delay:5")
    started = time.monotonic()
    results = sendgrid_transport(sendgrid).send([make_email(1), make_email(2)])
    assert time.monotonic() - started < 3
    assert [r.outcome for r in results] == [Outcome.IN_DOUBT, Outcome.RETRY]
    # The provider did take it: exactly why it must not be retried silently.
    assert sendgrid.accepted_ids() == {"d1": 1}


def test_sendgrid_reset_after_body_is_in_doubt(sendgrid: FakeSendGrid) -> None:
    sendgrid.add_script("reset")
    [result] = sendgrid_transport(sendgrid).send([make_email(1)])
    assert result.outcome is Outcome.IN_DOUBT
    assert "answer lost" in result.detail


def test_sendgrid_unreachable_is_retry_before_sending() -> None:
    transport = SendGridTransport(API_KEY, base_url=f"http://127.0.0.1:{free_port()}", timeout=1)
    results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    assert "not sent" in results[0].detail


def test_sendgrid_needs_a_key() -> None:
    with pytest.raises(ConfigError, match="SENDGRID_API_KEY"):
        SendGridTransport("")


def test_sendgrid_debug_logs_never_show_the_key(
    sendgrid: FakeSendGrid, caplog: pytest.LogCaptureFixture
) -> None:
    sendgrid.add_script("202", "500", "401")
    with caplog.at_level(logging.DEBUG):
        transport = sendgrid_transport(sendgrid)
        transport.send([make_email(1)])
        transport.send([make_email(2)])
        with pytest.raises(FatalTransportError):
            transport.send([make_email(3)])
    assert "Bearer [redacted]" in caplog.text  # the library did log its headers
    assert API_KEY not in caplog.text
    assert API_KEY not in repr(transport)


# -- SMTP --------------------------------------------------------------------------------------


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


# -- outbox ------------------------------------------------------------------------------------


def test_outbox_file_reparses_as_the_same_message(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path / "out", message_id_domain="drip.test", clock=clock)
    [result] = outbox.send([make_email(1)])
    path = tmp_path / "out" / "d1.eml"
    assert result == SendResult("d1", Outcome.SENT, provider_id="d1.eml", detail=f"wrote {path}")
    seen = seen_in_mime(path.read_bytes())
    assert seen == expected(make_email(1))
    assert parsedate_to_datetime(seen.extra["Date"]) == NOW
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["d1.eml"]  # no temp files left


def test_outbox_rewrite_replaces_whole_file(tmp_path: Path) -> None:
    outbox = OutboxTransport(tmp_path, clock=clock)
    outbox.send([make_email(1)])
    outbox.send([make_email(1, subject="改訂版")])
    assert seen_in_mime((tmp_path / "d1.eml").read_bytes()).subject == "改訂版"


@pytest.mark.parametrize("bad_id", ["../escape", ".hidden", "a/b", "", "x" * 300])
def test_outbox_refuses_unsafe_file_names(tmp_path: Path, bad_id: str) -> None:
    outbox = OutboxTransport(tmp_path / "out", clock=clock)
    [result] = outbox.send([make_email(1, delivery_id=bad_id)])
    assert result.outcome is Outcome.FAILED
    assert list((tmp_path / "out").iterdir()) == []
    assert not (tmp_path / "escape.eml").exists()


def test_outbox_crash_before_rename_leaves_no_partial_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outbox = OutboxTransport(tmp_path, clock=clock)
    outbox.send([make_email(1)])
    before = (tmp_path / "d1.eml").read_bytes()

    def crash(src: Any, dst: Any) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", crash)
    results = outbox.send([make_email(1, subject="新"), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.RETRY, Outcome.RETRY]
    assert (tmp_path / "d1.eml").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d1.eml"]


def test_outbox_unusable_directory_is_fatal(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(FatalTransportError, match="DRIP_OUTBOX_DIR"):
        OutboxTransport(blocker / "out").send([make_email(1)])


# -- memory ------------------------------------------------------------------------------------


def test_memory_script_precedence_and_records() -> None:
    def slow(email: OutgoingEmail) -> SendResult:
        return SendResult("ignored", Outcome.RETRY, retry_after=60)

    memory = MemoryTransport(
        [Outcome.FAILED, slow], by_delivery_id={"d9": Outcome.IN_DOUBT}, default=Outcome.SENT
    )
    results = memory.send([make_email(9), make_email(1), make_email(2), make_email(3)])
    assert [(r.delivery_id, r.outcome) for r in results] == [
        ("d9", Outcome.IN_DOUBT),
        ("d1", Outcome.FAILED),
        ("d2", Outcome.RETRY),
        ("d3", Outcome.SENT),
    ]
    assert results[2].retry_after == 60
    assert memory.sent_ids == ["d3"] and len(memory.attempts) == 4 and memory.calls == 1
    with memory:
        pass
    assert memory.closed


# -- make_transport ----------------------------------------------------------------------------


def test_make_transport_builds_each_kind(tmp_path: Path, sendgrid: FakeSendGrid) -> None:
    outbox = make_transport(
        Settings(outbox_dir=tmp_path, from_address="講座 <course@drip.example>")
    )
    assert outbox.name == "outbox"
    [result] = outbox.send([make_email(1)])
    seen = seen_in_mime((tmp_path / str(result.provider_id)).read_bytes())
    assert seen.extra["Message-ID"].endswith("@drip.example>")

    sg = make_transport(
        Settings(transport="sendgrid", sendgrid_api_key=API_KEY, sendgrid_api_url=sendgrid.url)
    )
    assert sg.name == "sendgrid"
    assert sg.send([make_email(2)])[0].outcome is Outcome.SENT

    smtp_settings = Settings(transport="smtp", smtp_url="smtp://127.0.0.1:1025")
    assert make_transport(smtp_settings).name == "smtp"
    assert make_transport(Settings(transport="memory")).name == "memory"


@pytest.mark.parametrize(
    "settings",
    [
        Settings(transport="carrier-pigeon"),
        Settings(transport="sendgrid"),
        Settings(transport="smtp"),
    ],
)
def test_make_transport_config_errors(settings: Settings) -> None:
    with pytest.raises(ConfigError):
        make_transport(settings)


# -- the fakes as their own processes (used by crash tests and benchmarks) ---------------------


def start_process(module: str, *args: str) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", module, "--port", "0", *args],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline()
    assert line.strip().isdigit(), f"{module} printed {line!r} instead of its port"
    return proc, int(line)


def stop_process(proc: subprocess.Popen[str]) -> None:
    proc.terminate()
    proc.wait(timeout=10)
    if proc.stdout is not None:
        proc.stdout.close()


def test_sendgrid_fake_as_a_process(tmp_path: Path) -> None:
    record = tmp_path / "requests.jsonl"
    proc, port = start_process(
        "tests.fakes.sendgrid_server",
        "--api-key",
        API_KEY,
        "--script",
        "503",
        "--record",
        str(record),
    )
    try:
        transport = SendGridTransport(API_KEY, base_url=f"http://127.0.0.1:{port}", timeout=5)
        assert transport.send([make_email(1)])[0].outcome is Outcome.RETRY
        assert transport.send([make_email(1)])[0].outcome is Outcome.SENT
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_fake/stats", timeout=5) as answer:
            stats = json.load(answer)
    finally:
        stop_process(proc)
    assert stats["requests"] == 2 and stats["accepted_ids"] == {"d1": 1}
    assert stats["problems"] == []
    lines = [json.loads(line) for line in record.read_text().splitlines()]
    assert [(r["status"], r["accepted"]) for r in lines] == [(503, False), (202, True)]


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


# -- secret hygiene across every failure path --------------------------------------------------


def test_no_secret_in_any_result_or_error(
    sendgrid: FakeSendGrid,
    server_tls: ssl.SSLContext,
    client_tls: ssl.SSLContext,
    caplog: pytest.LogCaptureFixture,
) -> None:
    texts: list[str] = []

    def collect(call: Callable[[], list[SendResult]]) -> None:
        try:
            results = call()
        except FatalTransportError as exc:
            texts.extend([str(exc), repr(exc)])
            results = list(exc.results)
        texts.extend(repr(r) for r in results)

    with caplog.at_level(logging.DEBUG):
        sendgrid.add_script("202", "400", "429:1", "500", "reset", "delay:3", "401")
        transport = sendgrid_transport(sendgrid)
        texts.append(repr(transport))
        for n in range(7):
            collect(partial(transport.send, [make_email(n)]))
        with FakeSmtp(users={"mailer": SMTP_PASSWORD}, tls_context=server_tls) as fake:
            fake.add_script("250", "450", "550", "drop", "421")
            url = fake.url("mailer", SMTP_PASSWORD, "starttls=1")
            smtp_ok = smtp_transport(url, ssl_context=client_tls)
            texts.append(repr(smtp_ok))
            for n in range(5):
                collect(partial(smtp_ok.send, [make_email(n)]))
            smtp_ok.close()
            wrong_url = fake.url("mailer", "x" + SMTP_PASSWORD, "starttls=1")
            wrong = smtp_transport(wrong_url, ssl_context=client_tls)
            collect(partial(wrong.send, [make_email(1)]))
    texts.append(caplog.text)
    assert len(texts) > 12
    for text in texts:
        assert API_KEY not in text
        assert SMTP_PASSWORD not in text
