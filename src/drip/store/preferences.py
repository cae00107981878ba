"""A reader's own settings: the end of a timed pause, a timezone and send time, and the progress
the manage page shows.

`resume_ended_pauses` is the step `drip send` runs before claiming: one look-up on the partial
index of timed pauses and one batched UPDATE, whatever the number of readers.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import bindparam, case, func, select, update
from sqlalchemy.orm import Session

from drip.errors import UnknownTimezoneError
from drip.statuses import DeliveryStatus, SubscriberStatus
from drip.store._sql import ACTIVE, D, S, chunks, connection
from drip.store.ledger import unknown_zone_reason
from drip.store.subscribers import _status_of, hold_kept, resume_values


@dataclass(frozen=True, slots=True)
class PausedReader:
    """A reader whose timed pause has ended: what the next lesson's moment depends on."""

    id: int
    timezone: str
    next_lesson: str | None
    paused_until: datetime
    last_sent_at: datetime | None
    confirmed_at: datetime | None
    send_time: str | None


@dataclass(frozen=True, slots=True)
class ReaderDelivery:
    """One ledger row of a reader, as the manage page and the export show it."""

    id: int
    lesson: str
    status: DeliveryStatus
    attempts: int
    claimed_at: datetime
    sent_at: datetime | None
    updated_at: datetime


PAUSE_BATCH = 1_000


def resume_ended_pauses(
    session: Session,
    course_id: str,
    now: datetime,
    resume_at: Callable[[PausedReader], datetime],
) -> int:
    """Resume the readers of `course_id` whose timed pause ended by `now`. Returns how many.

    Each one's next lesson is due at `resume_at(reader)` (the caller asks `drip.schedule`); a
    reader whose timezone cannot be loaded (`resume_at` raises `UnknownTimezoneError`) is resumed
    held with the reason; one held for a failed or in-doubt delivery stays held (as `resume`).
    """
    conn = connection(session)
    pick = (
        select(
            S.c.id,
            S.c.timezone,
            S.c.next_lesson,
            S.c.paused_until,
            S.c.last_sent_at,
            S.c.confirmed_at,
            S.c.send_time,
        )
        .where(
            S.c.course_id == course_id,
            S.c.paused_until.is_not(None),
            S.c.paused_until <= now,
            S.c.status == SubscriberStatus.PAUSED.value,
        )
        .order_by(S.c.paused_until, S.c.id)
        .limit(PAUSE_BATCH)
    )
    at = bindparam("b_at", type_=S.c.next_send_at.type)
    base = resume_values(at, bindparam("b_now", type_=S.c.status_changed_at.type))
    # A new reason (unknown zone) unless a failed or in-doubt hold keeps its own.
    new_reason = func.coalesce(bindparam("b_reason", type_=S.c.held_reason.type), S.c.held_reason)
    base["held_reason"] = case((hold_kept(), S.c.held_reason), else_=new_reason)
    stmt = (
        update(S)
        .where(S.c.id == bindparam("b_id"), S.c.status == SubscriberStatus.PAUSED.value)
        .values(**base)
    )
    # A reader who left while on a timed pause (unsubscribed, bounced, erased) keeps nothing to
    # resume: clear the end so the partial index holds only pauses still to end.
    conn.execute(
        update(S)
        .where(
            S.c.course_id == course_id,
            S.c.paused_until.is_not(None),
            S.c.paused_until <= now,
            S.c.status != SubscriberStatus.PAUSED.value,
        )
        .values(paused_until=None)
    )
    resumed = 0
    while True:
        rows = [PausedReader(*row) for row in conn.execute(pick, {})]
        if not rows:
            return resumed
        params: list[dict[str, Any]] = []
        for reader in rows:
            try:
                moment: datetime | None = resume_at(reader)
                reason = None
            except UnknownTimezoneError:
                moment, reason = None, unknown_zone_reason(reader.timezone)
            params.append({"b_id": reader.id, "b_at": moment, "b_now": now, "b_reason": reason})
        for chunk in chunks(params):
            conn.execute(stmt, list(chunk))
        resumed += len(rows)
        if len(rows) < PAUSE_BATCH:
            return resumed


def set_schedule(
    session: Session,
    subscriber_id: int,
    *,
    timezone: str,
    send_time: str | None,
    next_send_at: Callable[[Any], datetime | None],
) -> bool:
    """Store a reader's timezone and send time ("HH:MM", None: the course's), both validated by
    the caller. A reader waiting for a lesson the ledger has no row for yet (active, not held)
    gets its moment again from `next_send_at(subscriber row)`, computed with the new values; a
    lesson already in the ledger (claimed, retrying, failed, in doubt) keeps its own moment.
    Returns whether the next lesson was rescheduled. Raises `NotFoundError` for an unknown id.
    """
    conn = connection(session)
    row = conn.execute(select(S).where(S.c.id == subscriber_id)).one_or_none()
    if row is None:
        _status_of(conn, subscriber_id)  # raises NotFoundError
    assert row is not None
    values: dict[str, Any] = {"timezone": timezone, "send_time": send_time}
    in_ledger = (
        select(D.c.id).where(D.c.subscriber_id == S.c.id, D.c.lesson == S.c.next_lesson).exists()
    )
    waiting = row.status == ACTIVE and row.next_lesson is not None and row.next_send_at is not None
    moment = next_send_at(row) if waiting else None
    conn.execute(update(S).where(S.c.id == subscriber_id).values(**values))
    if moment is None:
        return False
    result = conn.execute(
        update(S)
        .where(
            S.c.id == subscriber_id,
            S.c.status == ACTIVE,
            S.c.next_lesson == row.next_lesson,
            S.c.next_send_at.is_not(None),
            ~in_ledger,
        )
        .values(next_send_at=moment)
    )
    return bool(result.rowcount)


def reader_deliveries(session: Session, subscriber_id: int) -> list[ReaderDelivery]:
    """The ledger rows of one reader, oldest claim first."""
    stmt = (
        select(
            D.c.id,
            D.c.lesson,
            D.c.status,
            D.c.attempts,
            D.c.claimed_at,
            D.c.sent_at,
            D.c.updated_at,
        )
        .where(D.c.subscriber_id == subscriber_id)
        .order_by(D.c.claimed_at, D.c.id)
    )
    return [
        ReaderDelivery(r.id, r.lesson, DeliveryStatus(r.status), *tuple(r)[3:])
        for r in connection(session).execute(stmt)
    ]
