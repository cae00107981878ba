"""The queries of `drip course check` (the readers section) and `drip course apply`: readers with
a next lesson, read a batch at a time in address order, and compare-and-set updates of their
progress.

Nothing here decides anything: `drip.reschedule` asks `drip.schedule` what each reader's next
lesson and moment are under the course on disk, and hands the changes back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import Boolean, and_, bindparam, case, func, null, or_, select, update
from sqlalchemy.orm import Session

from drip.statuses import DeliveryStatus, SubscriberStatus
from drip.store._sql import ACTIVE, D, S, connection
from drip.store.capabilities import capabilities_of
from drip.store.ledger import sent_lessons

PAUSED = SubscriberStatus.PAUSED.value
UNTOUCHABLE = (
    DeliveryStatus.CLAIMED.value,
    DeliveryStatus.SENDING.value,
    DeliveryStatus.IN_DOUBT.value,
)
"""Ledger states of a next lesson that `apply_changes` never moves a reader away from: a claim in
flight (a `drip send` has it) or a delivery that may have gone out (the operator settles it)."""


@dataclass(frozen=True, slots=True)
class ReaderProgress:
    """A reader with a next lesson (active or paused), its ledger row of that lesson, and the
    lessons the ledger has as sent to it."""

    id: int
    email: str
    status: str
    timezone: str
    next_lesson: str
    next_send_at: datetime | None
    last_sent_at: datetime | None
    confirmed_at: datetime | None
    send_time: str | None
    held_reason: str | None
    ledger_status: str | None
    """The ledger row of (reader, next_lesson): None when there is none yet."""
    sent: frozenset[str]


@dataclass(frozen=True, slots=True)
class ProgressChange:
    """A reader's new progress. `before_*` are the values it was read with: the update applies
    only if they still hold (another process may have moved the reader since)."""

    id: int
    before_lesson: str
    before_send_at: datetime | None
    next_lesson: str | None
    next_send_at: datetime | None
    completed: bool = False
    """The reader had every lesson that is left: 'completed' (active readers only)."""


def readers_after(
    session: Session, course_id: str, after_email: str, limit: int, *, lock: bool
) -> list[ReaderProgress]:
    """Up to `limit` readers of `course_id` whose address sorts after `after_email` (in address
    order), active or paused, that have a next lesson. With `lock` (PostgreSQL) the rows are
    locked for the transaction and rows a `drip send` is claiming right now are skipped (they
    are in flight).

    Address order, not id order: the unique (course_id, email) index walks it, so each batch is
    an index range scan on both databases (ordering by id made SQLite sort the whole course
    once per batch)."""
    conn = connection(session)
    joined = S.outerjoin(D, and_(D.c.subscriber_id == S.c.id, D.c.lesson == S.c.next_lesson))
    stmt = (
        select(
            S.c.id,
            S.c.email,
            S.c.status,
            S.c.timezone,
            S.c.next_lesson,
            S.c.next_send_at,
            S.c.last_sent_at,
            S.c.confirmed_at,
            S.c.send_time,
            S.c.held_reason,
            D.c.status.label("ledger_status"),
        )
        .select_from(joined)
        .where(
            S.c.course_id == course_id,
            S.c.email > after_email,
            S.c.status.in_([ACTIVE, PAUSED]),
            S.c.next_lesson.is_not(None),
        )
        .order_by(S.c.email)
        .limit(limit)
    )
    if lock and capabilities_of(conn.dialect).skip_locked:
        stmt = stmt.with_for_update(skip_locked=True, of=S)
    rows = list(conn.execute(stmt))
    sent = sent_lessons(conn, [row.id for row in rows])
    return [ReaderProgress(*row, sent=sent.get(row.id, frozenset())) for row in rows]


def apply_changes(session: Session, changes: Sequence[ProgressChange], now: datetime) -> int:
    """Write `changes` (one executemany). Returns how many readers were changed.

    A change applies only while the reader is still active or paused with the next lesson and
    moment it was read with, and the ledger row of that lesson is not a claim in flight or in
    doubt: a `drip send` that claimed the reader meanwhile wins, and the reader is left alone.
    An active reader gets its new moment and loses its hold reason (a removed lesson held it);
    a paused one only its next lesson (its moment comes on resume); `completed` readers end.
    """
    if not changes:
        return 0
    # No IN (...) below: an expanding list cannot be part of an executemany.
    untouchable = or_(*(D.c.status == status for status in UNTOUCHABLE))
    in_ledger = (
        select(D.c.id)
        .where(D.c.subscriber_id == S.c.id, D.c.lesson == S.c.next_lesson, untouchable)
        .exists()
    )
    at_type = S.c.next_send_at.type
    is_active = S.c.status == ACTIVE
    completes = and_(is_active, bindparam("b_completed", type_=Boolean()))
    stmt = (
        update(S)
        .where(
            S.c.id == bindparam("b_id"),
            or_(is_active, S.c.status == PAUSED),
            S.c.next_lesson == bindparam("b_before_lesson"),
            S.c.next_send_at.is_not_distinct_from(bindparam("b_before_at", type_=at_type)),
            ~in_ledger,
        )
        .values(
            next_lesson=bindparam("b_lesson"),
            next_send_at=case(
                (is_active, bindparam("b_at", type_=at_type)), else_=S.c.next_send_at
            ),
            held_reason=case((is_active, null()), else_=S.c.held_reason),
            status=case((completes, SubscriberStatus.COMPLETED.value), else_=S.c.status),
            status_changed_at=case(
                (completes, bindparam("b_now", type_=at_type)), else_=S.c.status_changed_at
            ),
        )
    )
    params = [
        {
            "b_id": change.id,
            "b_before_lesson": change.before_lesson,
            "b_before_at": change.before_send_at,
            "b_lesson": change.next_lesson,
            "b_at": change.next_send_at,
            "b_completed": change.completed,
            "b_now": now,
        }
        for change in changes
    ]
    return int(connection(session).execute(stmt, params).rowcount)


def ledger_slugs(session: Session, course_id: str) -> dict[str, int]:
    """Every lesson slug the ledger has as sent in `course_id`, with how many readers got it
    (an aggregate: one row per slug whatever the number of readers)."""
    stmt = (
        select(D.c.lesson, func.count())
        .where(D.c.course_id == course_id, D.c.status == DeliveryStatus.SENT.value)
        .group_by(D.c.lesson)
    )
    return {lesson: int(count) for lesson, count in connection(session).execute(stmt)}
