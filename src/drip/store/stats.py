"""Aggregates for `drip stats`: a handful of GROUP BY statements, whatever the size.

Each function runs one or two statements that the database aggregates (no rows are walked in
Python); `since` limits each figure to what happened at or after it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Date, and_, cast, distinct, func, select
from sqlalchemy.orm import Session

from drip.models import events
from drip.statuses import DeliveryStatus, SubscriberStatus
from drip.store._sql import D, S, connection

E = events


@dataclass(frozen=True)
class LessonCounts:
    """Per lesson slug: deliveries sent, and deliveries with at least one event of each type
    (`machine_open`: opens SendGrid flags as machine opens, e.g. Apple Mail Privacy Protection;
    `open` counts the others)."""

    sent: dict[str, int]
    events: dict[tuple[str, str], int]
    """(lesson, event type) -> distinct deliveries."""
    left_before: dict[str | None, dict[str, int]]
    """Readers who left, by the lesson they would have got next (None: none left) and status."""


def lesson_counts(session: Session, course_id: str, since: datetime | None) -> LessonCounts:
    conn = connection(session)
    sent_filter: list[Any] = [D.c.course_id == course_id, D.c.status == DeliveryStatus.SENT.value]
    if since is not None:
        sent_filter.append(D.c.sent_at >= since)
    sent = {
        lesson: int(count)
        for lesson, count in conn.execute(
            select(D.c.lesson, func.count()).where(*sent_filter).group_by(D.c.lesson)
        )
    }
    machine = E.c.payload["sg_machine_open"].as_boolean()
    event_filter: list[Any] = [D.c.course_id == course_id]
    if since is not None:
        event_filter.append(E.c.occurred_at >= since)
    joined = E.join(D, D.c.id == E.c.delivery_id)
    counted: dict[tuple[str, str], int] = {}
    by_type = (
        select(D.c.lesson, E.c.type, func.count(distinct(E.c.delivery_id)))
        .select_from(joined)
        .where(*event_filter, E.c.type != "open")
        .group_by(D.c.lesson, E.c.type)
    )
    for lesson, type_, count in conn.execute(by_type):
        counted[lesson, type_] = int(count)
    by_machine = func.coalesce(machine, False)  # one object: PostgreSQL must see one expression
    opens = (
        select(D.c.lesson, by_machine, func.count(distinct(E.c.delivery_id)))
        .select_from(joined)
        .where(*event_filter, E.c.type == "open")
        .group_by(D.c.lesson, by_machine)
    )
    for lesson, is_machine, count in conn.execute(opens):
        counted[lesson, "machine_open" if is_machine else "open"] = int(count)
    left: dict[str | None, dict[str, int]] = {}
    gone = [
        SubscriberStatus.UNSUBSCRIBED.value,
        SubscriberStatus.BOUNCED.value,
        SubscriberStatus.COMPLAINED.value,
    ]
    left_filter: list[Any] = [S.c.course_id == course_id, S.c.status.in_(gone)]
    if since is not None:
        left_filter.append(S.c.status_changed_at >= since)
    for lesson, status, count in conn.execute(
        select(S.c.next_lesson, S.c.status, func.count())
        .where(*left_filter)
        .group_by(S.c.next_lesson, S.c.status)
    ):
        left.setdefault(lesson, {})[status] = int(count)
    return LessonCounts(sent, counted, left)


@dataclass(frozen=True)
class Signups:
    per_day: list[tuple[str, int, int]]
    """(UTC date 'YYYY-MM-DD', signups, of which confirmed), oldest first."""
    total: int
    confirmed: int
    median_seconds_to_confirm: float | None
    """Over readers who signed up unconfirmed and confirmed later (double opt-in)."""


def signups(session: Session, course_id: str, since: datetime | None) -> Signups:
    conn = connection(session)
    where: list[Any] = [S.c.course_id == course_id]
    if since is not None:
        where.append(S.c.created_at >= since)
    day = cast(S.c.created_at, Date) if conn.dialect.name != "sqlite" else func.date(S.c.created_at)
    rows = conn.execute(
        select(day, func.count(), func.count(S.c.confirmed_at))
        .where(*where)
        .group_by(day)
        .order_by(day)
    ).all()
    per_day = [(str(d), int(n), int(c)) for d, n, c in rows]
    opted_in = and_(*where, S.c.confirmed_at > S.c.created_at)
    if conn.dialect.name == "sqlite":
        waited: Any = (func.julianday(S.c.confirmed_at) - func.julianday(S.c.created_at)) * 86400.0
    else:
        waited = func.extract("epoch", S.c.confirmed_at - S.c.created_at)
    count = conn.execute(select(func.count()).where(opted_in)).scalar_one()
    median = None
    if count:
        # The middle value by ORDER BY ... OFFSET: one row read, on both databases.
        middle = conn.execute(
            select(waited).where(opted_in).order_by(waited).offset((count - 1) // 2).limit(1)
        ).scalar_one()
        median = float(middle)
    return Signups(
        per_day=per_day,
        total=sum(n for _, n, _ in per_day),
        confirmed=sum(c for _, _, c in per_day),
        median_seconds_to_confirm=median,
    )
