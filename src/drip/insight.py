"""What the operator looks at: a subscriber's timeline (`drip plan EMAIL`) and the course's
funnel (`drip stats`).

Service functions for the CLI: each opens its own short read transaction and hands plain values
to the pure modules (`drip.plan`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from drip import plan, stats, store
from drip.addresses import normalize_email
from drip.course import Course
from drip.db import reading


def subscriber_timeline(
    sessions: sessionmaker[Session], course: Course, email: str, *, now: datetime
) -> tuple[store.SubscriberView, list[plan.Step]]:
    """The subscriber with address `email` and their timeline at `now`; `NotFoundError` if
    there is none in `course`."""
    with reading(sessions) as session:
        view = store.get_subscriber(session, course.id, normalize_email(email))
        if view is None:
            raise store.NotFoundError(f"{email} is not subscribed to {course.id}")
        sent = store.lessons_sent(session, view.id)
    return view, plan.subscriber_plan(course, view, sent, now=now)


def course_stats(
    sessions: sessionmaker[Session], course: Course, *, since: datetime | None
) -> stats.Report:
    """The funnel and the signups of `course`: with `since`, the lessons sent at or after it
    (and every outcome reported of them, whenever), the signups and the readers who left at or
    after it; everything when None. One read transaction (`db.reading`: on SQLite it does not
    hold the write lock the webhook and `drip send` need), a few aggregate statements."""
    with reading(sessions) as session:
        counts = store.lesson_counts(session, course.id, since)
        signups = store.signups(session, course.id, since)
    return stats.build_report(
        course, counts, signups, since=since.isoformat() if since is not None else None
    )
