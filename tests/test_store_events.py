"""The store's provider events on SQLite and PostgreSQL."""

from __future__ import annotations

import threading
import time
from datetime import datetime, timedelta

import pytest
from sqlalchemy import Engine, func, select, text
from sqlalchemy.orm import Session, sessionmaker
from tests.store_support import COURSE, LEASE, T0, add, claim, delivery, view

from drip import store
from drip.models import DeliveryOutcome, SubscriberStatus, events


def test_add_event_is_idempotent_per_provider_event(session: Session) -> None:
    args = {
        "provider": "sendgrid",
        "type": "delivered",
        "occurred_at": T0,
        "received_at": T0 + timedelta(seconds=3),
        "payload": {"event": "delivered", "メモ": "日本語"},
    }
    first = store.add_event(session, provider_event_id="ev-1", **args)  # type: ignore[arg-type]
    again = store.add_event(session, provider_event_id="ev-1", **args)  # type: ignore[arg-type]
    other_provider = store.add_event(
        session,
        **{**args, "provider": "smtp"},
        provider_event_id="ev-1",  # type: ignore[arg-type]
    )
    anonymous = [
        store.add_event(session, provider_event_id=None, **args)  # type: ignore[arg-type]
        for _ in range(2)
    ]
    session.commit()
    assert first is not None and again is None and other_provider is not None
    assert None not in anonymous and len(set(anonymous)) == 2
    payload = (
        session.connection()
        .execute(text("SELECT COUNT(*) FROM events WHERE provider_event_id = 'ev-1'"))
        .scalar_one()
    )
    assert payload == 2


# --- batches (the webhook) --------------------------------------------------------------------


def _in_doubt(session: Session, email: str, now: datetime = T0) -> tuple[int, int]:
    """A subscriber whose first lesson is in doubt: (subscriber id, delivery id)."""
    subscriber = add(session, email, at=now).subscriber_id
    session.commit()
    [claimed] = [c for c in claim(session, now, run_id=f"run-{email}").claims]
    assert store.mark_sending(session, [claimed.delivery_id], now) == [claimed.delivery_id]
    store.record_in_doubt(session, [(claimed.delivery_id, "timeout")], now=now)
    session.commit()
    return subscriber, claimed.delivery_id


def _event_rows(session: Session) -> list[dict[str, object]]:
    rows = session.connection().execute(select(events).order_by(events.c.id))
    return [row._asdict() for row in rows]


def test_add_events_stores_a_batch_once_and_links_only_known_deliveries(session: Session) -> None:
    subscriber, delivery_id = _in_doubt(session, "a@example.com")
    batch = [
        store.NewEvent("e1", "processed", T0, {"event": "processed", "名": "日本"}, delivery_id),
        store.NewEvent("e2", "delivered", T0, {"event": "delivered"}, 999_999),
        store.NewEvent(None, "open", T0, {"event": "open"}),
        store.NewEvent("e\x00" + "x" * 10, "click", T0, {}, None),
    ]
    first = store.add_events(session, "sendgrid", batch, received_at=T0 + timedelta(seconds=5))
    session.commit()
    assert first == 4
    again = store.add_events(session, "sendgrid", batch, received_at=T0 + timedelta(minutes=1))
    session.commit()
    assert again == 1  # only the anonymous one: it cannot be told apart
    rows = _event_rows(session)
    assert len(rows) == 5
    assert (rows[0]["delivery_id"], rows[0]["subscriber_id"]) == (delivery_id, subscriber)
    assert rows[0]["payload"] == {"event": "processed", "名": "日本"}
    assert (rows[1]["delivery_id"], rows[1]["subscriber_id"]) == (None, None)
    assert rows[3]["provider_event_id"] == "e" + "x" * 10  # no NUL: PostgreSQL refuses them
    assert rows[0]["received_at"] == T0 + timedelta(seconds=5)
    assert store.add_events(session, "sendgrid", [], received_at=T0) == 0


def test_a_large_batch_is_one_insert_and_every_row_arrives(session: Session) -> None:
    batch = [
        store.NewEvent(f"big-{i}", "delivered", T0, {"event": "delivered", "i": i}, i + 1)
        for i in range(6_000)
    ]
    stored = store.add_events(session, "sendgrid", batch, received_at=T0)
    session.commit()
    assert stored == 6_000
    count = session.connection().execute(select(func.count()).select_from(events)).scalar_one()
    assert count == 6_000


def test_suppress_addresses_keeps_the_first_suppression_but_a_complaint_wins(
    session: Session,
) -> None:
    ids = {
        email: add(session, email).subscriber_id
        for email in ("u@example.com", "b@example.com", "c@example.com", "p@example.com")
    }
    other_course = add(session, "u@example.com", course="course-b").subscriber_id
    pending = add(session, "pending@example.com", confirmed=False).subscriber_id
    session.commit()
    changed = store.suppress_addresses(
        session,
        [
            ("U@Example.com", SubscriberStatus.UNSUBSCRIBED),
            ("u@example.com", SubscriberStatus.BOUNCED),  # the first one stays
            ("b@example.com", SubscriberStatus.BOUNCED),
            ("c@example.com", SubscriberStatus.UNSUBSCRIBED),
            ("c@example.com", SubscriberStatus.COMPLAINED),  # a complaint wins
            ("pending@example.com", SubscriberStatus.BOUNCED),
            ("nobody@example.com", SubscriberStatus.COMPLAINED),
        ],
        T0 + timedelta(hours=1),
    )
    session.commit()
    assert changed == 5
    status = {email: view(session, sid).status for email, sid in ids.items()}
    assert status == {
        "u@example.com": SubscriberStatus.UNSUBSCRIBED,
        "b@example.com": SubscriberStatus.BOUNCED,
        "c@example.com": SubscriberStatus.COMPLAINED,
        "p@example.com": SubscriberStatus.ACTIVE,
    }
    assert view(session, other_course).status is SubscriberStatus.UNSUBSCRIBED
    assert view(session, pending).status is SubscriberStatus.BOUNCED
    bounced = view(session, ids["b@example.com"])
    assert bounced.next_send_at is None and bounced.status_changed_at == T0 + timedelta(hours=1)
    # Later: a bounce does not override the unsubscribe; a complaint overrides anything once.
    later = T0 + timedelta(hours=2)
    assert store.suppress_addresses(session, [("u@example.com", "bounced")], later) == 0  # type: ignore[list-item]
    assert store.suppress_addresses(session, [("b@example.com", "complained")], later) == 1  # type: ignore[list-item]
    assert store.suppress_addresses(session, [("b@example.com", "complained")], later) == 0  # type: ignore[list-item]
    assert store.suppress_addresses(session, [], later) == 0
    with pytest.raises(ValueError, match="not a suppression"):
        store.suppress_addresses(session, [("b@example.com", SubscriberStatus.ACTIVE)], later)


def test_a_suppression_lands_on_a_claimed_reader_before_hand_over(session: Session) -> None:
    """The reader's lesson is claimed by a running send; the bounce arrives; at hand-over the
    claim is given back unsent, and recording cannot undo the bounce."""
    subscriber = add(session, "claimed@example.com").subscriber_id
    session.commit()
    [claimed] = claim(session).claims
    store.suppress_addresses(session, [("claimed@example.com", SubscriberStatus.BOUNCED)], T0)
    session.commit()
    assert store.mark_sending(session, [claimed.delivery_id], T0) == []
    session.commit()
    assert delivery(session, claimed.delivery_id)["status"] == "retry"
    assert view(session, subscriber).status is SubscriberStatus.BOUNCED
    assert claim(session, T0 + timedelta(days=1)).claims == []


def test_in_doubt_evidence_names_the_first_proof_and_the_latest_reported_claim(
    session: Session,
) -> None:
    _, first = _in_doubt(session, "one@example.com", T0)
    _, second = _in_doubt(session, "two@example.com", T0 + timedelta(minutes=1))
    _, other = _in_doubt(session, "three@example.com", T0 + timedelta(minutes=2))
    assert store.latest_reported_claim(session, provider="sendgrid", type="processed") is None
    store.add_events(
        session,
        "sendgrid",
        [
            store.NewEvent("d", "delivered", T0 + timedelta(seconds=9), {}, first),
            store.NewEvent("p", "processed", T0 + timedelta(seconds=1), {}, first),
            store.NewEvent("x", "weird", T0, {}, second),
            store.NewEvent("q", "processed", T0, {}, other),
        ],
        received_at=T0,
    )
    store.add_events(
        session, "smtp", [store.NewEvent("s", "processed", T0, {}, second)], received_at=T0
    )
    found = store.in_doubt_evidence(
        session, COURSE, provider="sendgrid", proof_types={"processed", "delivered"}
    )
    assert [(row.delivery_id, row.proof) for row in found] == [
        (first, "processed"),
        (second, None),
        (other, "processed"),
    ]
    assert found[0].lease_until == T0 + LEASE and found[0].email == "one@example.com"
    only = store.in_doubt_evidence(
        session,
        COURSE,
        provider="sendgrid",
        proof_types={"processed"},
        delivery_ids=[second, 12345],
    )
    assert [row.delivery_id for row in only] == [second]
    assert (
        store.in_doubt_evidence(session, "course-b", provider="sendgrid", proof_types={"processed"})
        == []
    )
    latest = store.latest_reported_claim(session, provider="sendgrid", type="processed")
    assert latest == T0 + timedelta(minutes=2)
    session.commit()


def _flags(session: Session, delivery_id: int) -> int:
    return int(delivery(session, delivery_id)["event_flags"])  # type: ignore[call-overload]


def test_events_set_their_outcome_bits_on_the_delivery_once(session: Session) -> None:
    _, first = _in_doubt(session, "one@example.com")
    _, second = _in_doubt(session, "two@example.com")
    opened, clicked = DeliveryOutcome.OPENED, DeliveryOutcome.CLICKED
    batch = [
        store.NewEvent("1", "open", T0, {}, first, opened),
        store.NewEvent("2", "open", T0, {}, first, opened),
        store.NewEvent("3", "open", T0, {}, second, opened),
        store.NewEvent("4", "click", T0, {}, second, clicked),
        store.NewEvent("5", "open", T0, {}, None, opened),
        store.NewEvent("6", "open", T0, {}, 999_999, opened),  # no such delivery: ignored
        store.NewEvent("7", "processed", T0, {}, first),
    ]
    assert store.add_events(session, "sendgrid", batch, received_at=T0) == 7
    session.commit()
    assert (_flags(session, first), _flags(session, second)) == (opened, opened | clicked)
    # Redelivered: nothing new; a bounce adds its bit and keeps the others.
    assert store.add_events(session, "sendgrid", batch, received_at=T0) == 0
    bounced = DeliveryOutcome.BOUNCED
    store.add_events(
        session, "sendgrid", [store.NewEvent("8", "bounce", T0, {}, first, bounced)], received_at=T0
    )
    session.commit()
    assert _flags(session, first) == opened | bounced
    assert _flags(session, second) == opened | clicked
    # The single-event form sets the bit too.
    store.add_event(
        session,
        provider="sendgrid",
        provider_event_id="9",
        type="delivered",
        occurred_at=T0,
        received_at=T0,
        payload={},
        delivery_id=second,
        outcome=DeliveryOutcome.DELIVERED,
    )
    session.commit()
    assert _flags(session, second) == opened | clicked | DeliveryOutcome.DELIVERED
    store.set_delivery_details(session, [(first, "settled\x00 as sent")])
    session.commit()
    assert delivery(session, first)["detail"] == "settled as sent"


def test_two_identical_batches_at_once_store_each_event_once(engine: Engine) -> None:
    """SendGrid may post the same batch twice at once (a retry racing a slow answer): the
    second INSERT waits for the first transaction's unique entries and skips them; each event
    is stored once, and its outcome bits are set once."""
    sessions = sessionmaker(engine)
    with sessions() as session:
        _, delivery_id = _in_doubt(session, "a@example.com")
    batch = [
        store.NewEvent(f"race-{i}", "delivered", T0, {"i": i}, delivery_id, 1) for i in range(300)
    ]
    first_inserted = threading.Event()
    stored: dict[str, int] = {}
    failures: list[BaseException] = []

    def post(name: str) -> None:
        try:
            with sessions() as session, session.begin():
                if name == "second":
                    assert first_inserted.wait(10)
                stored[name] = store.add_events(session, "sendgrid", batch, received_at=T0)
                if name == "first":
                    first_inserted.set()
                    time.sleep(0.3)  # the second one is now waiting on these rows
        except BaseException as exc:  # reported below
            failures.append(exc)

    threads = [threading.Thread(target=post, args=(name,)) for name in ("first", "second")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    assert not failures, failures
    assert stored == {"first": 300, "second": 0}
    with engine.connect() as conn:
        assert conn.execute(select(func.count()).select_from(events)).scalar_one() == 300
        flags = conn.execute(text("SELECT event_flags FROM deliveries")).scalar_one()
        assert flags == DeliveryOutcome.DELIVERED.value
