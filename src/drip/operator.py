"""Operator decisions on the ledger: list in-doubt deliveries and settle them.

An in-doubt delivery may or may not have reached the reader (the answer was lost, or the run
died while the message was with the transport). drip never re-sends it by itself; the operator
looks (e.g. in SendGrid's activity feed, by `drip_delivery_id`) and settles it here.
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from drip import schedule, store
from drip.course import Course


def in_doubt(sessions: sessionmaker[Session], course: Course) -> list[store.InDoubtView]:
    """The course's in-doubt deliveries, oldest first."""
    with sessions() as session:
        return store.list_in_doubt(session, course.id)


def resolve(
    sessions: sessionmaker[Session], course: Course, delivery_id: int, *, sent: bool, now: datetime
) -> str:
    """Settle one in-doubt delivery and return what happens next, in words.

    sent=True: recorded as sent when it was claimed; the reader moves on to the next lesson on
    the usual schedule (or completes). sent=False: the same lesson is due again at once (the
    next `drip send` takes it, quiet hours permitting). Raises `NotFoundError` for an unknown
    id and `StateError` for a delivery that is not in doubt.
    """
    with sessions() as session, session.begin():
        found = [d for d in store.list_in_doubt(session, course.id) if d.delivery_id == delivery_id]
        if not found:
            # Let the store say whether it is unknown or simply not in doubt.
            store.resolve_in_doubt(
                session, delivery_id, sent=sent, now=now, next_lesson=None, next_send_at=None
            )
            raise AssertionError("resolve_in_doubt accepted a delivery that is not in doubt")
        doubt = found[0]
        if not sent:
            store.resolve_in_doubt(
                session, delivery_id, sent=False, now=now, next_lesson=None, next_send_at=now
            )
            return f"{doubt.email}: lesson {doubt.lesson!r} will be sent again by the next run"
        reader = store.get_subscriber_by_id(session, doubt.subscriber_id)
        following = course.next_lesson(doubt.lesson) if course.has_lesson(doubt.lesson) else None
        next_at = None
        if following is not None and reader is not None:
            next_at = schedule.next_send_at(
                course.settings,
                reader.timezone,
                following,
                previous_sent_at=doubt.claimed_at,
                confirmed_at=reader.confirmed_at or doubt.claimed_at,
            )
        store.resolve_in_doubt(
            session,
            delivery_id,
            sent=True,
            now=doubt.claimed_at,
            next_lesson=following.slug if following else None,
            next_send_at=next_at,
        )
    if following is None:
        return f"{doubt.email}: recorded as sent; that was the last lesson"
    return f"{doubt.email}: recorded as sent; next is {following.slug!r}"
