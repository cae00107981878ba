"""Shared helpers of the store tests: a course id, a clock, and short forms of the calls."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from drip import store
from drip.models import deliveries

COURSE = "course-a"
T0 = datetime(2026, 4, 1, 0, 0, tzinfo=UTC)
LEASE = timedelta(minutes=15)
LESSONS = ("welcome", "second", "third")


def add(
    session: Session,
    email: str,
    *,
    confirmed: bool = True,
    at: datetime = T0,
    course: str = COURSE,
    now: datetime = T0,
) -> store.AddResult:
    return store.add_subscriber(
        session,
        course_id=course,
        email=email,
        name="名前",
        timezone="Asia/Tokyo",
        now=now,
        consent_source="cli",
        confirmed=confirmed,
        first_lesson=LESSONS[0],
        first_send_at=at,
    )


def claim(
    session: Session, now: datetime = T0, *, limit: int = 100, run_id: str = "run-1"
) -> store.ClaimBatch:
    batch = store.claim_due(
        session, course_id=COURSE, now=now, limit=limit, run_id=run_id, lease=LEASE
    )
    session.commit()
    return batch


def view(session: Session, subscriber_id: int) -> store.SubscriberView:
    found = store.get_subscriber_by_id(session, subscriber_id)
    assert found is not None
    return found


def delivery(session: Session, delivery_id: int) -> dict[str, object]:
    row = (
        session.connection().execute(select(deliveries).where(deliveries.c.id == delivery_id)).one()
    )
    return row._asdict()
