"""The contract every transport passes, against real loopback servers (tests/fakes).

The same OutgoingEmail in, the same outcomes out: SendGrid (official, fast, bulk), SMTP, the
outbox and memory each run every scenario their backend can be made to answer. Each transport's
own failure modes are in its own test_transport_*.py.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any, ClassVar

import pytest
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.fakes.smtp_server import FakeSmtp
from tests.transport_support import (
    API_KEY,
    SMTP_PASSWORD,
    TIMEOUT,
    Seen,
    clock,
    expected,
    make_email,
    seen_in_mime,
    seen_in_payload,
    sendgrid_transport,
    smtp_transport,
)

from drip.transports import FatalTransportError, Outcome, SendResult, Transport
from drip.transports.memory import MemoryTransport
from drip.transports.outbox import OutboxTransport
from drip.transports.sendgrid.bulk import BulkSendGridTransport
from drip.transports.sendgrid.fast import FastSendGridTransport

pytestmark = pytest.mark.filterwarnings(
    # aiosmtpd 1.4 itself sets the deprecated Session.login_data after every successful AUTH.
    "ignore:Session.login_data is deprecated:DeprecationWarning"
)

# -- one contract, every transport -------------------------------------------------------------


class Harness:
    """A transport wired to its backend, with the backend's words for the shared scenarios."""

    name: str
    transport: Transport
    # scenario -> script step; a scenario missing here does not apply to this transport
    steps: ClassVar[dict[str, Any]]
    # what the transport declares: (window, pipelines, fills_bulk_parts)
    capabilities: tuple[int, bool, bool] = (1, False, False)

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

    def __init__(self, fake: FakeSendGrid, *, client: str = "official") -> None:
        self.fake = fake
        self.transport: Transport = sendgrid_transport(fake)
        if client != "official":
            # One request in flight: the fake answers its script in arrival order, and the
            # contract scenarios are ordered. Concurrency is tested in
            # test_transport_sendgrid_fast.py.
            self.name = f"sendgrid-{client}"
            # "process": the HTTP step in a second process (DRIP_SENDGRID_PROCESS=on).
            fast = FastSendGridTransport(
                API_KEY,
                base_url=fake.url,
                timeout=TIMEOUT,
                window=1,
                clock=clock,
                process="on" if client == "process" else "off",
            )
            self.transport = fast
            # fills_bulk_parts: lesson bodies are spliced from the lesson's encoded parts.
            self.capabilities = (1, True, True)
        if client == "bulk":
            # The contract's emails have no bulk parts: bulk mode sends them one per request
            # through the fast client. Its bulk requests are tested in test_transport_bulk.py.
            self.transport = BulkSendGridTransport(fast)
            self.capabilities = (4000, True, True)

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
    "sendgrid-bulk": SendGridHarness,
    "sendgrid-process": SendGridHarness,
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
            h = SendGridHarness(fake, client=request.param.partition("-")[2] or "official")
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


# -- what a transport declares: window, pipelines, fills_bulk_parts, submit --------------------


def test_contract_declares_its_capabilities(harness: Harness) -> None:
    transport = harness.transport
    declared = (transport.window, transport.pipelines, transport.fills_bulk_parts)
    assert declared == harness.capabilities
    if not transport.pipelines:
        # A transport that does not pipeline has sent by the time `submit` returns.
        assert transport.submit([]).done()


def test_contract_submit_gives_what_send_gives(harness: Harness) -> None:
    results = harness.transport.submit([make_email(1), make_email(2)]).result(timeout=10)
    assert [(r.delivery_id, r.outcome) for r in results] == [
        ("d1", Outcome.SENT),
        ("d2", Outcome.SENT),
    ]
    assert [s.delivery_id for s in harness.delivered()] == ["d1", "d2"]


@answering("fatal")
def test_contract_fatal_answer_is_the_exception_of_the_submitted_future(harness: Harness) -> None:
    harness.script("accept", "fatal")
    future = harness.transport.submit([make_email(1), make_email(2), make_email(3)])
    error = future.exception(timeout=10)
    assert isinstance(error, FatalTransportError)
    assert [(r.delivery_id, r.outcome) for r in error.results] == [("d1", Outcome.SENT)]


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
