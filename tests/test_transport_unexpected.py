"""An exception that is not a transport outcome never escapes a transport bare (#6).

The contract (drip.transports.base): `send` raises nothing but `FatalTransportError`, and the
future of `submit` fails with nothing else; `submit` itself never raises. Anything else inside a
transport (a host the IDNA codec refuses, a bug) becomes `FatalTransportError("the transport
failed unexpectedly: <type>: <message>")` carrying every result known so far, so the send engine
records those and releases the rest; the message that met the error gets no result (it was not
handed over), except over SMTP after the final '.', where it is IN_DOUBT.
"""

from __future__ import annotations

import smtplib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.fakes.smtp_server import FakeSmtp
from tests.transport_support import (
    API_KEY,
    SENDGRID_CLIENTS,
    bulk_email,
    clock,
    make_email,
    sendgrid_client,
    smtp_transport,
)

import drip.transports.outbox
import drip.transports.sendgrid.bulk
import drip.transports.sendgrid.fast
import drip.transports.sendgrid.official
import drip.transports.smtp
from drip.message import OutgoingEmail
from drip.transports import FatalTransportError, Outcome, Transport
from drip.transports.outbox import OutboxTransport
from drip.transports.sendgrid.bulk import BulkSendGridTransport
from drip.transports.sendgrid.fast import FastSendGridTransport
from drip.transports.sendgrid.official import SendGridTransport
from drip.transports.smtp import SmtpTransport

UNEXPECTED = "the transport failed unexpectedly: "
BAD_HOST = "a..b"  # accepted by urllib's parser, refused by the IDNA codec when connecting


def bad_host_transport(kind: str) -> Transport:
    url = f"http://{BAD_HOST}:8080"
    if kind == "official":
        return SendGridTransport(API_KEY, base_url=url)
    if kind == "smtp":
        return SmtpTransport(f"smtp://{BAD_HOST}:2525")
    fast = FastSendGridTransport(API_KEY, base_url=url, window=4)
    return BulkSendGridTransport(fast) if kind == "bulk" else fast


@pytest.mark.parametrize("kind", [*SENDGRID_CLIENTS, "smtp"])
def test_a_host_the_idna_codec_refuses_is_fatal_with_nothing_attempted(kind: str) -> None:
    with bad_host_transport(kind) as transport:
        emails = [make_email(1), make_email(2)]
        with pytest.raises(FatalTransportError) as info:
            transport.send(emails)
        future = transport.submit(emails)  # never raises itself
        error = future.exception(timeout=10)
    assert str(info.value).startswith(f"{UNEXPECTED}UnicodeError: ")
    assert info.value.results == ()  # nothing was handed over: the engine releases both
    assert isinstance(error, FatalTransportError) and str(error) == str(info.value)


def failing_on(target: str, victim: str, real: Callable[..., Any]) -> Callable[..., Any]:
    """`real`, except that it raises RuntimeError (a bug) for the email of delivery id `victim`."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        first = args[0]
        emails = first if isinstance(first, list) else [first]
        if any(isinstance(e, OutgoingEmail) and e.delivery_id == victim for e in emails):
            raise RuntimeError(f"bug in {target}")
        return real(*args, **kwargs)

    return wrapper


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[OutboxTransport]:
    with OutboxTransport(tmp_path, message_id_domain="drip.test", clock=clock) as transport:
        yield transport


CASES = {
    # transport kind -> (module, function that handles one email, emails)
    "official": (drip.transports.sendgrid.official, "build_payload", make_email),
    "fast": (drip.transports.sendgrid.fast, "fast_payload", make_email),
    "bulk": (drip.transports.sendgrid.bulk, "bulk_payload", bulk_email),
    "smtp": (drip.transports.smtp, "build_mime", make_email),
    "outbox": (drip.transports.outbox, "write_atomically", make_email),
}


@pytest.mark.parametrize("kind", list(CASES))
def test_a_bug_mid_batch_keeps_the_results_so_far(
    kind: str,
    sendgrid: FakeSendGrid,
    smtp: FakeSmtp,
    outbox: OutboxTransport,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    module, name, make = CASES[kind]
    if kind == "bulk":
        # One bulk request per email (three lessons: three groups); the second request's body
        # builder meets the bug.
        emails = [make(1), make(2, subject="第2回"), make(3, subject="第3回")]
    else:
        emails = [make(1), make(2), make(3)]
    victim = emails[1].delivery_id
    if kind == "outbox":
        real = module.write_atomically
        monkeypatch.setattr(
            module,
            name,
            lambda path, data: (
                (_ for _ in ()).throw(RuntimeError(f"bug in {name}"))
                if path.name.startswith(victim)
                else real(path, data)
            ),
        )
    else:
        monkeypatch.setattr(module, name, failing_on(name, victim, getattr(module, name)))
    transport: Transport
    if kind == "smtp":
        transport = smtp_transport(smtp.url())
    elif kind == "outbox":
        transport = outbox
    else:
        transport = sendgrid_client(kind, sendgrid)
    with transport, pytest.raises(FatalTransportError) as info:
        transport.send(emails)
    assert str(info.value) == f"{UNEXPECTED}RuntimeError: bug in {name}"
    assert [(r.delivery_id, r.outcome) for r in info.value.results] == [
        (emails[0].delivery_id, Outcome.SENT)
    ]


def test_smtp_a_failure_after_the_final_dot_is_in_doubt(
    smtp: FakeSmtp, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The message was written: whatever goes wrong reading the reply, the relay may have it.
    real_send, real_getreply = smtplib.SMTP.send, smtplib.SMTP.getreply
    state = {"data_sent": False}

    def send(self: smtplib.SMTP, data: Any) -> None:
        real_send(self, data)
        state["data_sent"] = isinstance(data, bytes) and data.endswith(b"\r\n.\r\n")

    def getreply(self: smtplib.SMTP) -> tuple[int, bytes]:
        if state["data_sent"]:
            raise RuntimeError("bug while reading the reply")
        return real_getreply(self)

    monkeypatch.setattr(smtplib.SMTP, "send", send)
    monkeypatch.setattr(smtplib.SMTP, "getreply", getreply)
    with smtp_transport(smtp.url()) as transport:
        results = transport.send([make_email(1), make_email(2)])
    assert [r.outcome for r in results] == [Outcome.IN_DOUBT, Outcome.RETRY]
    assert "RuntimeError" in results[0].detail
    # The relay may have queued d1 (or not: the client hung up at once); d2 was never sent.
    assert smtp.accepted_ids() in ({}, {"d1": 1})


@pytest.mark.parametrize("kind", ["fast", "bulk"])
def test_submit_to_a_closed_transport_fails_its_future(sendgrid: FakeSendGrid, kind: str) -> None:
    transport = sendgrid_client(kind, sendgrid)
    transport.close()
    future = transport.submit([make_email(1)])
    error = future.exception(timeout=10)
    assert isinstance(error, FatalTransportError) and error.results == ()
    assert str(error) == f"{UNEXPECTED}RuntimeError: this SendGrid transport is closed"
    assert sendgrid.requests == []
