"""Read-only counts and listings for dry runs and the operator."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime
from typing import Any

from sqlalchemy import Select, func, select
from sqlalchemy.orm import Session

from drip.statuses import DeliveryStatus, SubscriberStatus
from drip.store._sql import D, S, connection, due_filter
from drip.store.subscribers import held_condition, reader_select, subscriber_view
from drip.store.values import DeliveryView, SubscriberView


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


def list_in_doubt(session: Session, course_id: str) -> list[DeliveryView]:
    """The in-doubt deliveries of `course_id`, oldest first, for the operator to resolve."""
    return list_deliveries(session, course_id, DeliveryStatus.IN_DOUBT)


def list_deliveries(session: Session, course_id: str, status: DeliveryStatus) -> list[DeliveryView]:
    """The deliveries of `course_id` in `status`, oldest first (in doubt, failed: few)."""
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
        .where(D.c.course_id == course_id, D.c.status == status.value)
        .order_by(D.c.id)
    )
    return [DeliveryView(**row._asdict()) for row in connection(session).execute(stmt)]


def list_subscribers(
    session: Session,
    course_id: str,
    *,
    status: SubscriberStatus | None = None,
    held: bool = False,
    lesson: str | None = None,
) -> Iterator[SubscriberView]:
    """The subscribers of `course_id` in id order, streamed (constant memory at any size).

    `status` keeps one status; `held` keeps only the held ones (waiting on the operator,
    `held_reason` says why: see `store.subscribers.held_condition`); `lesson` only those whose
    next lesson is that slug.
    """
    stmt: Select[Any] = reader_select().where(S.c.course_id == course_id).order_by(S.c.id)
    if status is not None:
        stmt = stmt.where(S.c.status == status.value)
    if lesson is not None:
        stmt = stmt.where(S.c.next_lesson == lesson)
    if held:
        stmt = stmt.where(held_condition())
    result = connection(session).execution_options(yield_per=1000).execute(stmt)
    for row in result:
        yield subscriber_view(row)


def lessons_sent(session: Session, subscriber_id: int) -> dict[str, datetime]:
    """The lessons the ledger has as sent to one subscriber: slug -> when."""
    stmt = select(D.c.lesson, D.c.sent_at).where(
        D.c.subscriber_id == subscriber_id,
        D.c.status == DeliveryStatus.SENT.value,
        D.c.sent_at.is_not(None),
    )
    return {lesson: sent_at for lesson, sent_at in connection(session).execute(stmt)}
