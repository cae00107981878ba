"""Bulk mode's compact form: a window composed as `ComposedEmails` (a `Reader` tuple per reader).

What must hold: each item is the `OutgoingEmail` that `compose` makes for that claim; the bulk
body made from the tuples (in this process or in the sending process, from plain values) is the
body `bulk_payload` makes from those emails, byte for byte; and bulk mode's fallbacks (a value
holding the key prefix, a request refused with 400) still send every reader once.
"""

from __future__ import annotations

import marshal
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from sqlalchemy import Engine
from sqlalchemy.orm import sessionmaker
from tests.fakes.sendgrid_server import FakeSendGrid
from tests.support import COURSE, make_mailer

from drip import store
from drip.delivery import compose, compose_readers, send_due
from drip.lifecycle import subscribe
from drip.links import LinkBuilder
from drip.message import OutgoingEmail
from drip.render import ComposedEmails
from drip.transports import Outcome
from drip.transports.base import SendResult, TransportBase
from drip.transports.memory import MemoryTransport
from drip.transports.sendgrid.bulk import BulkSendGridTransport
from drip.transports.sendgrid.fast import FastSendGridTransport
from drip.transports.sendgrid.protocol import (
    KEY_PREFIX,
    build_payload,
    bulk_payload,
    fill_parts,
    plain_readers,
    plain_readers_body,
)

API_KEY = "SG.bulk-readers-test"
NOW = datetime(2026, 3, 2, 1, 0, tzinfo=UTC)
NAMES = [
    "山田 太郎",
    "Tom & Jerry <tj>",
    'O"Brien, Jr.',
    None,
    "",
    "  spaced\tout\u3000name  ",
    "<script>alert(1)</script>",
    "🏴\U000e0067\U000e0062\U000e0073\U000e0063\U000e0074\U000e007f Scot",
    "鈴木",
]


class Unsent(TransportBase):
    """Never sends: only for the Mailer's `fills_bulk_parts`."""

    fills_bulk_parts = True


MAILER = make_mailer(Unsent())


def claim(n: int, name: str | None, lesson_index: int = 0) -> store.Claim:
    return store.Claim(
        delivery_id=5000 + n,
        subscriber_id=n,
        email=f"reader{n}@example.com",
        name=name,
        timezone="Asia/Tokyo",
        lesson=COURSE.lessons[lesson_index].slug,
        attempts=0,
    )


def composed(claims: list[store.Claim]) -> ComposedEmails:
    made = compose_readers(MAILER, claims, now=NOW)
    assert made is not None
    kept, emails, broken = made
    assert kept == claims and broken == []
    return emails


def test_each_composed_email_is_what_compose_makes() -> None:
    claims = [claim(n, name, n % 2) for n, name in enumerate(NAMES)]
    emails = composed(claims)
    assert len(emails) == len(claims)
    for email, one in zip(emails, claims, strict=True):
        expected = compose(MAILER, one, now=NOW)
        assert email == expected
        assert email.bulk == expected.bulk  # not part of ==
    assert emails[1:3] == [compose(MAILER, one, now=NOW) for one in claims[1:3]]


def test_readers_of_a_lesson_variant_share_one_lesson_object() -> None:
    emails = composed([claim(n, NAMES[n % 2]) for n in range(6)])
    assert len({id(reader.lesson) for reader in emails.readers}) == 1


def test_a_base_url_check_url_refuses_leaves_the_claims_to_compose() -> None:
    # None: the window is composed claim by claim, which records why each one failed.
    bad = make_mailer(Unsent())
    object.__setattr__(bad, "links", LinkBuilder("https://bad host.example", ["k"]))
    assert compose_readers(bad, [claim(1, "山田")], now=NOW) is None


def test_readers_urls_are_the_links_one_by_one() -> None:
    links = MAILER.links
    ids = [1, 42, 10**12, 987654321]
    assert links.readers_urls(ids) == [(links.unsubscribe_url(i), links.manage_url(i)) for i in ids]
    assert links.read("unsubscribe", links.reader_urls(42)[0].rsplit("/", 1)[1], now=NOW) == 42
    assert links.read("manage", links.reader_urls(42)[1].rsplit("/", 1)[1], now=NOW) == 42


@pytest.mark.parametrize("named", [True, False])
def test_the_body_from_tuples_is_bulk_payloads_byte_for_byte(named: bool) -> None:
    names = [name for name in NAMES if (name or "").strip()] if named else [None, ""]
    emails = composed([claim(n, names[n % len(names)]) for n in range(30)])
    plain = plain_readers(emails.readers)
    expected = orjson.dumps(bulk_payload(emails[:]))
    assert plain_readers_body(plain) == expected
    # As the sending process gets them.
    assert plain_readers_body(marshal.loads(marshal.dumps(plain))) == expected


def _window(count: int, names: list[str | None] = NAMES) -> tuple[ComposedEmails, list[str]]:
    claims = [claim(n, names[n % len(names)]) for n in range(count)]
    claims.append(claim(count, f"{KEY_PREFIX}2 not bulk"))  # sent on its own
    emails = composed(claims)
    return emails, [str(c.delivery_id) for c in claims]


@pytest.mark.parametrize("process", ["off", "on"])
def test_bulk_transport_sends_each_composed_reader_once(process: Any) -> None:
    emails, ids = _window(25)
    with FakeSendGrid(api_key=API_KEY) as fake:
        inner = FastSendGridTransport(API_KEY, base_url=fake.url, window=4, process=process)
        with BulkSendGridTransport(inner, per_request=10) as transport:
            results = transport.send(emails)
        assert [r.delivery_id for r in results] == ids
        assert [r.outcome for r in results] == [Outcome.SENT] * len(ids)
        assert fake.problems == []
        assert fake.accepted_ids() == dict.fromkeys(ids, 1)
        # Name variants: named readers in requests of 10, those without a name in one, the
        # reader with the key prefix alone.
        named = sum(1 for r in emails.readers[:-1] if r.shown_name)
        assert len(fake.requests) == -(-named // 10) + 1 + 1


def test_a_refused_bulk_request_of_composed_readers_falls_back_to_single_sends() -> None:
    emails, ids = _window(4, NAMES[:3])  # one request of 4 (one name variant), refused
    with FakeSendGrid(api_key=API_KEY, script=["400"]) as fake:
        inner = FastSendGridTransport(API_KEY, base_url=fake.url, window=4)
        with BulkSendGridTransport(inner) as transport:
            results = transport.send(emails)
        assert [r.outcome for r in results] == [Outcome.SENT] * len(ids)
        assert fake.accepted_ids() == dict.fromkeys(ids, 1)
        by_id = {r.delivery_id: r.payload for r in fake.accepted}
        for email in emails:
            assert by_id[email.delivery_id] == build_payload(fill_parts(email))
        assert next(r.status for r in fake.requests) == 400


def test_a_bulk_call_of_a_window_starts_the_sending_process_with_auto() -> None:
    # A bulk call is a few requests of many readers: "auto" counts the readers.
    emails, ids = _window(8)
    with FakeSendGrid(api_key=API_KEY) as fake:
        inner = FastSendGridTransport(API_KEY, base_url=fake.url, window=4, process="auto")
        with BulkSendGridTransport(inner, per_request=4) as transport:
            assert [r.outcome for r in transport.send(emails)] == [Outcome.SENT] * len(ids)
            assert inner._child is not None


class UnfilledMemory(MemoryTransport):
    """The memory transport, declaring that it fills bulk parts: windows come composed."""

    fills_bulk_parts = True

    def __init__(self) -> None:
        super().__init__()
        self.handed: list[Sequence[OutgoingEmail]] = []

    def send(self, emails: Sequence[OutgoingEmail]) -> list[SendResult]:
        self.handed.append(emails)
        return super().send(emails)


def test_send_due_hands_composed_windows_and_drops_who_unsubscribed(engine: Engine) -> None:
    # Window 1 goes out; during it the second reader unsubscribes; window 2, composed, is then
    # not marked 'sending' and is taken out of the composed window (nothing sent to them).
    transport = UnfilledMemory()
    mailer = make_mailer(transport)
    sessions = sessionmaker(engine, expire_on_commit=False)
    ids = [
        subscribe(
            sessions,
            mailer,
            email=f"r{n}@example.com",
            name="山田",
            timezone=None,
            confirmed=True,
            now=NOW + timedelta(seconds=n),
            consent_source="test",
        ).subscriber_id
        for n in range(2)
    ]

    def second_unsubscribes(email: object) -> SendResult:
        with sessions() as session, session.begin():
            store.unsubscribe(session, ids[1], NOW)
        return SendResult("", Outcome.SENT, provider_id="x")

    transport.add_script(second_unsubscribes)
    report = send_due(sessions, mailer, now=NOW + timedelta(minutes=1))
    assert (report.sent, report.skipped) == (1, 1)
    assert [m.to_address for m in transport.attempts] == ["r0@example.com"]
    assert all(isinstance(call, ComposedEmails) for call in transport.handed)
    [sent] = transport.sent
    assert sent.bulk is not None and sent.bulk.values["name"] == "山田"
