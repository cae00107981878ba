"""What the operator's `drip subscribers show` reads besides the subscriber and the ledger: the
provider events about one reader, oldest first. Read-only; the events table is written by
`store.events` alone."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import or_, select
from sqlalchemy.orm import Session

from drip.models import events
from drip.store._sql import D, connection


@dataclass(frozen=True, slots=True)
class ReaderEvent:
    """One provider event about a reader: `lesson` None for mail that was not a lesson (the
    confirmation email)."""

    lesson: str | None
    type: str
    occurred_at: datetime


def reader_events(session: Session, subscriber_id: int) -> list[ReaderEvent]:
    """The provider events about `subscriber_id`: those of its deliveries, and those tagged with
    the subscriber (its confirmation emails); oldest first."""
    stmt = (
        select(D.c.lesson, events.c.type, events.c.occurred_at)
        .select_from(events.outerjoin(D, D.c.id == events.c.delivery_id))
        .where(or_(D.c.subscriber_id == subscriber_id, events.c.subscriber_id == subscriber_id))
        .order_by(events.c.occurred_at, events.c.id)
    )
    return [ReaderEvent(*row) for row in connection(session).execute(stmt)]
