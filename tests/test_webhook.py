"""`POST /webhooks/sendgrid` through the Flask test client, on a real SQLite file and a real
PostgreSQL: signatures, storing and applying events, in-doubt settling (by an event, and by the
auto-settle policy through `send_due`), limits and failures, and a fuzz that never sees a 500."""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from flask import Flask
from flask.testing import FlaskClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker
from tests.support import make_mailer
from tests.web_support import AppFactory, Clock
from tests.webhook_support import Signer, body_of, event

from drip import store
from drip.config import Settings
from drip.db import make_engine
from drip.delivery import LEASE, Mailer, send_due
from drip.lifecycle import in_doubt, subscribe
from drip.models import SubscriberStatus, deliveries, events, subscribers
from drip.settle_policy import GRACE
from drip.store.stats import LessonOutcomes
from drip.transports.base import Outcome
from drip.transports.memory import MemoryTransport
from drip.transports.sendgrid.events import SIGNATURE_HEADER, TIMESTAMP_HEADER
from drip.web.context import EXTENSION, WebContext
from drip.web.webhooks import MAX_BODY_BYTES, PATH, startup_warning

SIGNER = Signer()


@dataclasses.dataclass
class Hook:
    """An app with the webhook configured, its clock, its database, and a memory mailer on the
    same database for sending."""

    app: Flask
    client: FlaskClient
    clock: Clock
    transport: MemoryTransport
    mailer: Mailer

    @property
    def context(self) -> WebContext:
        context = self.app.extensions[EXTENSION]
        assert isinstance(context, WebContext)
        return context

    @property
    def sessions(self) -> sessionmaker[Session]:
        return self.context.sessions

    def post(
        self, body: bytes, *, signer: Signer = SIGNER, at: datetime | None = None, **headers: str
    ) -> Any:
        signed = signer.headers(body, at or self.clock())
        signed.update(headers)
        return self.client.post(PATH, data=body, headers=signed)

    def subscribe(self, email: str, at: datetime | None = None) -> int:
        result = subscribe(
            self.sessions,
            self.mailer,
            email=email,
            name=None,
            timezone=None,
            confirmed=True,
            now=at or self.clock(),
            consent_source="test",
        )
        return result.subscriber_id

    def send(self, at: datetime | None = None) -> Any:
        return send_due(self.sessions, self.mailer, now=at or self.clock())

    def view(self, subscriber_id: int) -> store.SubscriberView:
        with self.sessions() as session:
            found = store.get_subscriber_by_id(session, subscriber_id)
        assert found is not None
        return found

    def delivery_of(self, email: str, lesson: str = "welcome") -> Any:
        """The ledger row of (email, lesson): delivery_id, status, attempts, detail."""
        stmt = (
            select(
                deliveries.c.id.label("delivery_id"),
                deliveries.c.status,
                deliveries.c.attempts,
                deliveries.c.detail,
            )
            .join(subscribers, subscribers.c.id == deliveries.c.subscriber_id)
            .where(subscribers.c.email == email, deliveries.c.lesson == lesson)
        )
        with self.sessions() as session:
            return session.execute(stmt).one()

    def event_count(self) -> int:
        with self.sessions() as session:
            count = session.execute(select(func.count()).select_from(events)).scalar_one()
        return int(count)


@pytest.fixture
def hook(make_app: AppFactory, database_url: str, tmp_path: Path) -> Hook:
    clock = Clock()
    app = make_app(database_url, tmp_path, clock=clock, sendgrid_webhook_key=SIGNER.public_key)
    transport = MemoryTransport()
    context = app.extensions[EXTENSION]
    return Hook(app, app.test_client(), clock, transport, make_mailer(transport, context.course))


# --- verification -----------------------------------------------------------------------------


def test_a_signed_batch_is_stored_and_applied(hook: Hook) -> None:
    emails = ["fine@example.com", "bounce@example.com", "spam@example.com", "unsub@example.com"]
    ids = {email: hook.subscribe(email) for email in emails}
    assert hook.send().sent == 4
    now = hook.clock()
    delivery = {email: hook.delivery_of(email).delivery_id for email in emails}
    items = [
        event(kind, at=now, email=email, delivery_id=delivery[email])
        for email in emails
        for kind in ("processed", "delivered")
    ]
    items += [
        event("open", at=now, email="fine@example.com", delivery_id=delivery["fine@example.com"]),
        event("click", at=now, email="fine@example.com", delivery_id=delivery["fine@example.com"]),
        event("bounce", at=now, email="bounce@example.com", type="bounce", reason="550 no user"),
        event("spamreport", at=now, email="spam@example.com"),
        event("unsubscribe", at=now, email="UNSUB@example.com"),
    ]
    response = hook.post(body_of(*items))
    assert response.status_code == 200
    assert response.get_json() == {
        "received": 13,
        "stored": 13,
        "duplicates": 0,
        "skipped": 0,
        "suppressed": 3,
        "settled_sent": 0,
    }
    status = {email: hook.view(ids[email]).status for email in emails}
    assert status == {
        "fine@example.com": SubscriberStatus.ACTIVE,
        "bounce@example.com": SubscriberStatus.BOUNCED,
        "spam@example.com": SubscriberStatus.COMPLAINED,
        "unsub@example.com": SubscriberStatus.UNSUBSCRIBED,
    }
    with hook.sessions() as session:
        counts = store.lesson_counts(session, hook.context.course.id, None).per_lesson
    # The bounce and the spam report name no delivery (no custom args): counted nowhere.
    assert counts == {"welcome": LessonOutcomes(sent=4, delivered=4, opened=1, clicked=1)}
    assert hook.event_count() == 13


@pytest.mark.parametrize(
    "tamper",
    ["wrong key", "flipped byte", "stale", "future", "no signature", "no timestamp", "bad base64"],
)
def test_requests_that_do_not_verify_are_refused_and_change_nothing(
    hook: Hook, tamper: str, caplog: pytest.LogCaptureFixture
) -> None:
    subscriber = hook.subscribe("victim@example.com")
    body = body_of(event("spamreport", at=hook.clock(), email="victim@example.com"))
    headers = SIGNER.headers(body, hook.clock())
    if tamper == "wrong key":
        headers = Signer().headers(body, hook.clock())
    elif tamper == "flipped byte":
        body = body.replace(b"victim", b"victin")
    elif tamper == "stale":
        headers = SIGNER.headers(body, hook.clock() - timedelta(minutes=5, seconds=1))
    elif tamper == "future":
        headers = SIGNER.headers(body, hook.clock() + timedelta(seconds=61))
    elif tamper == "no signature":
        del headers[SIGNATURE_HEADER]
    elif tamper == "no timestamp":
        del headers[TIMESTAMP_HEADER]
    else:
        headers[SIGNATURE_HEADER] = "not*base64"
    with caplog.at_level(logging.WARNING):
        response = hook.client.post(PATH, data=body, headers=headers)
    assert response.status_code == 403
    assert response.get_json() == {"error": "signature verification failed"}
    assert hook.view(subscriber).status is SubscriberStatus.ACTIVE
    assert hook.event_count() == 0
    logged = caplog.text
    assert "SendGrid webhook refused" in logged and "victim" not in logged
    assert SIGNATURE_HEADER not in headers or headers[SIGNATURE_HEADER] not in logged


def test_the_clock_skew_allowance_is_accepted(hook: Hook) -> None:
    body = body_of(event("open", at=hook.clock()))
    assert hook.post(body, at=hook.clock() + timedelta(seconds=60)).status_code == 200
    assert hook.post(body, at=hook.clock() - timedelta(minutes=5)).status_code == 200


# --- duplicates, order, custom args -----------------------------------------------------------


def test_a_redelivered_batch_is_stored_and_applied_once(hook: Hook) -> None:
    subscriber = hook.subscribe("twice@example.com")
    hook.send()
    delivery_id = hook.delivery_of("twice@example.com").delivery_id
    now = hook.clock()
    body = body_of(
        event("delivered", at=now, email="twice@example.com", delivery_id=delivery_id),
        event("bounce", at=now, email="twice@example.com", delivery_id=delivery_id),
    )
    assert hook.post(body).get_json()["stored"] == 2
    hook.clock.advance(minutes=3)
    again = hook.post(body).get_json()
    assert again == {
        "received": 2,
        "stored": 0,
        "duplicates": 2,
        "skipped": 0,
        "suppressed": 0,
        "settled_sent": 0,
    }
    assert hook.event_count() == 2
    assert hook.view(subscriber).status is SubscriberStatus.BOUNCED


def test_events_out_of_order_end_in_the_same_state(hook: Hook) -> None:
    subscriber = hook.subscribe("late@example.com")
    hook.send()
    delivery_id = hook.delivery_of("late@example.com").delivery_id
    t = hook.clock()
    email = "late@example.com"

    def post(*items: dict[str, Any]) -> None:
        assert hook.post(body_of(*items)).status_code == 200

    # SendGrid's order: processed, delivered, open, unsubscribe, spamreport. Ours: reversed,
    # in three batches, with an earlier bounce arriving last.
    post(
        event("spamreport", at=t + timedelta(minutes=9), email=email, delivery_id=delivery_id),
        event("unsubscribe", at=t + timedelta(minutes=8), email=email, delivery_id=delivery_id),
    )
    assert hook.view(subscriber).status is SubscriberStatus.COMPLAINED
    post(
        event("open", at=t + timedelta(minutes=5), email=email, delivery_id=delivery_id),
        event("delivered", at=t + timedelta(minutes=1), email=email, delivery_id=delivery_id),
    )
    post(
        event("processed", at=t, email=email, delivery_id=delivery_id),
        event("bounce", at=t + timedelta(minutes=2), email=email, delivery_id=delivery_id),
    )
    assert hook.view(subscriber).status is SubscriberStatus.COMPLAINED  # a complaint stays
    assert hook.event_count() == 6
    # Within one batch the oldest suppression is the one kept (unless a complaint).
    other = hook.subscribe("both@example.com")
    post(
        event("bounce", at=t + timedelta(minutes=3), email="both@example.com"),
        event("unsubscribe", at=t + timedelta(minutes=1), email="both@example.com"),
    )
    assert hook.view(other).status is SubscriberStatus.UNSUBSCRIBED


def test_unknown_ids_and_events_without_custom_args_are_stored_and_still_suppress(
    hook: Hook,
) -> None:
    subscriber = hook.subscribe("plain@example.com")
    now = hook.clock()
    response = hook.post(
        body_of(
            event("processed", at=now, email="x@example.com", delivery_id=987654),
            event("processed", at=now, email="x@example.com", delivery_id="confirm-1-1764550800"),
            event("dropped", at=now, email="plain@example.com", reason="Bounced Address"),
        )
    )
    assert response.status_code == 200 and response.get_json()["stored"] == 3
    assert hook.view(subscriber).status is SubscriberStatus.BOUNCED
    with hook.sessions() as session:
        linked = session.execute(select(events.c.delivery_id)).scalars().all()
    assert linked == [None, None, None]
    assert hook.send().sent == 0


def test_items_that_are_not_events_are_skipped_the_rest_applied(
    hook: Hook, caplog: pytest.LogCaptureFixture
) -> None:
    subscriber = hook.subscribe("mixed@example.com")
    body = (
        b'[1, "x", {"no": "event"}, '
        + body_of(event("spamreport", at=hook.clock(), email="mixed@example.com"))[1:]
    )
    with caplog.at_level(logging.WARNING):
        answer = hook.post(body).get_json()
    assert answer["skipped"] == 3 and answer["stored"] == 1
    assert hook.view(subscriber).status is SubscriberStatus.COMPLAINED
    assert "3 items were not events" in caplog.text


@pytest.mark.parametrize("body", [b"not json at all", b'{"event": "bounce"}', b""])
def test_a_signed_body_that_is_not_an_event_array_is_acknowledged_and_logged(
    hook: Hook, body: bytes, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        response = hook.post(body)
    assert response.status_code == 200 and response.get_json() == {"ignored": True}
    assert "signed body ignored" in caplog.text
    assert not body or body.decode() not in caplog.text
    assert hook.event_count() == 0


# --- erased addresses (GDPR) ------------------------------------------------------------------


def stored_addresses(hook: Hook) -> list[str]:
    """The address in every stored event's payload (what an erase must leave none of)."""
    with hook.sessions() as session:
        payloads = session.execute(select(events.c.payload).order_by(events.c.id)).scalars()
        return [payload.get("email") for payload in payloads]


def erase(hook: Hook, subscriber_id: int, now: datetime) -> bool:
    with hook.sessions() as session, session.begin():
        return store.erase_subscriber(session, subscriber_id, now)


def test_events_about_an_erased_address_are_dropped_not_stored(hook: Hook) -> None:
    gone = hook.subscribe("gone@example.com")
    hook.subscribe("stays@example.com")
    hook.send()
    old = hook.delivery_of("gone@example.com").delivery_id
    kept = hook.delivery_of("stays@example.com").delivery_id
    assert erase(hook, gone, hook.clock())
    hook.clock.advance(days=2)  # an open or a click can come days later
    now = hook.clock()
    body = body_of(
        event("open", at=now, email="gone@example.com", delivery_id=old),
        event("click", at=now, email="gone@example.com", delivery_id=old, url="https://x.test"),
        event("bounce", at=now, email="Gone@Example.com"),  # no custom args, another case
        event("delivered", at=now, email="stays@example.com", delivery_id=kept),
    )
    answer = hook.post(body).get_json()
    assert (answer["received"], answer["stored"], answer["duplicates"]) == (4, 1, 3)
    assert stored_addresses(hook) == ["stays@example.com"]
    hook.clock.advance(minutes=5)  # SendGrid redelivers it
    assert hook.post(body).get_json()["stored"] == 0
    assert stored_addresses(hook) == ["stays@example.com"]


def test_a_batch_posted_while_an_erase_is_running_stores_nothing_about_it(hook: Hook) -> None:
    gone = hook.subscribe("racing@example.com")
    hook.send()
    old = hook.delivery_of("racing@example.com").delivery_id
    body = body_of(event("open", at=hook.clock(), email="racing@example.com", delivery_id=old))
    answers: list[Any] = []
    with hook.sessions() as erasing, erasing.begin():
        assert store.erase_subscriber(erasing, gone, hook.clock())
        # The erase has deleted the rows but not committed: a batch posted now must wait for
        # it, and then see the address erased (without the wait it looked before the commit
        # and stored the event, linked to the delivery being deleted).
        poster = threading.Thread(target=lambda: answers.append(hook.post(body).get_json()))
        poster.start()
        poster.join(timeout=0.5)
        assert poster.is_alive(), "the batch did not wait for the erase"
    poster.join(timeout=30)
    assert answers and answers[0]["stored"] == 0
    assert stored_addresses(hook) == []


def test_an_erase_started_while_a_batch_is_being_stored_deletes_its_events(hook: Hook) -> None:
    gone = hook.subscribe("second@example.com")
    hook.send()
    old = hook.delivery_of("second@example.com").delivery_id
    now = hook.clock()
    opened = {"email": "second@example.com", "event": "open"}
    erased: list[bool] = []
    with hook.sessions() as storing, storing.begin():
        batch = [store.NewEvent("ev-race", "open", now, opened, old, 2)]
        assert store.add_events(storing, "sendgrid", batch, received_at=now) == 1
        # The batch has stored its event but not committed: an erase started now must wait
        # for it, or its DELETE would not see the event and the event would stay.
        eraser = threading.Thread(target=lambda: erased.append(erase(hook, gone, now)), daemon=True)
        eraser.start()
        eraser.join(timeout=0.5)
        assert eraser.is_alive(), "the erase did not wait for the batch"
    eraser.join(timeout=30)
    assert erased == [True]
    assert stored_addresses(hook) == []


# --- in doubt ---------------------------------------------------------------------------------


def test_an_in_doubt_delivery_is_settled_as_sent_by_its_processed_event(hook: Hook) -> None:
    hook.transport.add_script(Outcome.IN_DOUBT)
    subscriber = hook.subscribe("doubt@example.com")
    assert hook.send().in_doubt == 1
    doubtful = hook.delivery_of("doubt@example.com")
    assert hook.view(subscriber).is_held
    hook.clock.advance(seconds=30)
    body = body_of(
        event(
            "processed",
            at=hook.clock(),
            email="doubt@example.com",
            delivery_id=doubtful.delivery_id,
        )
    )
    answer = hook.post(body).get_json()
    assert answer["settled_sent"] == 1
    assert in_doubt(hook.sessions, hook.context.course) == []
    settled = hook.delivery_of("doubt@example.com")
    assert settled.status == "sent" and "SendGrid reported 'processed'" in (settled.detail or "")
    reader = hook.view(subscriber)
    assert reader.next_lesson == "rethink" and reader.next_send_at is not None
    assert not reader.is_held
    # Nothing is sent twice: the welcome lesson is never handed over again.
    hook.send(reader.next_send_at)
    sent_lessons = [m.custom_args["drip_lesson"] for m in hook.transport.attempts]
    assert sent_lessons == ["welcome", "rethink"]
    # The same event again settles nothing more.
    assert hook.post(body).get_json()["settled_sent"] == 0


def test_an_event_that_arrives_before_the_delivery_is_in_doubt_settles_it_at_the_next_send(
    hook: Hook,
) -> None:
    """The run is still waiting for SendGrid's answer (or died) when the webhook gets the
    `processed` event: nothing to settle yet; the next `drip send` settles it from the stored
    event before it claims anything."""
    subscriber = hook.subscribe("early@example.com")
    now = hook.clock()
    with hook.sessions() as session, session.begin():
        [claimed] = store.claim_due(
            session,
            course_id=hook.context.course.id,
            now=now,
            limit=10,
            run_id="slow-run",
            lease=LEASE,
        ).claims
        store.mark_sending(session, [claimed.delivery_id], now)
    body = body_of(
        event("delivered", at=now, email="early@example.com", delivery_id=claimed.delivery_id)
    )
    assert hook.post(body).get_json()["settled_sent"] == 0
    with hook.sessions() as session, session.begin():
        store.record_in_doubt(session, [(claimed.delivery_id, "timeout")], now=now)
    report = hook.send(now + timedelta(minutes=1))
    assert report.sent == 0 and hook.transport.attempts == []
    assert hook.delivery_of("early@example.com").status == "sent"
    assert hook.view(subscriber).next_lesson == "rethink"


def test_in_doubt_settles_itself_once_the_webhook_has_reported_later_deliveries(
    hook: Hook,
) -> None:
    """The auto-settle policy end to end through send_due: no event for the in-doubt delivery,
    a `processed` event for one claimed after its lease ended, and a day's grace."""
    t0 = hook.clock()
    hook.transport.add_script(Outcome.IN_DOUBT)
    lost = hook.subscribe("lost@example.com")
    assert hook.send(t0).in_doubt == 1
    lease_end = t0 + LEASE
    # Without any event, nothing settles, however late.
    assert hook.send(t0 + 10 * GRACE).sent == 0
    assert [d.email for d in in_doubt(hook.sessions, hook.context.course)] == ["lost@example.com"]

    # A reader who starts later; SendGrid reports its lesson as processed.
    hook.clock.moment = t0 + timedelta(hours=1)
    hook.subscribe("later@example.com")
    assert hook.send().sent == 1
    later = hook.delivery_of("later@example.com")
    hook.post(
        body_of(
            event(
                "processed",
                at=hook.clock(),
                email="later@example.com",
                delivery_id=later.delivery_id,
            )
        )
    )

    def to_lost() -> list[str]:
        attempts = hook.transport.attempts
        return [
            m.custom_args["drip_lesson"] for m in attempts if m.to_address == "lost@example.com"
        ]

    hook.send(lease_end + GRACE - timedelta(seconds=1))
    assert to_lost() == ["welcome"]
    assert hook.delivery_of("lost@example.com").status == "in_doubt"

    report = hook.send(lease_end + GRACE)
    assert to_lost() == ["welcome", "welcome"]
    assert report.per_lesson["welcome"]["sent"] == 1
    settled = hook.delivery_of("lost@example.com")
    assert settled.status == "sent" and settled.attempts == 2
    assert in_doubt(hook.sessions, hook.context.course) == []
    assert hook.view(lost).next_lesson == "rethink"


def test_the_operator_can_still_settle_by_hand(hook: Hook) -> None:
    from drip.lifecycle import resolve

    hook.transport.add_script(Outcome.IN_DOUBT)
    hook.subscribe("hand@example.com")
    hook.send()
    doubtful = hook.delivery_of("hand@example.com")
    said = resolve(
        hook.sessions, hook.context.course, doubtful.delivery_id, sent=True, now=hook.clock()
    )
    assert "recorded as sent" in said
    body = body_of(
        event(
            "processed", at=hook.clock(), email="hand@example.com", delivery_id=doubtful.delivery_id
        )
    )
    assert hook.post(body).get_json()["settled_sent"] == 0


# --- suppression wins over sends --------------------------------------------------------------


@pytest.mark.parametrize("kind", ["bounce", "spamreport", "unsubscribe", "group_unsubscribe"])
def test_a_suppressing_event_stops_every_later_send_at_once(hook: Hook, kind: str) -> None:
    gone = hook.subscribe("gone@example.com")
    hook.subscribe("stays@example.com")
    assert (
        hook.post(body_of(event(kind, at=hook.clock(), email="gone@example.com"))).status_code
        == 200
    )
    assert hook.view(gone).status in {
        SubscriberStatus.BOUNCED,
        SubscriberStatus.COMPLAINED,
        SubscriberStatus.UNSUBSCRIBED,
    }
    report = hook.send()
    assert report.sent == 1
    assert [m.to_address for m in hook.transport.attempts] == ["stays@example.com"]
    assert hook.send(hook.clock() + timedelta(days=30)).sent >= 1
    assert "gone@example.com" not in {m.to_address for m in hook.transport.attempts}


# --- limits, configuration, failures ----------------------------------------------------------


def test_bodies_over_five_megabytes_are_refused_and_up_to_it_taken(hook: Hook) -> None:
    assert MAX_BODY_BYTES == 5 * 1024 * 1024
    item = event("open", at=hook.clock(), useragent="x" * 1000)
    small = body_of(*[{**item, "sg_event_id": f"big-{i}"} for i in range(2000)])  # about 2.4 MB
    assert 1024 * 1024 < len(small) < MAX_BODY_BYTES
    assert hook.post(small).status_code == 200
    too_big = b"[" + b" " * MAX_BODY_BYTES + b"]"
    response = hook.post(too_big)
    assert response.status_code == 413


def test_without_a_key_the_endpoint_answers_503_and_serve_can_warn(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    app = make_app(database_url, tmp_path)
    body = body_of(event("bounce", at=Clock()()))
    response = app.test_client().post(PATH, data=body, headers=SIGNER.headers(body, Clock()()))
    assert response.status_code == 503
    context = app.extensions[EXTENSION]
    warning = startup_warning(context.settings)
    assert warning is not None and "DRIP_SENDGRID_WEBHOOK_KEY is not set" in warning
    bad: Settings = dataclasses.replace(context.settings, sendgrid_webhook_key="bm90IGEga2V5")
    warning = startup_warning(bad)
    assert warning is not None and "not a base64 public key" in warning
    assert "bm90IGEga2V5" not in warning
    good = dataclasses.replace(context.settings, sendgrid_webhook_key=SIGNER.public_key)
    assert startup_warning(good) is None


def test_a_key_that_is_not_a_public_key_answers_503(
    make_app: AppFactory, database_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = make_app(database_url, tmp_path, sendgrid_webhook_key="bm90IGEga2V5")
    body = b"[]"
    with caplog.at_level(logging.ERROR):
        response = app.test_client().post(PATH, data=body, headers=SIGNER.headers(body, Clock()()))
    assert response.status_code == 503
    assert "bm90IGEga2V5" not in caplog.text


@pytest.fixture
def dead_sessions() -> Iterator[sessionmaker[Session]]:
    engine = make_engine("postgresql+psycopg://nobody@127.0.0.1:9/nowhere?connect_timeout=2")
    yield sessionmaker(engine)
    engine.dispose()


def test_a_database_failure_answers_503_and_the_redelivery_is_stored(
    hook: Hook, dead_sessions: sessionmaker[Session], caplog: pytest.LogCaptureFixture
) -> None:
    subscriber = hook.subscribe("retry@example.com")
    body = body_of(event("spamreport", at=hook.clock(), email="retry@example.com"))
    working = hook.context
    hook.app.extensions[EXTENSION] = dataclasses.replace(working, sessions=dead_sessions)
    with caplog.at_level(logging.ERROR):
        response = hook.post(body)
    assert response.status_code == 503
    assert "the database failed" in caplog.text and "retry@example.com" not in caplog.text
    hook.app.extensions[EXTENSION] = working
    hook.clock.advance(minutes=10)  # SendGrid posts it again, signed afresh
    assert hook.post(body).status_code == 200
    assert hook.view(subscriber).status is SubscriberStatus.COMPLAINED


def test_no_csrf_token_is_asked_and_no_rate_limit_applies(
    make_app: AppFactory, database_url: str, tmp_path: Path
) -> None:
    clock = Clock()
    app = make_app(database_url, tmp_path, clock=clock, sendgrid_webhook_key=SIGNER.public_key)
    app.config["TESTING"] = False  # CSRF and limits as in production
    app.config["WTF_CSRF_ENABLED"] = True
    client = app.test_client()
    body = body_of(event("open", at=clock()))
    for _ in range(3):
        assert (
            client.post(PATH, data=body, headers=SIGNER.headers(body, clock())).status_code == 200
        )


# --- fuzz -------------------------------------------------------------------------------------

_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=40)
_scalar = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    _text,
    st.sampled_from(["bounce", "processed", "spamreport", "unsubscribe", "1", "0", "\u0000"]),
)
_value = st.recursive(
    _scalar, lambda inner: st.lists(inner, max_size=3) | st.dictionaries(_text, inner, max_size=3)
)
_keys = st.sampled_from(
    ["event", "email", "timestamp", "sg_event_id", "drip_delivery_id", "type", "reason", "x\u0000"]
)
_event = st.dictionaries(_keys | _text, _value, max_size=8)
_body = st.one_of(
    st.binary(max_size=300),
    st.lists(st.one_of(_event, _value), max_size=6).map(lambda items: body_of(*items)),  # type: ignore[arg-type]
)


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    body=_body,
    sign=st.sampled_from(["good", "none", "junk"]),
    signature=st.text(max_size=120),
    timestamp=st.text(max_size=20),
)
def test_the_endpoint_never_answers_500(
    hook: Hook, body: bytes, sign: str, signature: str, timestamp: str
) -> None:
    if sign == "good":
        headers = SIGNER.headers(body, hook.clock())
    elif sign == "none":
        headers = {}
    else:
        headers = {SIGNATURE_HEADER: signature, TIMESTAMP_HEADER: timestamp}
    try:
        response = hook.client.post(PATH, data=body, headers=headers)
    except ValueError:
        return  # the test client refuses header values with line breaks; so would any server
    assert response.status_code in {200, 403}, response.get_data()
    if sign == "good":
        assert response.status_code == 200
