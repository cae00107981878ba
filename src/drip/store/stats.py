"""Aggregates for `drip stats`: a handful of GROUP BY statements, whatever the size.

Each function runs a few statements that the database aggregates (no rows are walked in
Python); `since` limits each figure to what happened at or after it (see each function). The
provider's events are not read: the webhook sets their outcome on each delivery as they
arrive (`deliveries.event_flags`).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import bindparam, func, literal_column, select, text
from sqlalchemy.orm import Session

from drip.models import (
    CONFIRM_WAIT,
    LEFT_PREDICATE,
    OPTED_IN_PREDICATE,
    DeliveryOutcome,
    UTCDateTime,
)
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
_FIELDS = tuple(name for name, _ in _OUTCOME_FIELDS)


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
    # One row per (lesson, event_flags) in index order; the bits are summed here (at most 64
    # rows per lesson), which costs the database less than six sums per delivery.
    tallies: dict[str, dict[str, int]] = {}
    for lesson, flags, count in conn.execute(
        select(D.c.lesson, D.c.event_flags, func.count())
        .where(*sent_filter)
        .group_by(D.c.lesson, D.c.event_flags)
    ):
        tally = tallies.setdefault(lesson, dict.fromkeys(("sent", *_FIELDS), 0))
        tally["sent"] += count
        for name, bit in _OUTCOME_FIELDS:
            if flags & bit:
                tally[name] += count
    per_lesson = {lesson: LessonOutcomes(**tally) for lesson, tally in tallies.items()}
    left: dict[str | None, dict[str, int]] = {}
    # The partial index's predicate, word for word (SQLite needs it so to use the index).
    left_filter: list[Any] = [S.c.course_id == course_id, text(LEFT_PREDICATE)]
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


# Signups per day: grouping a million rows by their date sorts them (SQLite has no hash
# aggregate; PostgreSQL has no statistics on the date and sorts on disk). Counting each day's
# range of ix_subscribers_signups instead reads the index once, in order: a third of the time
# on both. SQLite's stored datetimes are 'YYYY-MM-DD HH:MM:SS.ffffff' text, so a day's rows are
# those from 'YYYY-MM-DD' (inclusive) to the next day (exclusive) in text order.
_SQLITE_PER_DAY = text(
    "WITH RECURSIVE days(day) AS ("
    " SELECT date(min(created_at)) FROM subscribers"
    " WHERE course_id = :course AND (:since IS NULL OR created_at >= :since)"
    " UNION ALL SELECT date(day, '+1 day') FROM days WHERE day < (SELECT date(max(created_at))"
    " FROM subscribers WHERE course_id = :course)),"
    " counted(day, signups, confirmed) AS (SELECT day,"
    " (SELECT count(*) FROM subscribers WHERE course_id = :course AND created_at >= day"
    " AND created_at < date(day, '+1 day') AND (:since IS NULL OR created_at >= :since)),"
    " (SELECT count(confirmed_at) FROM subscribers WHERE course_id = :course"
    " AND created_at >= day AND created_at < date(day, '+1 day')"
    " AND (:since IS NULL OR created_at >= :since)) FROM days WHERE day IS NOT NULL)"
    " SELECT day, signups, confirmed FROM counted WHERE signups > 0 ORDER BY day"
).bindparams(bindparam("since", type_=UTCDateTime()))


_POSTGRESQL_PER_DAY = text(
    "SELECT CAST(day AS DATE), n.signups, n.confirmed FROM generate_series("
    " (SELECT date_trunc('day', min(created_at)) FROM subscribers"
    "  WHERE course_id = :course AND (CAST(:since AS TIMESTAMP) IS NULL OR created_at >= :since)),"
    " (SELECT max(created_at) FROM subscribers WHERE course_id = :course),"
    " INTERVAL '1 day') AS day,"
    " LATERAL (SELECT count(*) AS signups, count(confirmed_at) AS confirmed FROM subscribers"
    "  WHERE course_id = :course AND created_at >= day AND created_at < day + INTERVAL '1 day'"
    "  AND (CAST(:since AS TIMESTAMP) IS NULL OR created_at >= :since)) AS n"
    " WHERE n.signups > 0 ORDER BY day"
).bindparams(bindparam("since", type_=UTCDateTime()))


def signups(session: Session, course_id: str, since: datetime | None) -> Signups:
    """Signups per UTC day (days without any left out), confirmed among them, and the median
    time to confirm of those who confirmed later; with `since`, of the readers who signed up
    at or after it."""
    conn = connection(session)
    where: list[Any] = [S.c.course_id == course_id]
    if since is not None:
        where.append(S.c.created_at >= since)
    per_day_sql = _SQLITE_PER_DAY if conn.dialect.name == "sqlite" else _POSTGRESQL_PER_DAY
    rows = conn.execute(per_day_sql, {"course": course_id, "since": since}).all()
    per_day = [(str(d), int(n), int(c)) for d, n, c in rows]
    # Word for word as ix_subscribers_confirm_wait has them (a literal predicate and the same
    # expression), so the count and the middle value are read from that index, in order.
    opted_in = [*where, text(OPTED_IN_PREDICATE)]
    waited: Any = literal_column(CONFIRM_WAIT[conn.dialect.name])
    count = conn.execute(select(func.count()).select_from(S).where(*opted_in)).scalar_one()
    median = None
    if count:
        # The middle value by ORDER BY ... OFFSET: index entries skipped, one row read.
        middle = conn.execute(
            select(waited)
            .select_from(S)
            .where(*opted_in)
            .order_by(waited)
            .offset((count - 1) // 2)
            .limit(1)
        ).scalar_one()
        # SQLite: days as a float; PostgreSQL: an interval.
        median = middle.total_seconds() if isinstance(middle, timedelta) else middle * 86400.0
    return Signups(
        per_day=per_day,
        total=sum(n for _, n, _ in per_day),
        confirmed=sum(c for _, _, c in per_day),
        median_seconds_to_confirm=median,
    )
