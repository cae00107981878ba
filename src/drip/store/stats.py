"""Aggregates for `drip stats`: a handful of GROUP BY statements, whatever the size.

Each function runs a few statements that the database aggregates (no rows are walked in
Python); `since` limits each figure to what happened at or after it (see each function). The
provider's events are not read: the webhook sets their outcome on each delivery as they
arrive (`deliveries.event_flags`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Date, and_, cast, func, literal_column, select
from sqlalchemy.orm import Session

from drip.models import DeliveryOutcome
from drip.statuses import SubscriberStatus
from drip.store._sql import D, S, connection


@dataclass(frozen=True)
class LessonOutcomes:
    """One lesson's sent deliveries, and how many of them the provider reported each outcome
    of (at least once: a delivery opened ten times is one opened delivery)."""

    sent: int = 0
    delivered: int = 0
    opened: int = 0
    """By a person: deliveries with an open that was not a machine open."""
    machine_opened: int = 0
    """Deliveries with a machine open (e.g. Apple Mail Privacy Protection); a delivery opened
    by both counts in both."""
    clicked: int = 0
    bounced: int = 0
    """A bounce or a drop."""
    complained: int = 0


@dataclass(frozen=True)
class LessonCounts:
    per_lesson: dict[str, LessonOutcomes]
    """Lesson slug -> its sent deliveries and their outcomes (lessons nobody got are absent)."""
    left_before: dict[str | None, dict[str, int]]
    """Readers who left, by the lesson they would have got next (None: none left) and status."""


_OUTCOME_FIELDS = (
    ("delivered", DeliveryOutcome.DELIVERED),
    ("opened", DeliveryOutcome.OPENED),
    ("machine_opened", DeliveryOutcome.MACHINE_OPENED),
    ("clicked", DeliveryOutcome.CLICKED),
    ("bounced", DeliveryOutcome.BOUNCED),
    ("complained", DeliveryOutcome.COMPLAINED),
)


def lesson_counts(session: Session, course_id: str, since: datetime | None) -> LessonCounts:
    """The funnel: per lesson, the deliveries sent (at or after `since`: a cohort) and what the
    provider reported of them, whenever it did; and the readers who left (at or after `since`).

    One GROUP BY over `ix_deliveries_outcomes` (sent rows only, the outcome bits in the index)
    and one over the subscribers who left; no provider event is read.
    """
    conn = connection(session)
    # A literal, not a parameter: SQLite uses a partial index only for a WHERE clause that
    # names its predicate's value.
    sent_filter: list[Any] = [D.c.course_id == course_id, D.c.status == literal_column("'sent'")]
    if since is not None:
        sent_filter.append(D.c.sent_at >= since)
    flags = D.c.event_flags
    columns = [
        func.sum(
            flags.op("&")(literal_column(str(bit.value))).op("/")(literal_column(str(bit.value)))
        )
        for _, bit in _OUTCOME_FIELDS
    ]
    per_lesson = {
        lesson: LessonOutcomes(
            int(sent),
            **{name: int(n or 0) for (name, _), n in zip(_OUTCOME_FIELDS, counted, strict=True)},
        )
        for lesson, sent, *counted in conn.execute(
            select(D.c.lesson, func.count(), *columns).where(*sent_filter).group_by(D.c.lesson)
        )
    }
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
    return LessonCounts(per_lesson, left)


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
