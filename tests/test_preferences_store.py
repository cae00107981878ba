"""`drip.store.preferences` on a real SQLite file and a real PostgreSQL: ending timed pauses in
batches, a reader's schedule, and the ledger rows the manage page shows."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import update
from sqlalchemy.orm import Session
from tests.store_support import COURSE, T0, add, claim, view

from drip import store
from drip.errors import UnknownTimezoneError
from drip.models import subscribers
from drip.store.preferences import PAUSE_BATCH


def test_ended_pauses_resume_in_batches_and_the_others_wait(session: Session) -> None:
    ids = [add(session, f"r{i}@example.com").subscriber_id for i in range(PAUSE_BATCH + 5)]
    later = add(session, "later@example.com").subscriber_id
    forever = add(session, "forever@example.com").subscriber_id
    for sid in ids:
        store.pause(session, sid, T0, until=T0 + timedelta(days=7))
    store.pause(session, later, T0, until=T0 + timedelta(days=30))
    store.pause(session, forever, T0)
    session.commit()
    asked: list[store.PausedReader] = []

    def resume_at(reader: store.PausedReader) -> datetime:
        asked.append(reader)
        return reader.paused_until + timedelta(hours=1)

    assert store.resume_ended_pauses(session, COURSE, T0 + timedelta(days=6), resume_at) == 0
    resumed = store.resume_ended_pauses(session, COURSE, T0 + timedelta(days=8), resume_at)
    session.commit()
    assert resumed == len(ids) == len(asked)
    sample = view(session, ids[-1])
    assert sample.status is store.SubscriberStatus.ACTIVE
    assert sample.next_send_at == T0 + timedelta(days=7, hours=1)
    assert sample.paused_until is None and sample.paused_at is None
    assert view(session, later).status is store.SubscriberStatus.PAUSED
    assert view(session, forever).status is store.SubscriberStatus.PAUSED
    assert store.resume_ended_pauses(session, COURSE, T0 + timedelta(days=8), resume_at) == 0


def test_an_unknown_zone_is_resumed_held_with_the_reason(session: Session) -> None:
    sid = add(session, "zone@example.com").subscriber_id
    store.pause(session, sid, T0, until=T0 + timedelta(days=1))
    session.connection().execute(
        update(subscribers).where(subscribers.c.id == sid).values(timezone="Nowhere/Gone")
    )
    session.commit()

    def resume_at(reader: store.PausedReader) -> datetime:
        raise UnknownTimezoneError(reader.timezone)

    assert store.resume_ended_pauses(session, COURSE, T0 + timedelta(days=2), resume_at) == 1
    session.commit()
    held = view(session, sid)
    assert held.is_held and held.held_reason is not None and "Nowhere/Gone" in held.held_reason


def test_set_schedule_reschedules_only_a_lesson_not_in_the_ledger(session: Session) -> None:
    waiting = add(session, "wait@example.com", at=T0 + timedelta(days=1)).subscriber_id
    claimed = add(session, "claimed@example.com").subscriber_id
    session.commit()
    claim(session)  # claimed's welcome is now in the ledger
    moved = T0 + timedelta(days=1, hours=5)
    calls: list[int] = []

    def moment(row: object) -> datetime:
        calls.append(row.id)  # type: ignore[attr-defined]
        return moved

    assert store.set_schedule(
        session, waiting, timezone="Europe/London", send_time="12:00", next_send_at=moment
    )
    assert not store.set_schedule(
        session, claimed, timezone="Europe/London", send_time=None, next_send_at=moment
    )
    session.commit()
    first = view(session, waiting)
    assert (first.timezone, first.send_time, first.next_send_at) == (
        "Europe/London",
        "12:00",
        moved,
    )
    second = view(session, claimed)
    assert second.timezone == "Europe/London" and second.next_send_at != moved


def test_set_schedule_of_a_paused_reader_only_stores_the_values(session: Session) -> None:
    sid = add(session, "p@example.com").subscriber_id
    store.pause(session, sid, T0)
    session.commit()

    def moment(row: object) -> datetime:
        raise AssertionError("a paused reader has nothing to reschedule")

    assert not store.set_schedule(
        session, sid, timezone="Asia/Tokyo", send_time="08:00", next_send_at=moment
    )
    session.commit()
    assert view(session, sid).send_time == "08:00"


def test_reader_deliveries_lists_the_ledger_of_one_reader(session: Session) -> None:
    mine = add(session, "me@example.com").subscriber_id
    add(session, "other@example.com")
    session.commit()
    claim(session)
    rows = store.reader_deliveries(session, mine)
    assert [(r.lesson, r.status) for r in rows] == [("welcome", store.DeliveryStatus.CLAIMED)]
    assert store.reader_deliveries(session, 123_456) == []
