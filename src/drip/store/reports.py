"""Read-only counts and listings for dry runs and the operator."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from drip.statuses import DeliveryStatus
from drip.store._sql import D, S, connection, due_filter
from drip.store.values import InDoubtView


def count_due(session: Session, course_id: str, now: datetime) -> int:
    """How many subscribers of `course_id` are due at `now` (an index probe)."""
    stmt = select(func.count()).select_from(S).where(*due_filter(course_id, now))
    return int(connection(session).execute(stmt).scalar_one())


def due_by_lesson(session: Session, course_id: str, now: datetime) -> dict[str, int]:
    """Due subscribers at `now` counted per next lesson slug (for dry runs)."""
    stmt = (
        select(S.c.next_lesson, func.count())
        .where(*due_filter(course_id, now))
        .group_by(S.c.next_lesson)
    )
    return {
        lesson: int(count)
        for lesson, count in connection(session).execute(stmt)
        if lesson is not None
    }


def delivery_counts(session: Session, course_id: str) -> dict[str, int]:
    """Ledger rows of `course_id` per status; every status is present (0 when none)."""
    counts = {status.value: 0 for status in DeliveryStatus}
    stmt = select(D.c.status, func.count()).where(D.c.course_id == course_id).group_by(D.c.status)
    for status, count in connection(session).execute(stmt):
        counts[status] = int(count)
    return counts


def list_in_doubt(session: Session, course_id: str) -> list[InDoubtView]:
    """The in-doubt deliveries of `course_id`, oldest first, for the operator to resolve."""
    stmt = (
        select(
            D.c.id.label("delivery_id"),
            D.c.subscriber_id,
            S.c.email,
            D.c.lesson,
            D.c.run_id,
            D.c.attempts,
            D.c.claimed_at,
            D.c.lease_until,
            D.c.detail,
            D.c.updated_at,
        )
        .select_from(D.join(S, S.c.id == D.c.subscriber_id))
        .where(D.c.course_id == course_id, D.c.status == DeliveryStatus.IN_DOUBT.value)
        .order_by(D.c.id)
    )
    return [InDoubtView(**row._asdict()) for row in connection(session).execute(stmt)]
