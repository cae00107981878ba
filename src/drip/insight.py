"""What the operator looks at: a subscriber's timeline (`drip plan EMAIL`).

Service functions for the CLI: each opens its own short read transaction and hands plain values
to the pure modules (`drip.plan`).
"""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.orm import Session, sessionmaker

from drip import plan, store
from drip.addresses import normalize_email
from drip.course import Course


def subscriber_timeline(
    sessions: sessionmaker[Session], course: Course, email: str, *, now: datetime
) -> tuple[store.SubscriberView, list[plan.Step]]:
    """The subscriber with address `email` and their timeline at `now`; `NotFoundError` if
    there is none in `course`."""
    with sessions() as session:
        view = store.get_subscriber(session, course.id, normalize_email(email))
        if view is None:
            raise store.NotFoundError(f"{email} is not subscribed to {course.id}")
        sent = store.lessons_sent(session, view.id)
    return view, plan.subscriber_plan(course, view, sent, now=now)
