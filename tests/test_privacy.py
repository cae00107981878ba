"""GDPR export and erase and the hashed suppression list (`drip.store.privacy`), on a real SQLite
file and a real PostgreSQL; and the import and subscribe paths refusing an erased address."""

from __future__ import annotations

import hashlib
import json
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from tests.store_support import COURSE, T0, add, claim

from drip import store
from drip.addresses import normalize_email
from drip.importer import ERASED_REASON, import_subscribers
from drip.models import deliveries, events, subscribers, suppressions


def count(session: Session, table: object) -> int:
    return int(session.connection().execute(select(func.count()).select_from(table)).scalar_one())


def sent_welcome(session: Session, email: str, course: str = COURSE) -> int:
    sid = add(session, email, course=course).subscriber_id
    session.commit()
    return sid


def record_event(
    session: Session,
    *,
    subscriber_id: int | None,
    delivery_id: int | None,
    email: str,
    kind: str = "delivered",
    event_id: str | None = None,
) -> None:
    store.add_event(
        session,
        provider="sendgrid",
        provider_event_id=event_id,
        type=kind,
        occurred_at=T0,
        received_at=T0,
        payload={"email": email, "event": kind},
        delivery_id=delivery_id,
        subscriber_id=subscriber_id,
    )


def test_the_hash_is_sha256_of_the_normalised_address() -> None:
    expected = hashlib.sha256(b"taro@example.com").hexdigest()
    assert store.email_hash("taro@example.com") == expected
    assert store.email_hash("  Taro@Example.COM ") == expected
    assert store.email_hash("ｔａｒｏ＠example.com") == expected  # full-width, as the IME types


def test_erase_deletes_every_trace_and_keeps_only_the_hash(session: Session) -> None:
    sid = sent_welcome(session, "erase@example.com")
    other_course = add(session, "erase@example.com", course="course-b").subscriber_id
    keep = add(session, "keep@example.com").subscriber_id
    session.commit()
    batch = claim(session)
    by_subscriber = {c.subscriber_id: c.delivery_id for c in batch.claims}
    record_event(
        session, subscriber_id=sid, delivery_id=by_subscriber[sid], email="erase@example.com"
    )
    record_event(session, subscriber_id=None, delivery_id=by_subscriber[sid], email="x@x")
    record_event(
        session, subscriber_id=None, delivery_id=None, email="ERASE@example.com", kind="bounce"
    )
    record_event(
        session, subscriber_id=keep, delivery_id=by_subscriber[keep], email="keep@example.com"
    )
    session.commit()

    assert store.erase_subscriber(session, sid, T0 + timedelta(days=1))
    session.commit()
    conn = session.connection()
    emails = conn.execute(select(subscribers.c.email)).scalars().all()
    assert emails == ["keep@example.com"]
    assert store.get_subscriber_by_id(session, other_course) is None
    left = conn.execute(select(deliveries.c.subscriber_id)).scalars().all()
    assert left == [keep]
    payloads = conn.execute(select(events.c.payload)).scalars().all()
    assert [p["email"] for p in payloads] == ["keep@example.com"]
    hashes = conn.execute(select(suppressions.c.email_hash, suppressions.c.reason)).all()
    assert [tuple(h) for h in hashes] == [(store.email_hash("erase@example.com"), "erased")]
    assert store.is_suppressed(session, "Erase@Example.com")
    assert not store.is_suppressed(session, "keep@example.com")


def test_erase_is_idempotent(session: Session) -> None:
    sid = sent_welcome(session, "twice@example.com")
    assert store.erase_subscriber(session, sid, T0)
    session.commit()
    assert not store.erase_subscriber(session, sid, T0 + timedelta(hours=1))
    session.commit()
    assert count(session, suppressions) == 1


def test_an_erased_address_is_never_subscribed_again(session: Session) -> None:
    sid = sent_welcome(session, "gone@example.com")
    store.erase_subscriber(session, sid, T0)
    session.commit()
    with pytest.raises(store.SuppressedAddressError, match="erased"):
        add(session, "GONE@example.com", course="course-b")
    session.rollback()
    assert count(session, subscribers) == 0


def test_suppressed_emails_finds_the_erased_among_many(session: Session) -> None:
    store.erase_subscriber(session, sent_welcome(session, "a@example.com"), T0)
    session.commit()
    many = [f"n{i}@example.com" for i in range(6_000)] + ["a@example.com"]
    assert store.suppressed_emails(session, many) == {"a@example.com"}
    assert store.suppressed_emails(session, []) == set()


def test_provider_events_about_an_erased_address_are_not_stored(session: Session) -> None:
    # Typed full-width with an international domain: stored, sent to and reported back by the
    # provider in its canonical form, whose plain SHA-256 (computed by the database) must be
    # its email_hash.
    canonical = normalize_email("ｂ＠例え.jp")
    assert canonical == "b@xn--r8jz45g.jp"
    erased = sent_welcome(session, "ｂ＠例え.jp")
    kept = sent_welcome(session, "kept@example.com")
    by_subscriber = {c.subscriber_id: c.delivery_id for c in claim(session).claims}
    session.commit()
    store.erase_subscriber(session, erased, T0)
    session.commit()

    def about(email: str, ref: int | None) -> store.NewEvent:
        return store.NewEvent(None, "open", T0, {"email": email, "event": "open"}, ref)

    batch = [
        about(canonical, by_subscriber[erased]),  # its delivery is gone with it
        about("B@XN--R8JZ45G.JP", None),  # no custom args, upper-cased
        about("kept@example.com", by_subscriber[kept]),
        about("never-erased@example.com", None),
    ]
    assert store.add_events(session, "sendgrid", batch, received_at=T0) == 2
    session.commit()
    payloads = session.connection().execute(select(events.c.payload).order_by(events.c.id))
    assert [p["email"] for p in payloads.scalars()] == [
        "kept@example.com",
        "never-erased@example.com",
    ]


def test_export_holds_everything_stored_about_the_reader(session: Session) -> None:
    sid = sent_welcome(session, "me@example.com")
    add(session, "me@example.com", course="course-b")
    add(session, "other@example.com")
    session.commit()
    batch = claim(session)
    mine = next(c.delivery_id for c in batch.claims if c.subscriber_id == sid)
    record_event(
        session, subscriber_id=sid, delivery_id=mine, email="me@example.com", event_id="e1"
    )
    record_event(
        session, subscriber_id=None, delivery_id=None, email="other@example.com", event_id="e2"
    )
    session.commit()
    document = store.export_subscriber(session, sid)
    assert document is not None
    json.dumps(document)  # JSON-ready as it is
    assert document["email"] == "me@example.com"
    courses = sorted(e["subscriber"]["course_id"] for e in document["enrolments"])
    assert courses == [COURSE, "course-b"]
    mine_enrolment = next(e for e in document["enrolments"] if e["subscriber"]["id"] == sid)
    assert mine_enrolment["subscriber"]["name"] == "名前"
    assert [d["lesson"] for d in mine_enrolment["deliveries"]] == ["welcome"]
    assert [e["provider_event_id"] for e in document["events"]] == ["e1"]
    assert "other@example.com" not in json.dumps(document)
    assert store.export_subscriber(session, 10_000_000) is None


def test_the_import_refuses_an_erased_address_with_the_reason(
    engine: Engine, tmp_path: Path
) -> None:
    with Session(engine) as session:
        store.erase_subscriber(session, sent_welcome(session, "erased@example.com"), T0)
        session.commit()
    path = tmp_path / "list.csv"
    path.write_text("email\nnew@example.com\nＥＲＡＳＥＤ@example.com\n", encoding="utf-8")
    report = import_subscribers(
        sessionmaker(engine),
        path,
        course_id=COURSE,
        default_timezone="Asia/Tokyo",
        first_lesson="welcome",
        now=T0,
        confirmed=False,
    )
    assert report.imported == 1
    assert report.invalid == [(3, ERASED_REASON)]
    with Session(engine) as session:
        assert store.get_subscriber(session, COURSE, "erased@example.com") is None
        assert store.get_subscriber(session, COURSE, "new@example.com") is not None


def test_an_erased_readers_id_is_never_given_to_someone_else(session: Session) -> None:
    """An erased reader's old links carry its id: nobody may inherit it (SQLite: the
    AUTOINCREMENT of migration 0003; PostgreSQL: sequences)."""
    first = sent_welcome(session, "first@example.com")
    erased = sent_welcome(session, "erased@example.com")
    store.erase_subscriber(session, erased, T0)
    session.commit()
    newcomer = sent_welcome(session, "newcomer@example.com")
    assert newcomer not in (first, erased)
